"""From window scores to a recording: mean or exponential-moving-average aggregation, and a debounced
(hysteresis) decision for live displays.

The same :class:`RecordingAccumulator` serves offline ``classify`` and the streaming session, fed the same windows
in the same order, so both give the same recording result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from acula_edge.errors import ConfigError
from acula_edge.runtime.results import ClassificationResult, RecordingUpdate, WindowEvent

AGGREGATIONS = ("mean", "ema")


def decide_scores(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The binary decision rule, vectorised: positive where the positive-class probability is >= ``threshold``.

    The one definition every path applies (classify, stream, bench accuracy, and distill when it chooses the
    threshold: acula_edge.operating_point)."""
    return np.asarray(scores, dtype=np.float64) >= threshold


def decide(probabilities: np.ndarray | Sequence[float], threshold: float | None) -> bool:
    """The decision for one recording's probabilities (C,): binary tasks compare the last label's probability with
    ``threshold`` (:func:`decide_scores`); multi-class tasks (or ``threshold`` None) answer whether the last label
    is the most probable one (rule "argmax")."""
    # on Python floats: for the few classes of a head, several times faster than numpy's per-call cost
    p = probabilities.tolist() if isinstance(probabilities, np.ndarray) else probabilities
    if len(p) == 2 and threshold is not None:
        return p[-1] >= threshold  # decide_scores of one value
    return p.index(max(p)) == len(p) - 1  # np.argmax's answer: the first of equal maxima


@dataclass(frozen=True)
class DecisionConfig:
    """Hysteresis and debounce of the live decision (on the probability of the last label)."""

    margin: float = 0.05  # turn on at threshold + margin, off below threshold - margin
    debounce: int = 2  # consecutive updates beyond a bound needed to change the decision

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 0.5 or self.debounce < 1:
            raise ConfigError(f"DecisionConfig needs 0 <= margin < 0.5 and debounce >= 1, got margin={self.margin}, "
                              f"debounce={self.debounce}")


class Aggregator:
    """Running aggregate of probability vectors."""

    def __init__(self, name: str = "mean", ema_alpha: float = 0.3) -> None:
        if name not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {name!r}; choose one of {AGGREGATIONS}")
        if not 0.0 < ema_alpha <= 1.0:
            raise ConfigError(f"ema_alpha must be in (0, 1], got {ema_alpha}")
        self.name = name
        self.ema_alpha = ema_alpha
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._acc: list[float] | None = None  # Python floats (float64): a head has a few classes

    def update(self, p: np.ndarray | list[float]) -> None:
        values = p.tolist() if isinstance(p, np.ndarray) else [float(v) for v in p]
        self.add(values)

    def add(self, values: list[float]) -> None:
        """:meth:`update` with the probabilities already as Python floats (the accumulator's per-window path)."""
        if self._acc is None:
            self._acc = values
        elif self.name == "mean":
            self._acc = [a + v for a, v in zip(self._acc, values)]
        else:
            keep = 1.0 - self.ema_alpha
            self._acc = [self.ema_alpha * v + keep * a for a, v in zip(self._acc, values)]
        self.count += 1

    @property
    def value(self) -> np.ndarray | None:
        """The aggregate (float32), or None before the first update."""
        if self._acc is None:
            return None
        if self.name == "mean":
            n = self.count
            return np.array([a / n for a in self._acc], dtype=np.float32)
        return np.array(self._acc, dtype=np.float32)


class Hysteresis:
    """A binary decision that changes only after ``debounce`` consecutive values beyond threshold +/- margin.

    The first value decides directly (on the plain threshold), so a display shows a decision as soon as there is
    one; later flips need the value to cross the outer bound ``debounce`` times in a row.
    """

    def __init__(self, threshold: float, cfg: DecisionConfig) -> None:
        self.threshold = threshold
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.state: bool | None = None
        self._streak = 0

    def update(self, p: float) -> bool | None:
        if self.state is None:
            self.state = p >= self.threshold  # decide_scores of one value, without numpy's per-call cost
            return self.state
        beyond = p < self.threshold - self.cfg.margin if self.state else p >= self.threshold + self.cfg.margin
        self._streak = self._streak + 1 if beyond else 0
        if self._streak >= self.cfg.debounce:
            self.state = not self.state
            self._streak = 0
        return self.state


class RecordingAccumulator:
    """Consumes :class:`WindowEvent` s in order; gives running updates and the final recording result.

    Windows that fail the quality checks are counted and left out; if every window failed, probabilities and
    embedding fall back to all windows and the decision is None.
    """

    def __init__(self, labels: tuple[str, ...], threshold: float | None, aggregation: str = "mean",
                 ema_alpha: float = 0.3, decision: DecisionConfig | None = None, keep_windows: bool = True) -> None:
        self.labels = labels
        self.keep_windows = keep_windows  # False: only running sums are kept (memory independent of length)
        self.threshold = threshold
        self._included = Aggregator(aggregation, ema_alpha)
        self._all = Aggregator(aggregation, ema_alpha)
        self._hysteresis = Hysteresis(threshold, decision or DecisionConfig())
        self.reset()

    def reset(self) -> None:
        self._included.reset()
        self._all.reset()
        self._hysteresis.reset()
        self.windows: list[WindowEvent] = []
        self.n_windows = 0
        # embedding sums of the included and of the excluded windows (all = both: one addition per window)
        self._emb_included: np.ndarray | None = None
        self._emb_excluded: np.ndarray | None = None

    @property
    def aggregation(self) -> str:
        return self._included.name

    @property
    def n_excluded(self) -> int:
        return self.n_windows - self._included.count

    def _current(self) -> tuple[np.ndarray, bool | None]:
        if self._included.count:
            p = self._included.value
            return p, decide(p, self.threshold)
        return self._all.value, None

    def add(self, event: WindowEvent) -> RecordingUpdate:
        self.n_windows += 1
        if self.keep_windows:
            self.windows.append(event)
        values = event.probabilities.tolist()
        self._all.add(values)
        included = event.included
        if included:
            self._included.add(values)
            if self._emb_included is None:
                self._emb_included = event.embedding.astype(np.float64)
            else:  # in place: no allocation per window
                np.add(self._emb_included, event.embedding, out=self._emb_included)
        elif self._emb_excluded is None:
            self._emb_excluded = event.embedding.astype(np.float64)
        else:
            np.add(self._emb_excluded, event.embedding, out=self._emb_excluded)
        p, raw = self._current()
        if self.threshold is None:  # multi-class: the most probable label, no hysteresis on one probability
            stable = raw
        else:
            stable = self._hysteresis.update(float(p[-1])) if included else self._hysteresis.state
        return RecordingUpdate(time_s=event.end_s, labels=self.labels, probabilities=p, n_windows=self.n_windows,
                               n_excluded=self.n_excluded, decision=stable, raw_decision=raw)

    def result(self, duration_s: float, source: str = "<buffer>") -> ClassificationResult:
        if not self.n_windows:
            raise RuntimeError("no windows were accumulated")  # callers pad short input to one window
        p, decision = self._current()
        if self._included.count:
            emb = self._emb_included / self._included.count
        else:
            emb = self._emb_excluded / self.n_windows  # no window included: every window is an excluded one
        return ClassificationResult(labels=self.labels, probabilities=p, decision=decision,
                                    threshold=self.threshold, embedding=emb.astype(np.float32),
                                    windows=tuple(self.windows), n_windows=self.n_windows,
                                    n_excluded=self.n_excluded,
                                    duration_s=duration_s, aggregation=self.aggregation, source=source)
