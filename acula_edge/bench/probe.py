"""The site-shortcut diagnostic: how well a linear probe tells the group (site, device) from a model's embedding.

A model that hears the heart and not the stethoscope should carry little device information in its embedding;
the lower the probe's balanced accuracy (towards chance = 1 / number of groups), the better. Because label rates
often differ by site, a probe could also find the site through the label; ``within_label`` repeats the probe inside
each class and averages, which removes that route.

The probe is a ridge classifier (one-vs-rest least squares on standardised embeddings, numpy only), scored by
stratified k-fold cross-validation over recordings; its ridge strength is chosen by an inner cross-validation on
each training part only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ALPHAS = (0.01, 0.1, 1.0, 10.0)  # ridge strengths tried, relative to the number of training recordings
FOLDS = 5


def stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per sample, each class spread evenly over the ``k`` folds (shuffled with ``rng``)."""
    fold = np.empty(y.shape[0], dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        fold[idx] = (np.arange(idx.shape[0]) + rng.integers(k)) % k
    return fold


def _fit_predict(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, n_classes: int, alpha: float) -> np.ndarray:
    mean, std = xtr.mean(axis=0), xtr.std(axis=0)
    std[std < 1e-8] = 1.0
    a, b = (xtr - mean) / std, (xte - mean) / std
    targets = -np.ones((ytr.shape[0], n_classes))
    targets[np.arange(ytr.shape[0]), ytr] = 1.0
    lam = alpha * a.shape[0]
    a1 = np.hstack([a, np.ones((a.shape[0], 1))])
    b1 = np.hstack([b, np.ones((b.shape[0], 1))])
    if a1.shape[0] < a1.shape[1]:  # dual form when there are fewer recordings than dimensions
        w = a1.T @ np.linalg.solve(a1 @ a1.T + lam * np.eye(a1.shape[0]), targets)
    else:
        w = np.linalg.solve(a1.T @ a1 + lam * np.eye(a1.shape[1]), a1.T @ targets)
    return np.argmax(b1 @ w, axis=1)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over the classes present in ``y`` of the fraction predicted correctly."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def _cv_score(x: np.ndarray, y: np.ndarray, n_classes: int, k: int, rng: np.random.Generator,
              alphas: Sequence[float]) -> float:
    """Cross-validated balanced accuracy; the ridge strength is chosen inside each training part."""
    fold = stratified_folds(y, k, rng)
    pred = np.empty_like(y)
    for f in range(k):
        te, tr = fold == f, fold != f
        if not te.any():
            continue
        alpha = alphas[len(alphas) // 2]  # too few recordings to choose: the middle strength
        counts = np.bincount(y[tr])
        if len(alphas) > 1 and (counts[counts > 0] >= 3).all() and (counts > 0).sum() > 1:
            inner = stratified_folds(y[tr], 3, rng)
            scores = []
            for a in alphas:
                p = np.empty(int(tr.sum()), dtype=np.int64)
                for g in range(3):
                    if (inner == g).any():
                        p[inner == g] = _fit_predict(x[tr][inner != g], y[tr][inner != g], x[tr][inner == g],
                                                     n_classes, a)
                scores.append(balanced_accuracy(y[tr], p))
            alpha = alphas[int(np.argmax(scores))]
        pred[te] = _fit_predict(x[tr], y[tr], x[te], n_classes, alpha)
    return balanced_accuracy(y, pred)


def site_probe(embeddings: np.ndarray, groups: Sequence[str], labels: Sequence[str | None] | None = None,
               k: int = FOLDS, seed: int = 0, alphas: Sequence[float] = ALPHAS) -> dict[str, Any] | None:
    """Balanced accuracy of predicting the group from the embedding (and within each label), with chance level.

    ``embeddings``: (R, D); rows with NaN (recordings a bundle did not score) are left out. Returns None when
    fewer than two groups remain. Deterministic for a given ``seed``.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    ok = ~np.isnan(x).any(axis=1) if x.ndim == 2 and x.shape[1] else np.zeros(len(groups), dtype=bool)
    groups = [str(g) for g in groups]
    names = sorted({g for g, o in zip(groups, ok) if o})
    if len(names) < 2:
        return None
    y = np.array([names.index(g) if o else -1 for g, o in zip(groups, ok)])
    rng = np.random.default_rng(seed)
    kk = max(2, min(k, int(np.bincount(y[ok]).min())))
    out: dict[str, Any] = {"balanced_accuracy": _cv_score(x[ok], y[ok], len(names), kk, rng, alphas),
                           "chance": 1.0 / len(names), "groups": names, "n": int(ok.sum()), "folds": kk,
                           "probe": "ridge classifier on standardised embeddings, stratified k-fold CV"}
    if labels is not None:
        lab = np.array([str(v) if v is not None else "" for v in labels])
        per = {}
        for c in sorted({str(v) for v in lab[ok]} - {""}):
            m = ok & (lab == c)
            present = np.unique(y[m])
            counts = np.bincount(y[m])[present]
            if present.shape[0] < 2 or counts.min() < 2:
                continue
            kc = max(2, min(k, int(counts.min())))
            remap = np.searchsorted(present, y[m])
            per[c] = {"balanced_accuracy": _cv_score(x[m], remap, present.shape[0], kc, rng, alphas),
                      "chance": 1.0 / present.shape[0], "n": int(m.sum())}
        out["within_label"] = per
        if per:
            out["within_label_mean"] = float(np.mean([v["balanced_accuracy"] for v in per.values()]))
            out["within_label_chance"] = float(np.mean([v["chance"] for v in per.values()]))
    return out
