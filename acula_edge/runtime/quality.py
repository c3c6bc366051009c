"""Per-window signal quality: silence, clipping, implausible level, DC offset and noise-like spectra.

On a real stethoscope many seconds are unusable (the chest piece lifted, rubbing, shouting, a saturated
amplifier). Windows that fail a check are reported with their flags and left out of the recording-level
aggregate and decision (with a count). Checks work on the window's samples at the model's rate, full scale 1.0;
the thresholds live in :class:`QualityConfig` and are generic (no dataset-specific facts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from acula_edge.features import LogMel, SpectrumBands
from acula_edge.frontend import FrontendConfig
from acula_edge.runtime.results import WindowQuality

FLAGS = ("silence", "clipping", "too_loud", "dc_offset", "noise")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the window quality checks. Levels in dBFS (RMS of a full-scale square wave = 0 dBFS)."""

    enabled: bool = True  # False: no flags are raised, every window counts (measurements still reported)
    silence_dbfs: float = -60.0  # RMS below this: "silence" (no contact, or the device muted)
    clip_level: float = 0.999  # |sample| at or above this counts as full scale
    max_clip_fraction: float = 0.01  # more full-scale samples than this fraction: "clipping"
    max_rms_dbfs: float = -3.0  # RMS above this: "too_loud" (a body sound is never this loud; overload)
    max_dc_offset: float = 0.25  # |mean| above this: "dc_offset" (sensor fault / unfiltered input)
    max_flatness: float = 0.9  # spectral flatness in the front-end band above this: "noise" (white-noise-like)
    flatness_bands: int = 16  # equal-width bands the band-limited power spectrum is pooled into before flatness


def _flatness(pooled: list[float]) -> float:
    """Geometric / arithmetic mean of pooled band powers; 0.0 when there is no power (or no band). Python floats:
    for the 16 bands of a window this is several times faster than numpy's per-call overhead."""
    if not pooled:
        return 0.0
    mean = sum(pooled) / len(pooled)
    if mean <= 0.0:
        return 0.0
    floor = mean * 1e-12
    if min(pooled) < floor:  # rare (a band with no power): floor those bands only
        pooled = [max(v, floor) for v in pooled]
    return math.exp(sum(map(math.log, pooled)) / len(pooled)) / mean


def spectral_flatness(x: np.ndarray, frontend: FrontendConfig, bands: int) -> float:
    """Geometric / arithmetic mean of the power in ``bands`` equal-width bands between fmin and fmax; 0..1.

    The power is the front-end's own: the mean of its frames' power spectra (Welch's averaged periodogram with the
    front-end's analysis window). Pooling many bins per band makes white noise score close to 1 and any spectral
    shape (heart, lung sounds) clearly lower. Returns 0.0 for an all-zero window, NaN when the front-end has fewer
    FFT bins than ``bands`` between fmin and fmax (or no spectrum).
    """
    return window_quality(x, frontend, QualityConfig(flatness_bands=bands)).flatness


