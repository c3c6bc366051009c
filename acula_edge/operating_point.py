"""The operating point: the rule that turns a recording's probabilities into the device's answer, and how it was
chosen (numpy only; the device reads it from the manifest).

Binary tasks (the last label is the positive class): "positive" when the recording-level probability of the last
label is at or above ``threshold`` (:func:`acula_edge.runtime.aggregation.decide`). ``distill`` chooses the threshold
on its validation split, scoring each validation recording the way ``classify``/``stream``/``bench`` do (mean of
the usable windows' probabilities), with one of :data:`METHODS`:

- ``youden`` (default): maximise Se + Sp - 1;
- ``sensitivity=X``: the highest specificity among thresholds with sensitivity >= X;
- ``specificity=X``: the highest sensitivity among thresholds with specificity >= X.

A plain number (``0.35``) fixes the threshold. Candidate thresholds lie halfway between consecutive distinct
validation scores, so a point is never on a validation recording's score. Multi-class tasks use the most probable
label (rule ``argmax``, no threshold). Se and Sp on the validation recordings carry 95 % Wilson intervals.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from acula_edge.errors import ConfigError

METHODS = ("youden", "sensitivity", "specificity")
# key in a student checkpoint's ``extra``: the validation recordings' {"positive": [0/1...], "score": [...]}, so
# ``export --operating-point METHOD`` can choose again without the data
VALIDATION_KEY = "operating_point_validation"
DEFAULT_METHOD = "youden"
DEFAULT_THRESHOLD = 0.5  # used only when no validation data could choose one (recorded as method "default")
WILSON_Z = 1.959964  # two-sided 95 %


def wilson(k: int, n: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n (None when n == 0)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6))


@dataclass(frozen=True)
class OperatingPoint:
    """The decision rule of a model and its provenance (stored in checkpoints and bundle manifests)."""

    threshold: float | None  # positive when P(last label) >= threshold; None: multi-class, most probable label
    method: str  # "youden", "sensitivity=X", "specificity=X", "fixed" (a given number), "default", "argmax"
    chosen_on: str = ""  # the data it was chosen on (e.g. "validation split: groups of 'subset': ['c']")
    n_recordings: int = 0  # validation recordings scored (0: not chosen on data)
    n_positive: int = 0  # of which positive (last label)
    sensitivity: float | None = None  # on those recordings, at this threshold
    sensitivity_ci95: tuple[float, float] | None = None  # Wilson interval
    specificity: float | None = None
    specificity_ci95: tuple[float, float] | None = None
    override: str = ""  # "" = as chosen; else who replaced the chosen point (e.g. "export --operating-point 0.3")
    replaced: dict[str, Any] = field(default_factory=dict)  # the point it replaced (to_dict), when overridden

    @property
    def rule(self) -> str:
        """One line for reports: the rule and how it was chosen."""
        if self.threshold is None:
            return "most probable label (argmax)"
        how = self.method
        if self.n_recordings:
            how += (f" on {self.n_recordings} validation recordings ({self.n_positive} positive): "
                    f"Se {_fmt(self.sensitivity, self.sensitivity_ci95)}, "
                    f"Sp {_fmt(self.specificity, self.specificity_ci95)}")
        if self.override:
            how += f"; overridden by {self.override}"
        return f"P(positive) >= {self.threshold:.4g} ({how})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("sensitivity_ci95", "specificity_ci95"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Any, what: str = "operating_point") -> "OperatingPoint":
        """Parse untrusted JSON strictly (it comes from manifests and checkpoint configs): known keys, exact types,
        probabilities in range; :class:`~acula_edge.typed.SchemaError` naming the field otherwise."""
        from acula_edge import typed

        d = typed.mapping(d, what)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown or "method" not in d:
            raise typed.SchemaError(f"{what} has unknown keys {unknown} or no 'method'")

        def prob(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else typed.number(v, f"{what}.{key}", 0.0, 1.0)

        def interval(key: str) -> tuple[float, float] | None:
            v = d.get(key)
            if v is None:
                return None
            lo, hi = (typed.number(x, f"{what}.{key}", 0.0, 1.0) for x in typed.array(v, f"{what}.{key}", 2, 2))
            return lo, hi

        t = d.get("threshold")
        n = typed.integer(d.get("n_recordings", 0), f"{what}.n_recordings", 0)
        return cls(threshold=None if t is None else typed.number(t, f"{what}.threshold", 0.0, 1.0, open_lo=True,
                                                                  open_hi=True),
                   method=typed.string(d["method"], f"{what}.method", 64, non_empty=True),
                   chosen_on=typed.string(d.get("chosen_on", ""), f"{what}.chosen_on", 1000),
                   n_recordings=n, n_positive=typed.integer(d.get("n_positive", 0), f"{what}.n_positive", 0, n),
                   sensitivity=prob("sensitivity"), sensitivity_ci95=interval("sensitivity_ci95"),
                   specificity=prob("specificity"), specificity_ci95=interval("specificity_ci95"),
                   override=typed.string(d.get("override", ""), f"{what}.override", 1000),
                   replaced=dict(typed.mapping(d.get("replaced", {}), f"{what}.replaced")))

    @classmethod
    def from_json(cls, v: Any) -> "OperatingPoint | None":
        """:meth:`from_dict`, or None when the document records no operating point."""
        return None if v is None else cls.from_dict(v)


def _fmt(v: float | None, ci: tuple[float, float] | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def parse_method(spec: str) -> tuple[str, float | None]:
    """``"youden"`` -> ("youden", None); ``"sensitivity=0.9"`` -> ("sensitivity", 0.9); ``"0.35"`` -> ("fixed",
    0.35). ConfigError for anything else."""
    text = str(spec).strip()
    name, sep, value = text.partition("=")
    try:
        number = float(value if sep else text)
    except ValueError:
        number = None
    if not sep and number is not None:
        if not 0.0 < number < 1.0:  # 0 or 1 would make the decision constant
            raise ConfigError(f"operating point {spec!r}: a fixed threshold is a probability strictly between 0 "
                              f"and 1")
        return "fixed", number
    name = name.strip()
    if name not in METHODS or (name == "youden") == bool(sep) or (sep and number is None):
        raise ConfigError(f"operating point {spec!r} not understood; give 'youden', 'sensitivity=X', "
                          f"'specificity=X' (X in (0, 1]) or a threshold such as 0.4")
    if number is not None and not 0.0 < number <= 1.0:
        raise ConfigError(f"operating point {spec!r}: the target {name} must be in (0, 1]")
    return name, number


def _rates(y: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[int, int]:
    """(true positives, true negatives) when deciding positive at ``scores >= threshold``."""
    from acula_edge.runtime.aggregation import decide_scores

    pred = decide_scores(scores, threshold)
    return int((pred & y).sum()), int((~pred & ~y).sum())


def at_threshold(y: np.ndarray, scores: np.ndarray, threshold: float, method: str,
                 chosen_on: str = "") -> OperatingPoint:
    """The operating point ``threshold`` with its Se/Sp (Wilson intervals) on recordings ``y`` / ``scores``."""
    y = np.asarray(y, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tp, tn = _rates(y, s, threshold)
    return OperatingPoint(threshold=float(threshold), method=method, chosen_on=chosen_on, n_recordings=int(y.size),
                          n_positive=n_pos, sensitivity=round(tp / n_pos, 6) if n_pos else None,
                          sensitivity_ci95=wilson(tp, n_pos), specificity=round(tn / n_neg, 6) if n_neg else None,
                          specificity_ci95=wilson(tn, n_neg))


def candidates(scores: np.ndarray) -> np.ndarray:
    """Thresholds worth trying, ascending: below every score, halfway between distinct scores, above every score;
    all strictly between 0 and 1 (a manifest threshold must be), so a score of exactly 0 or 1 stays on its side."""
    u = np.unique(np.asarray(scores, dtype=np.float64))
    inside = np.r_[u[0] / 2.0, (u[:-1] + u[1:]) / 2.0, (u[-1] + 1.0) / 2.0]
    return np.unique(np.clip(inside, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0)))


def choose(y: np.ndarray, scores: np.ndarray, method: str = DEFAULT_METHOD, chosen_on: str = "") -> OperatingPoint:
    """Choose the threshold on recordings ``y`` (bool, True = positive) with recording ``scores`` (P(positive)).

    ``method``: see :func:`parse_method`. Needs both classes for a data-driven method (ConfigError otherwise).
    """
    name, target = parse_method(method)
    y = np.asarray(y, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape or not np.isfinite(s).all():
        raise ValueError(f"y ({y.shape}) and scores ({s.shape}) must match and scores be finite")
    if name == "fixed":
        return at_threshold(y, s, float(target), "fixed", chosen_on) if y.size else fixed(float(target))
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ConfigError(f"cannot choose an operating point ({method}) on {y.size} recordings with "
                          f"{n_pos} positive and {n_neg} negative: both classes are needed")
    thr = candidates(s)
    # decide(s >= t) for every candidate t at once: sorted scores give the counts above each threshold
    s_pos, s_neg = np.sort(s[y]), np.sort(s[~y])
    se = (n_pos - np.searchsorted(s_pos, thr, side="left")) / n_pos
    sp = np.searchsorted(s_neg, thr, side="left") / n_neg
    if name == "youden":
        value = se + sp
    elif name == "sensitivity":
        value = np.where(se >= target - 1e-12, sp, -np.inf)
    else:
        value = np.where(sp >= target - 1e-12, se, -np.inf)
    best = np.flatnonzero(value == value.max())
    if name == "youden":
        # ties: the most balanced Se/Sp, then the middle of what remains (away from any one recording's score)
        gap = np.abs(se[best] - sp[best])
        best = best[gap == gap.min()]
    pick = int(best[len(best) // 2])
    label = name if target is None else f"{name}={target:g}"
    return at_threshold(y, s, float(thr[pick]), label, chosen_on)


def fixed(threshold: float = DEFAULT_THRESHOLD, method: str = "default", chosen_on: str = "") -> OperatingPoint:
    """A threshold not chosen on data (no figures)."""
    return OperatingPoint(threshold=float(threshold), method=method, chosen_on=chosen_on)


def argmax_rule(chosen_on: str = "") -> OperatingPoint:
    """The multi-class rule: the most probable label."""
    return OperatingPoint(threshold=None, method="argmax", chosen_on=chosen_on)


def overridden(point: OperatingPoint | None, spec: str, by: str, y: np.ndarray | None = None,
               scores: np.ndarray | None = None) -> OperatingPoint:
    """``point`` replaced per ``spec`` (a method or a number) by ``by`` (e.g. "export --operating-point").

    A method needs the validation recordings (``y``, ``scores``) it is chosen on; a number does not (its Se/Sp are
    recomputed on them when given)."""
    name, value = parse_method(spec)
    if point is not None and point.threshold is None:
        raise ConfigError(f"operating point {spec!r}: this is a multi-class model decided by the most probable label; "
                          f"a threshold applies to binary models only")
    has_data = y is not None and scores is not None and len(y) > 0
    if name == "fixed":
        new = at_threshold(y, scores, float(value), "fixed", point.chosen_on if point else "") if has_data \
            else fixed(float(value), "fixed")
    else:
        if not has_data:
            raise ConfigError(f"operating point {spec!r} is chosen on validation recordings, and this model carries "
                              f"none (it was trained without a validation split or before they were stored); give a "
                              f"threshold such as 0.4 instead")
        new = choose(y, scores, spec, point.chosen_on if point else "")
    replaced = point.to_dict() if point is not None else {}
    replaced.pop("replaced", None)
    return OperatingPoint(**{**asdict(new), "override": f"{by} {spec}".strip(), "replaced": replaced})


def checkpoint_with(info: Any, spec: str, by: str) -> Any:
    """A copy of checkpoint ``info`` (:class:`~acula_edge.checkpoint.CheckpointInfo`) whose operating point (and
    threshold) is replaced per ``spec``, chosen again on its stored validation recordings when ``spec`` is a
    method; the copy records the override (``by``) and the point it replaced."""
    pairs = info.extra.get(VALIDATION_KEY) or {}
    y = np.asarray(pairs.get("positive", []), dtype=bool)
    scores = np.asarray(pairs.get("score", []), dtype=np.float64)
    point = overridden(info.operating_point, spec, by, y, scores)
    return dataclasses.replace(info, threshold=point.threshold, operating_point=point)
