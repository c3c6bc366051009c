"""Recording-level classification metrics and seeded bootstrap confidence intervals (numpy only).

Conventions: ``y`` is a boolean array (True = the positive class), ``scores`` a float array (higher = more
positive), ``predicted`` the boolean decision per recording (e.g. ``scores >= threshold``). Undefined figures (AUROC
of a single-class sample, sensitivity without positives) are ``nan``, never a made-up 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from acula_edge.errors import ConfigError

BOOTSTRAP_SAMPLES = 1000  # resamples per confidence interval
CONFIDENCE = 0.95  # two-sided percentile interval
METRICS = ("auroc", "auprc", "sensitivity", "specificity", "macc")


def _check(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y has {y.shape[0]} values but scores has {s.shape[0]}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    return y, s


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing the mean of their ranks (as in the Mann-Whitney U statistic)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.shape[0]]
    run_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty_like(xs)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative) + 0.5 P(tie); nan if a class
    is absent."""
    y, s = _check(y, scores)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _threshold_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) when predicting positive at or above each distinct score,
    scores descending."""
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[ss[1:] != ss[:-1], True]  # last index of each run of equal scores
    tp = np.cumsum(ys)[last]
    fp = np.cumsum(~ys)[last]
    return tp.astype(np.float64), fp.astype(np.float64), ss[last]


def roc_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), starting at (0, 0) with threshold +inf."""
    y, s = _check(y, scores)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both classes")
    tp, fp, thr = _threshold_counts(y, s)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, thr]


def auprc(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over distinct thresholds of (recall step) x precision; nan without positives.

    The step-wise sum (no interpolation) equals scikit-learn's ``average_precision_score``.
    """
    y, s = _check(y, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    tp, fp, _ = _threshold_counts(y, s)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def sensitivity(y: np.ndarray, predicted: np.ndarray) -> float:
    """True positive rate of the decisions; nan without positives."""
    y = np.asarray(y, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    n = int(y.sum())
    return float((p & y).sum() / n) if n else math.nan


def specificity(y: np.ndarray, predicted: np.ndarray) -> float:
    """True negative rate of the decisions; nan without negatives."""
    y = np.asarray(y, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    n = int((~y).sum())
    return float((~p & ~y).sum() / n) if n else math.nan


def point_metrics(y: np.ndarray, scores: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC, sensitivity, specificity and MAcc (mean of Se and Sp) of one sample."""
    se, sp = sensitivity(y, predicted), specificity(y, predicted)
    return {"auroc": auroc(y, scores), "auprc": auprc(y, scores), "sensitivity": se, "specificity": sp,
            "macc": (se + sp) / 2.0}


@dataclass(frozen=True)
class Estimate:
    """A figure with its bootstrap interval; ``nan`` where undefined (shown as null in JSON)."""

    value: float
    lo: float
    hi: float
    n_boot: int  # resamples in which the figure was defined

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(float(v), 6)

        return {"value": num(self.value), "ci95": [num(self.lo), num(self.hi)], "n_boot": self.n_boot}


def bootstrap(y: np.ndarray, scores: np.ndarray, predicted: np.ndarray,
              fn: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, float]] = point_metrics,
              n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0, confidence: float = CONFIDENCE,
              strata: np.ndarray | None = None) -> dict[str, Estimate]:
    """Point estimates of ``fn`` and percentile intervals from ``n_boot`` resamples of the recordings.

    Recordings are drawn with replacement (within each stratum when ``strata`` is given, e.g. the group of each
    recording); the same resamples serve every figure, so intervals of one call are comparable. Deterministic for a
    given ``seed``. A resample in which a figure is undefined (e.g. no positives) is left out of that figure's
    interval; ``n_boot`` of the Estimate says how many counted.
    """
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    y, s = _check(y, scores)
    pred = np.asarray(predicted, dtype=bool).reshape(-1)
    point = fn(y, s, pred)
    rng = np.random.default_rng(seed)
    n = y.shape[0]
    if strata is None:
        groups = [np.arange(n)]
    else:
        st = np.asarray(strata).reshape(-1)
        groups = [np.flatnonzero(st == g) for g in np.unique(st)]
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, g.shape[0], g.shape[0])] for g in groups])
        for k, v in fn(y[idx], s[idx], pred[idx]).items():
            draws[k].append(v)
    tail = (1.0 - confidence) / 2.0 * 100.0
    out = {}
    for k, v in point.items():
        d = np.asarray(draws[k], dtype=np.float64)
        d = d[~np.isnan(d)]
        if math.isnan(v) or d.shape[0] == 0:
            out[k] = Estimate(v, math.nan, math.nan, int(d.shape[0]))
        else:
            lo, hi = np.percentile(d, [tail, 100.0 - tail])
            out[k] = Estimate(float(v), float(lo), float(hi), int(d.shape[0]))
    return out
