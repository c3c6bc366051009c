"""Per-window signal quality: silence, clipping, implausible level, DC offset and noise-like spectra.

On a real stethoscope many seconds are unusable (the chest piece lifted, rubbing, shouting, a saturated
amplifier). Windows that fail a check are reported with their flags and left out of the recording-level
aggregate and decision (with a count). Checks work on the window's samples at the model's rate, full scale 1.0;
the thresholds live in :class:`QualityConfig` and are generic (no dataset-specific facts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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


def _band_edges(frontend: FrontendConfig, n: int) -> tuple[int, int]:
    """rfft bins [lo, hi) of an ``n``-sample segment that lie between fmin and fmax."""
    hz_per_bin = frontend.sample_rate / n
    return int(math.ceil(frontend.fmin / hz_per_bin)), int(frontend.fmax / hz_per_bin)


def _flatness(pooled: np.ndarray) -> float:
    """Geometric / arithmetic mean of pooled band powers; 0.0 when there is no power (or no band)."""
    if pooled.shape[0] == 0:
        return 0.0
    mean = float(pooled.mean())
    if mean <= 0.0:
        return 0.0
    return float(np.exp(np.mean(np.log(np.maximum(pooled, mean * 1e-12)))) / mean)


def spectral_flatness(x: np.ndarray, frontend: FrontendConfig, bands: int) -> float:
    """Geometric / arithmetic mean of the power in ``bands`` equal-width bands between fmin and fmax; 0..1.

    Pooling many FFT bins per band makes white noise score close to 1 and any spectral shape (heart, lung sounds)
    clearly lower. Returns 0.0 for an all-zero window.
    """
    return _flatness(BlockQuality(frontend, x.shape[0], x.shape[0], QualityConfig(flatness_bands=bands))
                     .stats(x)[0, 3:])


class BlockQuality:
    """Window quality from per-block statistics, so that a stream computes each sample's share once.

    Blocks are ``block = gcd(window, hop)`` samples from the start of the recording, so every window is a whole
    number of blocks. Per block: sum, sum of squares, clipped-sample count (float64) and the power of its rfft pooled
    into ``flatness_bands`` equal-width bands between fmin and fmax. A window's RMS, DC offset and clip fraction are
    exact (sums of its blocks); its spectral flatness is taken on the mean of its blocks' pooled spectra (Welch's
    averaged periodogram with ``block``-sample segments: for 4 s windows every 1 s, 1 s segments at 1 Hz per bin).
    Why: recomputing a float64 FFT over the whole window every hop cost as much as the incremental front-end.
    When a block is too short to have a bin in every band, flatness is NaN and the "noise" check is not made.
    """

    def __init__(self, frontend: FrontendConfig, window_samples: int, hop_samples: int, cfg: QualityConfig) -> None:
        self.frontend, self.cfg = frontend, cfg
        self.block = math.gcd(int(window_samples), int(hop_samples))
        self.blocks_per_window = window_samples // self.block
        self.blocks_per_hop = hop_samples // self.block
        lo, hi = _band_edges(frontend, self.block)
        self.bands = int(cfg.flatness_bands)
        per_band = max(hi - lo, 0) // self.bands
        self.flatness_available = per_band > 0
        self._lo, self._hi = lo, lo + per_band * self.bands
        self.width = 3 + self.bands  # columns of a stats row

    def stats(self, x: np.ndarray) -> np.ndarray:
        """(n_blocks, width) float64 statistics of ``x`` (float32, a whole number of blocks)."""
        from scipy import fft

        blocks = x.reshape(-1, self.block)
        out = np.empty((blocks.shape[0], self.width), dtype=np.float64)
        out[:, 0] = blocks.sum(axis=1, dtype=np.float64)
        out[:, 1] = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64)
        out[:, 2] = np.count_nonzero(np.abs(blocks) >= self.cfg.clip_level, axis=1)
        if self.flatness_available:
            spec = fft.rfft(blocks, axis=1)[:, self._lo:self._hi]
            power = spec.real * spec.real + spec.imag * spec.imag
            out[:, 3:] = power.reshape(blocks.shape[0], self.bands, -1).mean(axis=2)
        else:
            out[:, 3:] = 0.0
        return out

    def quality(self, rows: np.ndarray) -> WindowQuality:
        """The quality of the window made of the blocks whose statistics are ``rows`` (blocks_per_window, width)."""
        total = rows.sum(axis=0)
        n = rows.shape[0] * self.block
        return assess(total[1] / n, total[2] / n, total[0] / n,
                      _flatness(total[3:]) if self.flatness_available else float("nan"), self.cfg)

    def windows(self, x: np.ndarray, n_windows: int) -> list[WindowQuality]:
        """Quality of windows 0..n_windows-1 of a whole recording ``x`` (float32 at the model's rate)."""
        if n_windows <= 0:
            return []
        n_blocks = (n_windows - 1) * self.blocks_per_hop + self.blocks_per_window
        rows = self.stats(np.ascontiguousarray(x[:n_blocks * self.block], dtype=np.float32))
        bh, bw = self.blocks_per_hop, self.blocks_per_window
        return [self.quality(rows[k * bh:k * bh + bw]) for k in range(n_windows)]


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
    return meter.quality(meter.stats(x))
