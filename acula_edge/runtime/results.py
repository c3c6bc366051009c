"""Typed results of the device runtime: per-window events, running recording updates, recording summaries and
zero-shot scores. All times in seconds from the start of the recording; probabilities follow ``labels`` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _floats(a: np.ndarray, ndigits: int = 6) -> list[float]:
    return [round(float(v), ndigits) for v in np.asarray(a).reshape(-1)]


def _probs(labels: tuple[str, ...], p: np.ndarray) -> str:
    """Short text of labelled probabilities for ``repr`` (3 decimals)."""
    return "{" + ", ".join(f"{lb!r}: {float(v):.3f}" for lb, v in zip(labels, np.asarray(p).reshape(-1))) + "}"


@dataclass(frozen=True)
class WindowQuality:
    """Signal quality of one window (see :mod:`acula_edge.runtime.quality`); ``flags`` empty = usable."""

    rms_dbfs: float  # RMS level, dB relative to full scale (1.0)
    clip_fraction: float  # fraction of samples at or above the clipping level
    dc_offset: float  # mean sample value (full scale = 1.0)
    flatness: float  # spectral flatness in the front-end band, 0 (tonal) .. 1 (white noise)
    flags: tuple[str, ...] = ()  # subset of quality.FLAGS

    @property
    def ok(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        return {"rms_dbfs": round(self.rms_dbfs, 2), "clip_fraction": round(self.clip_fraction, 6),
                "dc_offset": round(self.dc_offset, 6), "flatness": round(self.flatness, 4),
                "flags": list(self.flags)}


@dataclass(frozen=True)
class WindowEvent:
    """The model's output for one window ``[start_s, end_s)``; excluded from the recording decision unless
    ``quality.ok``."""

    index: int  # window number, 0-based; window k starts at k * windowing.hop_s
    start_s: float
    end_s: float
    labels: tuple[str, ...]
    probabilities: np.ndarray  # (C,) float32, softmax of the logits
    embedding: np.ndarray  # (D,) float32
    quality: WindowQuality

    @property
    def included(self) -> bool:
        """Whether the window counts towards the recording-level result (its quality is acceptable)."""
        return self.quality.ok

    def __repr__(self) -> str:  # short: no embedding values
        return (f"WindowEvent(index={self.index}, {self.start_s:g}-{self.end_s:g} s, "
                f"probabilities={_probs(self.labels, self.probabilities)}, included={self.included}, "
                f"flags={list(self.quality.flags)})")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "window", "index": self.index, "start_s": round(self.start_s, 6),
                "end_s": round(self.end_s, 6), "probabilities": dict(zip(self.labels, _floats(self.probabilities))),
                "included": self.included, "quality": self.quality.to_dict()}


@dataclass(frozen=True)
class RecordingUpdate:
    """The running recording-level result after a window: aggregate of the usable windows so far and a
    debounced decision (hysteresis) that does not flicker; emitted after every :class:`WindowEvent`."""

    time_s: float  # end of the latest window
    labels: tuple[str, ...]
    probabilities: np.ndarray  # (C,) running aggregate over included windows (all windows if none included)
    n_windows: int
    n_excluded: int
    decision: bool | None  # debounced: is the last label present? None until a usable window was seen
    raw_decision: bool | None  # aggregate probability of the last label >= threshold, without hysteresis

    def __repr__(self) -> str:
        return (f"RecordingUpdate(time_s={self.time_s:g}, probabilities={_probs(self.labels, self.probabilities)}, "
                f"decision={self.decision}, raw_decision={self.raw_decision}, windows={self.n_windows} "
                f"({self.n_excluded} excluded))")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "update", "time_s": round(self.time_s, 6),
                "probabilities": dict(zip(self.labels, _floats(self.probabilities))), "n_windows": self.n_windows,
                "n_excluded": self.n_excluded, "decision": self.decision, "raw_decision": self.raw_decision}


@dataclass(frozen=True)
class ClassificationResult:
    """Recording-level result: aggregated probabilities, the decision, the recording embedding and every window.

    ``decision`` is whether the probability of the last label (the positive class of a binary task) reaches
    ``threshold``, the bundle's operating point (multi-class: whether the last label is the most probable); None
    when no window passed the quality checks (then ``probabilities`` and ``embedding`` fall back to all windows and
    should not be trusted).
    """

    labels: tuple[str, ...]
    probabilities: np.ndarray  # (C,) aggregate over included windows
    decision: bool | None
    threshold: float | None  # the operating point's threshold (None: multi-class, most probable label)
    embedding: np.ndarray  # (D,) mean of the included windows' embeddings
    windows: tuple[WindowEvent, ...]  # every window, in order (empty when the session kept none: keep_windows=False)
    n_windows: int  # windows scored
    n_excluded: int  # windows left out of the aggregate for poor signal quality
    duration_s: float  # length of the input audio
    aggregation: str  # "mean" or "ema"
    source: str = "<buffer>"
    site_shift: dict[str, Any] | None = None  # score / threshold / flagged when the bundle describes its training audio

    @property
    def label(self) -> str | None:
        """The answer: for a binary task the label the decision picks at the operating point (the last label when
        its probability reaches ``threshold``, even if below 0.5), else the most probable label; None when no window
        was usable."""
        if self.decision is None:
            return None
        if len(self.labels) == 2 and self.threshold is not None:
            return self.labels[-1] if self.decision else self.labels[0]
        return self.labels[int(np.argmax(self.probabilities))]

    def __repr__(self) -> str:  # short: the summary, not every window's embedding (see to_dict for all)
        thr = "argmax" if self.threshold is None else f"{self.threshold:.4g}"
        return (f"ClassificationResult(source={self.source!r}, duration_s={self.duration_s:.3f}, label={self.label!r}, "
                f"decision={self.decision} ({self.labels[-1]!r} at threshold {thr}), "
                f"probabilities={_probs(self.labels, self.probabilities)}, windows={self.n_windows} "
                f"({self.n_excluded} excluded), aggregation={self.aggregation!r}, "
                f"embedding=<{self.embedding.shape[0]} floats>)")

    def probability(self, label: str) -> float:
        return float(self.probabilities[self.labels.index(label)])

    def to_dict(self, windows: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": "recording", "source": self.source, "duration_s": round(self.duration_s, 6),
            "probabilities": dict(zip(self.labels, _floats(self.probabilities))), "label": self.label,
            "decision": self.decision, "threshold": self.threshold, "positive_label": self.labels[-1],
            "n_windows": self.n_windows, "n_excluded": self.n_excluded, "aggregation": self.aggregation}
        if self.site_shift is not None:
            d["site_shift"] = self.site_shift
        if windows:
            d["windows"] = [w.to_dict() for w in self.windows]
        return d


@dataclass(frozen=True)
class ZeroShotResult:
    """Cosine similarity between the recording embedding and each text prompt's embedding (from the bundle)."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]  # the class each prompt stands for ("" if none)
    scores: np.ndarray  # (P,) cosine similarities in [-1, 1]
    embedding: np.ndarray  # (D,) the recording embedding

    @property
    def best(self) -> str:
        """The prompt text with the highest score."""
        return self.texts[int(np.argmax(self.scores))]

    def __repr__(self) -> str:
        scores = ", ".join(f"{t!r}: {float(v):.3f}" for t, v in zip(self.texts, self.scores))
        return f"ZeroShotResult(best={self.best!r}, scores={{{scores}}}, embedding=<{self.embedding.shape[0]} floats>)"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "zero_shot", "scores": dict(zip(self.texts, _floats(self.scores))), "best": self.best}
