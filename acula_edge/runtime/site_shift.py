"""Site shift on the device: is this audio like the audio the model was trained on? (numpy only)

A bundle may carry a :class:`SiteDescription` of its training audio (manifest ``extra["site_description"]``, a few
KB): the mean and spread over the training recordings of each recording's per-mel-band log-mel level and
variability. A recording's *shift score* is the root-mean-square z-score of its own per-band features against that
description; it is flagged when the score exceeds the description's threshold. A batch of recordings from one site
is flagged when most of its recordings are.

The same statistics give the front-end correction of site adaptation (:class:`FrontendCorrection`): a per-band
affine map of log-mel frames that moves a site's per-band mean and spread onto the training audio's. It changes no
model weight, so it applies to any bundle; it acts before the window normalisation (a per-band offset alone is
removed again by the ``per_window_band`` normalisation, a per-band scale is not).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from acula_edge.errors import BundleError
from acula_edge.features import LogMel
from acula_edge.frontend import FrontendConfig

DESCRIPTION_KEY = "site_description"  # manifest / checkpoint ``extra`` key of the training-audio description
CORRECTION_KEY = "frontend_correction"  # manifest ``extra`` key of an adapted bundle's front-end correction
MIN_STD = 1e-3  # floor of every spread (log-mel units): a constant feature must not give infinite z-scores
# Threshold of the shift score: this quantile of the training recordings' own scores, times THRESHOLD_MARGIN.
# Chosen on the leave-one-subset-out folds of benchmarks/adapt_cross_site.py (RESULTS_cross_site.md, "site-shift
# warning").
THRESHOLD_QUANTILE = 0.99
THRESHOLD_MARGIN = 1.0
BATCH_FRACTION = 0.5  # a batch (one site) is flagged when more than this share of its recordings is flagged


_ROWS_PER_BLOCK = 4096  # frames per block when recording_features sums squared deviations


def recording_features(frames: np.ndarray) -> np.ndarray:
    """Per-band mean and standard deviation over time of one recording's log-mel frames (n, n_mels) -> (2 n_mels,)
    float64 (log-mel units): the device's level and colouring per band, and how much each band moves."""
    f = np.asarray(frames)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"expected log-mel frames of shape (n >= 1, n_mels), got {f.shape}")
    # Two passes over row blocks, accumulated in float64: no float64 copy of a long recording's frames (a 10-min
    # recording's frames are ~4 MB in float32; whole-array float64 temporaries tripled that).
    mean = f.mean(axis=0, dtype=np.float64)
    squares = np.zeros(f.shape[1], dtype=np.float64)
    for start in range(0, f.shape[0], _ROWS_PER_BLOCK):
        d = f[start:start + _ROWS_PER_BLOCK].astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", d, d)
    return np.concatenate([mean, np.sqrt(squares / f.shape[0])])


def features_of(samples: Iterable[np.ndarray], frontend: FrontendConfig) -> np.ndarray:
    """(R, 2 n_mels) features of recordings given as float samples at ``frontend.sample_rate``."""
    logmel = LogMel(frontend)
    rows = []
    for x in samples:
        frames = logmel(x)
        if frames.shape[0] == 0:  # shorter than one analysis window: nothing to describe
            continue
        rows.append(recording_features(frames))
    return np.stack(rows) if rows else np.zeros((0, 2 * frontend.n_mels))


def features_sha256(features: np.ndarray) -> str:
    """Digest of a feature matrix (identifies the recordings an adaptation or description used)."""
    return hashlib.sha256(np.ascontiguousarray(features, dtype="<f8").tobytes()).hexdigest()


