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


def spectral_flatness(x: np.ndarray, frontend: FrontendConfig, bands: int) -> float:
    """Geometric / arithmetic mean of the power in ``bands`` equal-width bands between fmin and fmax; 0..1.

    Pooling many FFT bins per band makes white noise score close to 1 and any spectral shape (heart, lung sounds)
    clearly lower. Returns 0.0 for an all-zero window.
    """
    spec = np.fft.rfft(x.astype(np.float64))
    power = spec.real * spec.real + spec.imag * spec.imag
    freqs_per_bin = frontend.sample_rate / x.shape[0]
    lo = int(math.ceil(frontend.fmin / freqs_per_bin))
    hi = int(frontend.fmax / freqs_per_bin)
    band = power[lo:hi]
    n = band.shape[0] // bands * bands
    if n == 0:
        return 0.0
    pooled = band[:n].reshape(bands, -1).mean(axis=1)
    mean = pooled.mean()
    if mean <= 0.0:
        return 0.0
    return float(np.exp(np.mean(np.log(np.maximum(pooled, mean * 1e-12)))) / mean)


def window_quality(x: np.ndarray, frontend: FrontendConfig, cfg: QualityConfig) -> WindowQuality:
    """Quality of one window of float samples (full scale 1.0) at ``frontend.sample_rate``."""
    x64 = x.astype(np.float64)
    rms = math.sqrt(float(np.mean(x64 * x64)))
    rms_dbfs = 20.0 * math.log10(max(rms, 1e-12))
    clip = float(np.count_nonzero(np.abs(x) >= cfg.clip_level)) / max(x.shape[0], 1)
    dc = float(np.mean(x64))
    flat = spectral_flatness(x, frontend, cfg.flatness_bands)
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
        if flat > cfg.max_flatness and rms_dbfs >= cfg.silence_dbfs:
            flags.append("noise")
    return WindowQuality(rms_dbfs=rms_dbfs, clip_fraction=clip, dc_offset=dc, flatness=flat, flags=tuple(flags))