class BlockQuality:
    """Window quality from statistics computed once per sample and once per front-end frame.

    Level checks: blocks are ``block = gcd(window, hop)`` samples from the start of the recording, so every window is
    a whole number of blocks; per block the sum, sum of squares and clipped-sample count (float64), so a window's
    RMS, DC offset and clip fraction are exact sums of its blocks. Spectral flatness: the front-end already computes
    every frame's power spectrum; each frame's power pooled into ``flatness_bands`` equal-width bands between fmin
    and fmax (:class:`~acula_edge.features.SpectrumBands`) comes with its log-mel frame, and a window's flatness is
    taken on the sum over its frames (Welch's averaged periodogram). Why: a separate FFT of each hop's samples cost
    more than the rest of the per-hop bookkeeping together. Front-ends without enough bins per band (or without a
    spectrum) report flatness NaN and the "noise" check is not made.
    """

    def __init__(self, frontend: FrontendConfig, window_samples: int, hop_samples: int, cfg: QualityConfig) -> None:
        self.frontend, self.cfg = frontend, cfg
        self.block = math.gcd(int(window_samples), int(hop_samples))
        self.blocks_per_window = window_samples // self.block
        self.blocks_per_hop = hop_samples // self.block
        self.frames_per_window = frontend.num_frames(int(window_samples))
        self.frames_per_hop = int(hop_samples) // frontend.hop_length
        self.bands = SpectrumBands.between(frontend, int(cfg.flatness_bands))  # None: flatness not measured
        self.flatness_available = self.bands is not None
        self._ones = np.ones(self.frames_per_window)
        self._block_ones = np.ones(self.block)

    def _frame_sum(self, frame_bands: np.ndarray) -> np.ndarray:
        """The sum over a window's frames of their pooled power (bands,): a vector-matrix product, a third of the
        cost of numpy's sum over the frame axis for a window's ~200 x 16 values."""
        n = frame_bands.shape[0]
        return (self._ones if n == self._ones.shape[0] else np.ones(n)) @ frame_bands

    def stats(self, x: np.ndarray) -> list[tuple[float, float, float]]:
        """Per block of ``x`` (float32, a whole number of blocks): (sum, sum of squares, clipped-sample count), as
        Python floats (float64). One block at a time, the same arithmetic for a stream's hop and a whole recording;
        four numpy reductions per block and no array allocated but the block in float64."""
        clip, g, ones = self.cfg.clip_level, self.block, self._block_ones
        out = []
        for i in range(0, x.shape[0] - g + 1, g):
            block = x[i:i + g]
            wide = block.astype(np.float64)
            clipped = 0.0
            if block.max() >= clip or block.min() <= -clip:  # rare: count only in a block that reaches full scale
                clipped = float(np.count_nonzero(np.abs(block) >= clip))
            # sums as float64 dot products (BLAS): a third of the cost of numpy's pairwise sum of a block
            out.append((float(ones @ wide), float(wide @ wide), clipped))
        return out

    def quality(self, rows: Sequence[tuple[float, float, float]], frame_bands: np.ndarray | None) -> WindowQuality:
        """The quality of the window made of the blocks whose statistics are ``rows`` (blocks_per_window of
        :meth:`stats`' tuples) and of the frames whose pooled power is ``frame_bands`` (the window's frames, each
        row one frame's bands; None: flatness not measured)."""
        total = total_sq = clipped = 0.0
        for s, sq, c in rows:
            total += s
            total_sq += sq
            clipped += c
        n = len(rows) * self.block
        flat = float("nan")
        if frame_bands is not None and self.flatness_available:
            flat = _flatness(self._frame_sum(frame_bands).tolist())
        return assess(total_sq / n, clipped / n, total / n, flat, self.cfg)

    def windows(self, x: np.ndarray, n_windows: int, frame_bands: np.ndarray | None) -> list[WindowQuality]:
        """Quality of windows 0..n_windows-1 of a whole recording ``x`` (float32 at the model's rate), given its
        frames' pooled power ``frame_bands`` (n_frames, bands) from the front-end (None: no flatness)."""
        if n_windows <= 0:
            return []
        n_blocks = (n_windows - 1) * self.blocks_per_hop + self.blocks_per_window
        rows = self.stats(np.ascontiguousarray(x[:n_blocks * self.block], dtype=np.float32))
        bh, bw, fh, fw = self.blocks_per_hop, self.blocks_per_window, self.frames_per_hop, self.frames_per_window
        return [self.quality(rows[k * bh:k * bh + bw], None if frame_bands is None else frame_bands[k * fh:k * fh + fw])
                for k in range(n_windows)]


def assess(mean_square: float, clip: float, dc: float, flat: float, cfg: QualityConfig) -> WindowQuality:
    """The flags of a window from its mean square, clipped fraction, mean and flatness (NaN: not measured)."""
    rms_dbfs = 20.0 * math.log10(max(math.sqrt(max(mean_square, 0.0)), 1e-12))
    flags = []
    if cfg.enabled:
        if rms_dbfs < cfg.silence_dbfs:
            flags.append("silence")
        if clip > cfg.max_clip_fraction:
            flags.append("clipping")
        if rms_dbfs > cfg.max_rms_dbfs:
            flags.append("too_loud")
        if abs(dc) > cfg.max_dc_offset:
            flags.append("dc_offset")
        if flat > cfg.max_flatness and rms_dbfs >= cfg.silence_dbfs:  # False for NaN: not measured
            flags.append("noise")
    return WindowQuality(rms_dbfs=rms_dbfs, clip_fraction=float(clip), dc_offset=float(dc), flatness=float(flat),
                         flags=tuple(flags))


def window_quality(x: np.ndarray, frontend: FrontendConfig, cfg: QualityConfig,
                   block: int | None = None) -> WindowQuality:
    """Quality of one window of float samples (full scale 1.0) at ``frontend.sample_rate``; ``block``: the
    :class:`BlockQuality` block length (None: the whole window is one block)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    meter = BlockQuality(frontend, x.shape[0], block or x.shape[0], cfg)
    bands = LogMel(frontend).with_bands(x, meter.bands)[1] if meter.bands is not None else None
    return meter.windows(x, 1, bands)[0]
