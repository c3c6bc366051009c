"""Linear probes on frozen teacher embeddings (the OPERA protocol), for teachers without a task head.

:func:`fit_probe` fits a class-balanced, L2-regularised multinomial logistic regression (torch L-BFGS) on
standardised embeddings. The regularisation strength is chosen by group k-fold cross-validation on the training
data only (groups = recordings, so windows of one recording never sit on both sides), scoring the class-balanced
log-loss of the held-out folds. The result folds the standardisation into one linear layer, so the teacher's logits
are ``embedding @ weight.T + bias``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from acula_edge.errors import ConfigError


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the linear probe."""

    cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths tried (sklearn's C convention)
    folds: int = 3  # group k-fold cross-validation folds used to pick C
    max_iter: int = 100  # L-BFGS iterations per fit
    seed: int = 0  # fold assignment


@dataclass
class LinearProbe:
    """logits = embedding @ weight.T + bias."""

    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,) float32
    c: float  # chosen inverse L2 strength
    cv_loss: dict[float, float] = field(default_factory=dict)  # held-out balanced log-loss per C tried

    def logits(self, embedding: np.ndarray) -> np.ndarray:
        return (np.asarray(embedding, np.float32) @ self.weight.T + self.bias).astype(np.float32)


def class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights (mean 1 over the samples) for labels 0..num_classes-1; absent classes get 0."""
    counts = np.bincount(y[y >= 0], minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    return w.astype(np.float32)


def _fit(x: torch.Tensor, y: torch.Tensor, sw: torch.Tensor, num_classes: int, c: float,
         max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    total = sw.sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = torch.nn.functional.cross_entropy(x @ w.T + b, y, reduction="none")
        loss = (sw * ce).sum() / total + (w * w).sum() / (2.0 * c * total)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _balanced_logloss(logits: torch.Tensor, y: torch.Tensor, sw: torch.Tensor) -> float:
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return float((sw * ce).sum() / sw.sum())


def fit_probe(embedding: np.ndarray, y: np.ndarray, groups: np.ndarray, num_classes: int,
              config: ProbeConfig = ProbeConfig()) -> LinearProbe:
    """Fit the probe on labelled rows (y >= 0). ``groups`` (one value per row, e.g. the recording) keeps related
    rows in one cross-validation fold."""
    keep = y >= 0
    if len(np.unique(y[keep])) < 2:
        raise ConfigError(f"a linear probe needs at least two classes among the labelled training windows; found "
                          f"{np.unique(y[keep]).tolist()}")
    emb = np.asarray(embedding, np.float64)[keep]
    yk, gk = y[keep], np.asarray(groups)[keep]
    mean, std = emb.mean(0), emb.std(0) + 1e-6
    x = torch.from_numpy((emb - mean) / std)
    yt = torch.from_numpy(yk.astype(np.int64))
    cw = torch.from_numpy(class_weights(yk, num_classes).astype(np.float64))
    sw = cw[yt]
    uniq = np.unique(gk)
    rng = np.random.default_rng(config.seed)
    fold_of_group = dict(zip(uniq.tolist(), rng.permutation(len(uniq)) % max(2, config.folds)))
    fold = np.array([fold_of_group[g] for g in gk.tolist()])
    cv: dict[float, float] = {}
    for c in config.cs:
        losses = []
        for k in range(max(2, config.folds)):
            tr, te = torch.from_numpy(fold != k), torch.from_numpy(fold == k)
            if te.sum() == 0 or len(torch.unique(yt[tr])) < 2:
                continue
            w, b = _fit(x[tr], yt[tr], sw[tr], num_classes, c, config.max_iter)
            losses.append(_balanced_logloss(x[te] @ w.T + b, yt[te], sw[te]))
        cv[float(c)] = float(np.mean(losses)) if losses else float("inf")
    best = min(cv, key=lambda k: (cv[k], k))
    w, b = _fit(x, yt, sw, num_classes, best, config.max_iter)
    # fold the standardisation into the layer: ((e - mean) / std) @ w.T + b
    wn = w.numpy() / std[None, :]
    bn = b.numpy() - wn @ mean
    return LinearProbe(wn.astype(np.float32), bn.astype(np.float32), best, cv)