def _band_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled per-band mean and std of the frames of all recordings, each recording weighted equally."""
    n = features.shape[1] // 2
    means, stds = features[:, :n], features[:, n:]
    mean = means.mean(axis=0)
    var = (stds ** 2 + means ** 2).mean(axis=0) - mean ** 2
    return mean, np.sqrt(np.maximum(var, MIN_STD ** 2))


def _rms_z(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = (np.atleast_2d(features) - mean) / std
    return np.sqrt((z * z).mean(axis=1))


@dataclass(frozen=True)
class SiteDescription:
    """What the training audio looked like, per mel band, over ``n_recordings`` recordings (log-mel units)."""

    feature_mean: tuple[float, ...]  # (2 n_mels,) mean over recordings of recording_features
    feature_std: tuple[float, ...]  # (2 n_mels,) their std over recordings (floored at MIN_STD)
    band_mean: tuple[float, ...]  # (n_mels,) pooled mean of all training frames per band
    band_std: tuple[float, ...]  # (n_mels,) pooled std of all training frames per band
    threshold: float  # shift score above which a recording is flagged
    n_recordings: int
    score_quantiles: tuple[float, ...] = ()  # training scores at quantiles 0.5, 0.9, 0.95, 0.99, 1.0 (context)
    recordings_sha256: str = ""  # digest of the training features
    prevalence: float | None = None  # share of training recordings with the positive (last) label, if known

    @property
    def n_mels(self) -> int:
        return len(self.band_mean)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Shift score of each row of ``features`` (R, 2 n_mels): RMS z-score; ~1 for typical training audio."""
        f = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if f.shape[1] != 2 * self.n_mels:
            raise BundleError(f"site description has {self.n_mels} mel bands; features have {f.shape[1] // 2}")
        return _rms_z(f, np.asarray(self.feature_mean), np.asarray(self.feature_std))

    def check(self, features: np.ndarray) -> dict[str, Any]:
        """The site-shift verdict for recordings of one site: per-recording scores and flags, and the batch's."""
        scores = self.score(features)
        flags = scores > self.threshold
        return {"scores": scores.tolist(), "flags": flags.tolist(), "threshold": self.threshold,
                "n": int(scores.size), "fraction_flagged": float(flags.mean()) if scores.size else 0.0,
                "median_score": float(np.median(scores)) if scores.size else 0.0,
                "batch_flagged": bool(scores.size and flags.mean() > BATCH_FRACTION)}

    def to_dict(self) -> dict[str, Any]:
        r = lambda v: [round(float(x), 5) for x in v]  # noqa: E731 - 5 decimals: the JSON stays a few KB
        return {"kind": "logmel_band_stats", "feature_mean": r(self.feature_mean), "feature_std": r(self.feature_std),
                "band_mean": r(self.band_mean), "band_std": r(self.band_std), "threshold": round(self.threshold, 5),
                "n_recordings": self.n_recordings, "score_quantiles": r(self.score_quantiles),
                "recordings_sha256": self.recordings_sha256, "prevalence": self.prevalence}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> "SiteDescription":
        try:
            desc = cls(feature_mean=tuple(map(float, d["feature_mean"])),
                       feature_std=tuple(map(float, d["feature_std"])),
                       band_mean=tuple(map(float, d["band_mean"])), band_std=tuple(map(float, d["band_std"])),
                       threshold=float(d["threshold"]), n_recordings=int(d["n_recordings"]),
                       score_quantiles=tuple(map(float, d.get("score_quantiles", ()))),
                       recordings_sha256=str(d.get("recordings_sha256", "")),
                       prevalence=None if d.get("prevalence") is None else float(d["prevalence"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{source}: malformed {DESCRIPTION_KEY} ({type(e).__name__}: {e})") from e
        n = len(desc.band_mean)
        if not (len(desc.feature_mean) == len(desc.feature_std) == 2 * n == 2 * len(desc.band_std)) or n == 0:
            raise BundleError(f"{source}: {DESCRIPTION_KEY} has inconsistent lengths")
        return desc


def describe(features: np.ndarray, prevalence: float | None = None, quantile: float = THRESHOLD_QUANTILE,
             margin: float = THRESHOLD_MARGIN) -> SiteDescription:
    """The description of training recordings' ``features`` (R, 2 n_mels), threshold at ``quantile`` x ``margin``
    of their own scores; ``prevalence``: their share of positive labels (for re-choosing the operating point)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] % 2:
        raise ValueError(f"need features of at least 2 recordings, shape (R, 2 n_mels); got {f.shape}")
    mean, std = f.mean(axis=0), np.maximum(f.std(axis=0), MIN_STD)
    scores = _rms_z(f, mean, std)
    band_mean, band_std = _band_stats(f)
    qs = np.quantile(scores, [0.5, 0.9, 0.95, 0.99, 1.0])
    return SiteDescription(tuple(mean), tuple(std), tuple(band_mean), tuple(band_std),
                           float(np.quantile(scores, quantile) * margin), int(f.shape[0]), tuple(qs),
                           features_sha256(f), prevalence)


def description_of(extra: dict[str, Any], source: str = "manifest") -> SiteDescription | None:
    """The site description stored in a manifest's or checkpoint's ``extra``, or None."""
    d = extra.get(DESCRIPTION_KEY)
    return None if d is None else SiteDescription.from_dict(d, source)


@dataclass(frozen=True)
class FrontendCorrection:
    """Per-band affine map of log-mel frames, ``frames * scale + offset`` (log-mel units)."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def between(cls, site: SiteDescription | tuple[np.ndarray, np.ndarray], train: SiteDescription,
                match_scale: bool = True) -> "FrontendCorrection":
        """The map taking the site's per-band mean (and spread, if ``match_scale``) to the training audio's."""
        s_mean, s_std = (np.asarray(site.band_mean), np.asarray(site.band_std)) if isinstance(site, SiteDescription) \
            else site
        t_mean, t_std = np.asarray(train.band_mean), np.asarray(train.band_std)
        scale = t_std / np.maximum(s_std, MIN_STD) if match_scale else np.ones_like(t_mean)
        return cls(tuple(map(float, scale)), tuple(map(float, t_mean - s_mean * scale)))

    def apply(self, frames: np.ndarray) -> np.ndarray:
        return (frames * np.asarray(self.scale, dtype=np.float32)
                + np.asarray(self.offset, dtype=np.float32)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": [round(v, 6) for v in self.scale], "offset": [round(v, 6) for v in self.offset]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], n_mels: int, source: str = "manifest") -> "FrontendCorrection":
        try:
            c = cls(tuple(map(float, d["scale"])), tuple(map(float, d["offset"])))
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{source}: malformed {CORRECTION_KEY} ({type(e).__name__}: {e})") from e
        if len(c.scale) != n_mels or len(c.offset) != n_mels:
            raise BundleError(f"{source}: {CORRECTION_KEY} has {len(c.scale)} bands, the front-end {n_mels}")
        return c


def site_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled per-band (mean, std) of a site's recordings from their features (R, 2 n_mels)."""
    return _band_stats(np.atleast_2d(np.asarray(features, dtype=np.float64)))


class CorrectedLogMel(LogMel):
    """:class:`LogMel` followed by a :class:`FrontendCorrection` (every path of LogMel ends in ``correct``)."""

    def __init__(self, cfg: FrontendConfig, correction: FrontendCorrection) -> None:
        super().__init__(cfg)
        self.correction = correction

    def correct(self, logmel: np.ndarray) -> np.ndarray:
        return self.correction.apply(logmel)


def bundle_logmel(frontend: FrontendConfig, extra: dict[str, Any], source: str = "manifest") -> LogMel:
    """The device front-end of a bundle: plain, or corrected when the manifest carries an adaptation's correction."""
    c = extra.get(CORRECTION_KEY)
    if c is None:
        return LogMel(frontend)
    return CorrectedLogMel(frontend, FrontendCorrection.from_dict(c, frontend.n_mels, source))


class FeatureAccumulator:
    """Running :func:`recording_features` of frames arriving in pieces (streaming): per-band sum and sum of
    squares in float64, so memory does not grow with the recording."""

    def __init__(self, n_mels: int) -> None:
        self.n_mels = n_mels
        self.reset()

    def reset(self) -> None:
        self._sum = np.zeros(self.n_mels)
        self._sq = np.zeros(self.n_mels)
        self._ones = np.ones(0)  # the last push's row count of ones (a stream pushes the same count every time)
        self.n = 0

    def push(self, frames: np.ndarray) -> None:
        n = frames.shape[0]
        if n:
            f = frames.astype(np.float64)
            if self._ones.shape[0] != n:
                self._ones = np.ones(n)
            ones = self._ones
            # column sums as vector-matrix products: half the cost of sum(axis=0) and einsum for a stream's frames
            np.add(self._sum, ones @ f, out=self._sum)
            np.add(self._sq, ones @ (f * f), out=self._sq)
            self.n += n

    def features(self) -> np.ndarray | None:
        """(2 n_mels,) features of everything pushed, or None before the first frame."""
        if self.n == 0:
            return None
        mean = self._sum / self.n
        return np.concatenate([mean, np.sqrt(np.maximum(self._sq / self.n - mean * mean, 0.0))])


def recording_verdict(description: SiteDescription, features: np.ndarray) -> dict[str, Any]:
    """The per-recording site-shift result attached to a classification: score, threshold, flagged."""
    score = float(description.score(features)[0])
    return {"score": round(score, 4), "threshold": round(description.threshold, 4),
            "flagged": bool(score > description.threshold)}


def batch_verdict(results: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Site-shift verdict of a batch of recordings from one site, from their per-recording verdicts (None when no
    recording carried one): flagged when more than BATCH_FRACTION of the recordings are."""
    checked = [r for r in results if r]
    if not checked:
        return None
    flagged = sum(r["flagged"] for r in checked)
    return {"n": len(checked), "flagged": flagged, "fraction_flagged": round(flagged / len(checked), 4),
            "threshold": checked[0]["threshold"],
            "median_score": round(float(np.median([r["score"] for r in checked])), 4),
            "batch_flagged": flagged / len(checked) > BATCH_FRACTION}
