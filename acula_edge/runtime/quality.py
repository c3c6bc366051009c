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
_NAN = float("nan")


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
    a whole number of blocks; per block the sum, sum of squares and clipped-sample count, so a window's
    RMS, DC offset and clip fraction are exact sums of its blocks. Spectral flatness: the front-end already computes
    every frame's power spectrum; each frame's power pooled into ``flatness_bands`` equal-width bands between fmin
    and fmax (:class:`~acula_edge.features.SpectrumBands`) comes with its log-mel frame, and a window's flatness is
    taken on the sum over its frames (Welch's averaged periodogram); a stream sums its frames' spectra per hop block
    before pooling them (:class:`WindowBandPower`, the same sum). Why: a separate FFT of each hop's samples cost
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
        self._block_ones = np.ones(self.block, dtype=np.float32)

    def _frame_sum(self, frame_bands: np.ndarray) -> np.ndarray:
        """The sum over a window's frames of their pooled power (bands,): a vector-matrix product, a third of the
        cost of numpy's sum over the frame axis for a window's ~200 x 16 values."""
        n = frame_bands.shape[0]
        return (self._ones if n == self._ones.shape[0] else np.ones(n)) @ frame_bands

    def block_stats(self, block: np.ndarray, sq: float | None = None) -> tuple[float, float, float]:
        """(sum, sum of squares, clipped-sample count) of one block (float32, ``self.block`` samples), as Python
        floats. The sums are float32 dot products (BLAS: a fraction of the cost of numpy's pairwise sum, and of a
        float64 copy; relative rounding ~1e-6, far below what a level in dB or a DC offset needs). Samples reach
        full scale only if the sum of squares does (|x| >= clip implies sum x^2 >= clip^2), so quiet blocks skip
        the search for clipped samples. ``sq``: the block's ``np.vdot(block, block)``, when the caller has it."""
        if sq is None:
            sq = float(np.vdot(block, block))  # vdot: no overflow warning for absurd magnitudes (they give inf)
        clipped = 0.0
        clip = self.cfg.clip_level
        if sq >= clip * clip and (block.max() >= clip or block.min() <= -clip):
            clipped = float(np.count_nonzero(np.abs(block) >= clip))
        return float(np.vdot(self._block_ones, block)), sq, clipped

    def stats(self, x: np.ndarray, sq: float | None = None) -> list[tuple[float, float, float]]:
        """:meth:`block_stats` of each block of ``x`` (float32, a whole number of blocks): the same arithmetic for
        a stream's hop and a whole recording. ``sq``: ``np.vdot(x, x)`` when the caller has it (used when ``x`` is
        one block)."""
        g = self.block
        if x.shape[0] == g:
            return [self.block_stats(x, sq)]
        return [self.block_stats(x[i:i + g]) for i in range(0, x.shape[0] - g + 1, g)]

    def quality(self, rows: Sequence[tuple[float, float, float]], band_power: list[float] | None) -> WindowQuality:
        """The quality of the window made of the blocks whose statistics are ``rows`` (blocks_per_window of
        :meth:`stats`' tuples) and whose frames' power, summed over the window and pooled into bands, is
        ``band_power`` (None: flatness not measured)."""
        total = total_sq = clipped = 0.0
        for s, sq, c in rows:
            total += s
            total_sq += sq
            clipped += c
        n = len(rows) * self.block
        flat = _NAN if band_power is None or not self.flatness_available else _flatness(band_power)
        return assess(total_sq / n, clipped / n, total / n, flat, self.cfg)

    def windows(self, x: np.ndarray, n_windows: int, frame_bands: np.ndarray | None) -> list[WindowQuality]:
        """Quality of windows 0..n_windows-1 of a whole recording ``x`` (float32 at the model's rate), given its
        frames' pooled power ``frame_bands`` (n_frames, bands) from the front-end (None: no flatness)."""
        if n_windows <= 0:
            return []
        n_blocks = (n_windows - 1) * self.blocks_per_hop + self.blocks_per_window
        rows = self.stats(np.ascontiguousarray(x[:n_blocks * self.block], dtype=np.float32))
        bh, bw, fh, fw = self.blocks_per_hop, self.blocks_per_window, self.frames_per_hop, self.frames_per_window
        return [self.quality(rows[k * bh:k * bh + bw],
                             None if frame_bands is None else self._frame_sum(frame_bands[k * fh:k * fh + fw]).tolist())
                for k in range(n_windows)]


class WindowBandPower:
    """A stream's windows' band power (:class:`BlockQuality`'s flatness input) from per-block sums of its frames'
    power spectra.

    Window ``k`` holds frames ``[k h, k h + F)`` (``h`` frames per hop, ``F`` per window). With ``F = q h + r``
    (``0 <= r < h``), each hop block of frames ``[m h, (m + 1) h)`` is kept as two sums, its head (the first ``r``
    frames) and its tail (the rest), at rows ``2 m`` and ``2 m + 1``: window ``k`` is rows ``[2 k, 2 k + 2 q]``.
    When ``r == 0`` a block is one row (``m``) and window ``k`` rows ``[k, k + q)``. Each batch of new frames is
    reduced to its rows by one 0/1 matrix product, and only those few rows are pooled into bands: per hop, a
    handful of rows instead of pooling every frame and summing the window's ~200 frames again (the same sum, in
    another order: agreement to ~1e-15). Memory: a few rows.
    """

    def __init__(self, bands: SpectrumBands, frames_per_hop: int, frames_per_window: int, n_freqs: int) -> None:
        self.bands = bands
        self.h = int(frames_per_hop)
        self.q, self.r = divmod(int(frames_per_window), self.h)
        self.rows_per_block = 2 if self.r else 1
        self.rows_per_window = 2 * self.q + 1 if self.r else self.q
        self._sums = np.zeros((self.rows_per_window + 16, bands.count))  # rows from _row0 on
        self._ones = np.ones(self.rows_per_window)
        self._plans: dict[tuple[int, int], tuple[np.ndarray, int, bool]] = {}  # see _plan
        # (n_freqs, count): the band pooling of a whole power spectrum (zero outside the bands' bins)
        self._pooling = np.zeros((n_freqs, bands.count))
        self._pooling[bands.lo:bands.lo + bands.per_band * bands.count] = bands.pooling
        self.reset()

    def reset(self) -> None:
        self._row0 = 0

    def _row(self, frame: int) -> int:
        return self.rows_per_block * (frame // self.h) + (0 < self.r <= frame % self.h)

    def _plan(self, first: int, n: int) -> tuple[np.ndarray, int, bool]:
        """For frames ``first .. first + n - 1``: a (rows, n) 0/1 matrix saying which row each frame adds to (rows
        from the first frame's), that first row's offset from its block's first row, and whether the previous batch
        began it. It depends only on ``first``'s place in its block and on ``n``, so a stream reuses a few."""
        key = (first % self.h, n)
        plan = self._plans.get(key)
        if plan is None:
            rows = [self._row(first + i) - self._row(first) for i in range(n)]
            a = np.zeros((rows[-1] + 1, n))
            a[rows, np.arange(n)] = 1.0
            pos = first % self.h
            plan = self._plans[key] = (a, int(0 < self.r <= pos), pos != 0 and pos != self.r)
        return plan

    def add(self, first: int, power: np.ndarray, keep_from_window: int) -> None:
        """Add the power spectra (n, n_freqs) of frames ``first .. first + n - 1`` (the stream's next frames);
        rows before window ``keep_from_window``'s may be forgotten."""
        n = power.shape[0]
        if not n:
            return
        parts, offset, begun = self._plan(first, n)
        # frames summed per row, then pooled into bands (np.dot: for these small operands less per-call cost than
        # the @ operator's gufunc dispatch)
        pooled = np.dot(np.dot(parts, power), self._pooling)
        rows = pooled.shape[0]
        lo = self.rows_per_block * (first // self.h) + offset - self._row0
        if lo + rows > self._sums.shape[0]:  # out of room: the rows still needed back to the start
            keep, have = min(max(self.rows_per_block * keep_from_window - self._row0, 0), lo), lo + begun
            if lo + rows - keep > self._sums.shape[0]:
                grown = np.zeros((lo + rows - keep + 16, self.bands.count))
                grown[:have - keep] = self._sums[keep:have]
                self._sums = grown
            else:
                self._sums[:have - keep] = self._sums[keep:have]
            self._row0 += keep
            lo -= keep
        if begun:
            self._sums[lo] += pooled[0]
            self._sums[lo + 1:lo + rows] = pooled[1:]
        else:
            self._sums[lo:lo + rows] = pooled

    def window(self, k: int) -> list[float]:
        """Window ``k``'s band power (its frames' power summed, pooled into bands), as Python floats."""
        lo = self.rows_per_block * k - self._row0
        return np.dot(self._ones, self._sums[lo:lo + self.rows_per_window]).tolist()


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
