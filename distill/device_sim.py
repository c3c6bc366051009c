"""Simulated recording chains on waveforms: the same body sound as another stethoscope, site and codec would give it.

Log-mel augmentation (:mod:`acula_edge.distill.augment`) can tilt a spectrum, but not what a different device chain
does to the waveform before the front-end: its pass band, a resampler and anti-alias filter, a lossy codec's
quantisation, gain and clipping, and the other sounds of another room. :func:`simulate_device` applies a random
chain of those (numpy/scipy, seeded), and :func:`simulated_copies` gives whole datasets of such copies, which
training adds to the clean windows (same recording ids and window indices, so a teacher's clean outputs stay the
targets).

Chain, each step with its own probability (:class:`DeviceSimConfig`):

1. band-pass: a Butterworth high-pass (stethoscope diaphragm/bell, skin contact) and low-pass (cheap microphones);
2. resampling through another rate and back (anti-alias filtering and resampler artefacts of another device);
3. a random peaking filter (a resonance of the chest piece or tubing), +/- ``peak_db``;
4. additive noise: another recording of the dataset (its room, breath and handling noise) or coloured electronic
   noise, at a random signal-to-noise ratio;
5. gain, then clipping at a fraction of the peak (an overdriven input stage);
6. a codec: mu-law companding to 8 bits, or linear PCM at 8-12 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from acula_edge.data import Dataset, Recording
from acula_edge.errors import ConfigError


@dataclass(frozen=True)
class DeviceSimConfig:
    """Probabilities (per copy) and ranges. Frequencies as fractions of the Nyquist rate, so any sample rate works."""

    p_band: float = 0.7
    highpass: tuple[float, float] = (0.01, 0.12)  # high-pass corner range, fraction of Nyquist (2 kHz: 10-120 Hz)
    lowpass: tuple[float, float] = (0.25, 0.9)  # low-pass corner range, fraction of Nyquist (2 kHz: 250-900 Hz)
    p_resample: float = 0.3
    resample_ratios: tuple[float, ...] = (0.5, 0.6, 0.75, 1.5, 2.0)  # the intermediate rate, times the sample rate
    p_peak: float = 0.5
    peak_db: float = 9.0  # gain of the random peaking filter drawn from [-peak_db, +peak_db]
    p_noise: float = 0.5
    noise_snr_db: tuple[float, float] = (5.0, 30.0)
    p_other_recording_noise: float = 0.5  # share of the noise draws that use another recording (else coloured)
    gain_db: float = 12.0  # level change drawn from [-gain_db, +gain_db]
    p_clip: float = 0.15
    clip_fraction: tuple[float, float] = (0.3, 0.8)  # clipping level, fraction of the peak
    p_codec: float = 0.3
    pcm_bits: tuple[int, int] = (8, 12)  # linear PCM quantisation range; mu-law is always 8 bits

    def __post_init__(self) -> None:
        probs = [self.p_band, self.p_resample, self.p_peak, self.p_noise, self.p_other_recording_noise, self.p_clip,
                 self.p_codec]
        problems = []
        if any(not 0 <= p <= 1 for p in probs):
            problems.append(f"probabilities must be in [0, 1], got {probs}")
        for name in ("highpass", "lowpass", "clip_fraction"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi < 1:
                problems.append(f"{name} must be (low, high) with 0 < low <= high < 1, got {(lo, hi)}")
        if self.noise_snr_db[0] > self.noise_snr_db[1] or self.pcm_bits[0] > self.pcm_bits[1] or self.pcm_bits[0] < 2:
            problems.append("noise_snr_db and pcm_bits must be (low, high) ranges; pcm_bits >= 2")
        if not self.resample_ratios or any(r <= 0 for r in self.resample_ratios):
            problems.append(f"resample_ratios must be positive, got {self.resample_ratios}")
        if problems:
            raise ConfigError("invalid device simulation config: " + "; ".join(problems))


def _butter(order: int, corner: float, kind: str) -> np.ndarray:
    from scipy.signal import butter

    return butter(order, corner, btype=kind, output="sos")


def _peaking(centre: float, gain_db: float, q: float) -> np.ndarray:
    """RBJ audio-EQ-cookbook peaking biquad as one second-order section; ``centre`` in fractions of Nyquist."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = math.pi * centre
    alpha = math.sin(w0) / (2.0 * q)
    b = np.array([1 + alpha * a, -2 * math.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * math.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _coloured_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White noise with a random spectral slope (from white to ~brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(spec.shape[0]), 1.0)
    spec /= f ** rng.uniform(0.0, 1.0)
    return np.fft.irfft(spec, n=n)


def simulate_device(samples: np.ndarray, rng: np.random.Generator, config: DeviceSimConfig = DeviceSimConfig(),
                    other: np.ndarray | None = None) -> np.ndarray:
    """One random recording chain applied to mono float ``samples``; same length, float32.

    ``other``: another recording at the same rate whose sound may be mixed in as background noise."""
    from scipy.signal import resample_poly, sosfiltfilt

    c = config
    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[0]
    if n < 16:
        return x.astype(np.float32)
    level = _rms(x)
    if rng.random() < c.p_band:
        hp = math.exp(rng.uniform(math.log(c.highpass[0]), math.log(c.highpass[1])))
        lp = math.exp(rng.uniform(math.log(max(c.lowpass[0], 1.5 * hp)), math.log(c.lowpass[1])))
        sos = np.concatenate([_butter(int(rng.integers(1, 3)), hp, "highpass"),
                              _butter(int(rng.integers(2, 5)), min(lp, 0.95), "lowpass")])
        x = sosfiltfilt(sos, x, padlen=min(n - 1, 3 * 6))
    if rng.random() < c.p_resample:
        ratio = float(rng.choice(c.resample_ratios))
        frac = _fraction(ratio)
        x = resample_poly(resample_poly(x, frac[0], frac[1]), frac[1], frac[0])[:n]
        if x.shape[0] < n:
            x = np.pad(x, (0, n - x.shape[0]))
    if rng.random() < c.p_peak:
        x = sosfiltfilt(_peaking(rng.uniform(0.03, 0.6), rng.uniform(-c.peak_db, c.peak_db), rng.uniform(0.7, 3.0)),
                        x, padlen=min(n - 1, 9))
    if rng.random() < c.p_noise:
        if other is not None and other.size and rng.random() < c.p_other_recording_noise:
            start = int(rng.integers(0, max(1, other.shape[0] - n + 1)))
            noise = np.resize(np.asarray(other[start:start + n], dtype=np.float64), n)
        else:
            noise = _coloured_noise(n, rng)
        snr = rng.uniform(*c.noise_snr_db)
        nl = _rms(noise)
        if nl > 0 and _rms(x) > 0:
            x = x + noise * (_rms(x) / nl) * 10.0 ** (-snr / 20.0)
    # back to the input's level, then the random gain (so a quiet input does not vanish into the codec)
    out_level = _rms(x)
    if out_level > 0 and level > 0:
        x = x * (level / out_level)
    x = x * 10.0 ** (rng.uniform(-c.gain_db, c.gain_db) / 20.0)
    peak = float(np.max(np.abs(x))) or 1.0
    if rng.random() < c.p_clip:
        lim = peak * rng.uniform(*c.clip_fraction)
        x = np.clip(x, -lim, lim)
    if rng.random() < c.p_codec:
        full = max(float(np.max(np.abs(x))), 1e-12)
        y = x / full
        if rng.random() < 0.5:  # mu-law, 8 bits
            mu = 255.0
            comp = np.sign(y) * np.log1p(mu * np.abs(y)) / math.log1p(mu)
            comp = np.round(comp * 127.0) / 127.0
            y = np.sign(comp) * np.expm1(np.abs(comp) * math.log1p(mu)) / mu
        else:
            steps = 2 ** (int(rng.integers(c.pcm_bits[0], c.pcm_bits[1] + 1)) - 1) - 1
            y = np.round(y * steps) / steps
        x = y * full
    return x.astype(np.float32)


def _fraction(ratio: float) -> tuple[int, int]:
    from fractions import Fraction

    f = Fraction(ratio).limit_denominator(20)
    return f.numerator, f.denominator


def simulated_copies(dataset: Dataset, sample_rate: int, copies: int, config: DeviceSimConfig = DeviceSimConfig(),
                     seed: int = 0) -> list[Dataset]:
    """``copies`` datasets, each holding every recording of ``dataset`` (same order, ids, labels and metadata) as
    heard through a random device chain (one chain per recording and copy, seeded by ``seed``, copy and position).
    Background noise comes from another recording of the same dataset, chosen at random."""
    if copies <= 0:
        return []
    clean = [r.load(sample_rate) for r in dataset]
    out = []
    for k in range(copies):
        recs = []
        for i, (rec, x) in enumerate(zip(dataset, clean)):
            rng = np.random.default_rng([seed, k, i])
            j = int(rng.integers(0, len(clean) - 1)) if len(clean) > 1 else i
            j += int(j >= i) if len(clean) > 1 else 0
            recs.append(Recording(rec.record_id, rec.label, dict(rec.metadata),
                                  samples=simulate_device(x, rng, config, other=clean[j] if j != i else None),
                                  sample_rate=sample_rate))
        out.append(Dataset(f"{dataset.name}+device-sim{k}", tuple(recs)))
    return out
