"""Seeded synthetic heart and lung sounds with labels: the embedded dataset for demos and tests (no download).

``generate("heart", n=120)`` returns ``n`` :class:`SyntheticRecording` objects. Recording ``i`` depends only on
``(kind, i, seed, sample_rate, duration_s)``, so ``generate_one(kind, i, ...)`` rebuilds any one of them alone.

Heart ("normal" / "abnormal"): S1 and S2 as damped low-frequency tone bursts on a beat train with beat-to-beat
variability; abnormal recordings add a systolic or diastolic murmur (band-limited noise filling the interval
between the sounds) and/or an extra sound (S3, S4 or a wide split of S2).
Lung ("normal" / "crackle" / "wheeze"): breath cycles of filtered noise (louder inspiration, softer expiration),
faint heart sounds underneath, plus crackles (5-20 ms transients, many per breath) or wheezes (100-400 ms
gliding tones).

Every recording then goes through one of four recording sites ("A".."D"), each a different device: its own
frequency response, mains hum and noise floor/SNR range. The site is assigned so that the labels are balanced
within every site (in each block of ``len(SITES) * len(labels)`` consecutive indices every (site, label) pair
occurs exactly once), so a model cannot score by recognising the device, and ``metadata["subset"]`` (the site
letter) can be used for group splits. Each recording is finally scaled to a random peak level drawn
independently of its label, so loudness carries no label information.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import signal

from acula_edge.errors import DatasetError

__all__ = ["KINDS", "LABELS", "SITES", "SyntheticRecording", "generate", "generate_one"]

KINDS = ("heart", "lung")
# Class names per kind, in a fixed order (index = class id).
LABELS = MappingProxyType({"heart": ("normal", "abnormal"), "lung": ("normal", "crackle", "wheeze")})
# Recording sites; the letter is also metadata["subset"].
SITES = ("A", "B", "C", "D")

# Stable per-kind seed words (never hash(): it changes between interpreter runs).
_KIND_CODES = {"heart": 1, "lung": 2}
# Extra seed word that separates the site/label assignment stream from the per-recording streams.
_SLOT_STREAM = 7919
# The band edges of every synthetic sound are kept below this fraction of the sample rate (anti-alias margin).
_NYQUIST_MARGIN = 0.45
MIN_SAMPLE_RATE = 1000  # Hz: heart murmurs reach 500 Hz
MIN_DURATION_S = 1.0  # shortest recording that still holds a heart beat and part of a breath
MAX_DURATION_S = 600.0


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields with == is ambiguous; identity instead
class SyntheticRecording:
    """One generated recording with its class name and descriptive metadata (all values are str)."""

    record_id: str  # "<kind>-<index:04d>", e.g. "heart-0007"
    samples: np.ndarray  # float32 mono, shape (n,), peak in [0.3, 0.95]
    sample_rate: int  # Hz
    label: str  # one of LABELS[kind]
    metadata: dict[str, str]  # site, subset, device, snr_db, age_group, sex, duration_s, kind-specific fields


@dataclass(frozen=True)
class _Site:
    device: str  # device name written to metadata
    band_hz: tuple[float, float]  # device response: 2nd-order Butterworth high-pass and low-pass corners
    hum_hz: float  # mains frequency
    hum_level: float  # hum amplitude relative to the clean signal RMS (0 = no hum)
    noise_lp_hz: float  # corner of the low-pass that colours the background noise (low = rumbly, high = hissy)
    snr_db: tuple[float, float]  # range the recording's SNR (clean signal vs background noise) is drawn from


_SITES = {
    "A": _Site("digital-stethoscope-1", (20.0, 800.0), 50.0, 0.03, 150.0, (16.0, 24.0)),
    "B": _Site("digital-stethoscope-2", (35.0, 500.0), 60.0, 0.08, 300.0, (12.0, 20.0)),
    "C": _Site("phone-contact-mic", (70.0, 950.0), 50.0, 0.0, 1000.0, (10.0, 16.0)),
    "D": _Site("analog-stethoscope-tape", (15.0, 450.0), 60.0, 0.15, 80.0, (12.0, 20.0)),
}

_AGE_GROUPS = ("child", "adult", "senior")
_HEART_RATE_BPM = {"child": (80.0, 120.0), "adult": (55.0, 100.0), "senior": (55.0, 90.0)}
_BREATH_RATE_PER_MIN = {"child": (18.0, 25.0), "adult": (12.0, 20.0), "senior": (12.0, 22.0)}


def generate(kind: str, n: int = 120, seed: int = 0, sample_rate: int = 2000,
             duration_s: tuple[float, float] = (8.0, 14.0)) -> list[SyntheticRecording]:
    """``n`` labelled recordings of ``kind`` ("heart" or "lung"), ``sample_rate`` Hz, each lasting a random
    ``duration_s[0]..duration_s[1]`` seconds. Equal to ``[generate_one(kind, i, ...) for i in range(n)]``."""
    _check_args(kind, 0, seed, sample_rate, duration_s)  # fail early, even for n = 0
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise DatasetError(f"n must be a non-negative integer number of recordings, got {n!r}")
    return [generate_one(kind, i, seed, sample_rate, duration_s) for i in range(int(n))]


def generate_one(kind: str, index: int, seed: int = 0, sample_rate: int = 2000,
                 duration_s: tuple[float, float] = (8.0, 14.0)) -> SyntheticRecording:
    """Recording number ``index`` of the seeded ``kind`` dataset; depends only on the arguments."""
    _check_args(kind, index, seed, sample_rate, duration_s)
    index, seed, fs = int(index), int(seed), int(sample_rate)
    site_letter, label = _slot(kind, index, seed)
    site = _SITES[site_letter]
    rng = np.random.default_rng([seed, index, _KIND_CODES[kind]])

    duration = rng.uniform(float(duration_s[0]), float(duration_s[1]))
    n = int(round(duration * fs))
    age_group = _AGE_GROUPS[rng.integers(len(_AGE_GROUPS))]
    sex = "F" if rng.random() < 0.5 else "M"
    # Sounds are synthesised on a timeline padded on both sides so that the filters' start-up transients and
    # events cut by the edges fall outside the kept part; cycles start before t = 0, so recordings start mid-cycle.
    pad = int(0.25 * fs)
    if kind == "heart":
        reference, extra, fields = _heart(rng, label, n, pad, fs, age_group)
    else:
        reference, extra, fields = _lung(rng, label, n, pad, fs, age_group)
    samples, snr_db = _record(rng, reference, extra, site, n, pad, fs)

    metadata = {
        **fields,
        "site": f"site-{site_letter}",
        "subset": site_letter,
        "device": site.device,
        "snr_db": f"{snr_db:.1f}",
        "age_group": age_group,
        "sex": sex,
        "duration_s": f"{n / fs:.3f}",
    }
    return SyntheticRecording(f"{kind}-{index:04d}", samples, fs, label, metadata)


def _check_args(kind: str, index: int, seed: int, sample_rate: int, duration_s: tuple[float, float]) -> None:
    if kind not in KINDS:
        raise DatasetError(f"unknown synthetic dataset kind {kind!r}; allowed kinds: {', '.join(KINDS)} "
                           f"(e.g. generate('heart', n=120))")
    for name, value in (("index", index), ("seed", seed)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise DatasetError(f"{name} must be a non-negative integer, got {value!r}")
    if int(sample_rate) != sample_rate or sample_rate < MIN_SAMPLE_RATE:
        raise DatasetError(f"sample_rate must be an integer >= {MIN_SAMPLE_RATE} Hz (heart murmurs reach "
                           f"500 Hz), got {sample_rate!r}; 2000 Hz (heart) or 4000 Hz (lung) are typical")
    try:
        lo, hi = (float(v) for v in duration_s)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"duration_s must be a (min, max) pair of seconds, got {duration_s!r}") from e
    if not MIN_DURATION_S <= lo <= hi <= MAX_DURATION_S:
        raise DatasetError(f"duration_s must satisfy {MIN_DURATION_S} <= min <= max <= {MAX_DURATION_S} "
                           f"seconds, got {duration_s!r}")


def _slot(kind: str, index: int, seed: int) -> tuple[str, str]:
    """Site and label of recording ``index``: a seeded shuffle of all (site, label) pairs per block."""
    labels = LABELS[kind]
    cells = len(SITES) * len(labels)
    block, position = divmod(index, cells)
    order = np.random.default_rng([seed, block, _KIND_CODES[kind], _SLOT_STREAM]).permutation(cells)
    cell = int(order[position])
    return SITES[cell % len(SITES)], labels[cell // len(SITES)]


# ----------------------------------------------------------------------------------------------------------
# Building blocks


def _biquad(kind: str, corner_hz: float, fs: int) -> list[float]:
    """One second-order Butterworth section (bilinear transform, closed form) as an sos row
    [b0, b1, b2, 1, a1, a2]; much cheaper than scipy.signal.butter, which dominated generation time."""
    k = np.tan(np.pi * min(corner_hz, _NYQUIST_MARGIN * fs) / fs)
    norm = 1.0 / (1.0 + np.sqrt(2.0) * k + k * k)
    a = [1.0, 2.0 * (k * k - 1.0) * norm, (1.0 - np.sqrt(2.0) * k + k * k) * norm]
    b = [k * k * norm, 2 * k * k * norm, k * k * norm] if kind == "low" else [norm, -2 * norm, norm]
    return b + a


def _band_sos(lo_hz: float, hi_hz: float, fs: int) -> np.ndarray:
    """Band-pass with 12 dB/octave skirts: 2nd-order Butterworth high-pass at lo, low-pass at hi."""
    return np.array([_biquad("high", lo_hz, fs), _biquad("low", hi_hz, fs)])


def _bandpass(x: np.ndarray, lo_hz: float, hi_hz: float, fs: int) -> np.ndarray:
    return signal.sosfilt(_band_sos(lo_hz, hi_hz, fs), x)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _overlay(starts: np.ndarray, waves: np.ndarray, total: int) -> np.ndarray:
    """Sum of event waveforms ``waves[e]`` (rows) starting at sample ``starts[e]``, on a ``total``-sample line."""
    if len(starts) == 0:
        return np.zeros(total)
    idx = starts[:, None] + np.arange(waves.shape[1])[None, :]
    keep = (idx >= 0) & (idx < total)
    return np.bincount(idx[keep], weights=waves[keep], minlength=total)


def _bursts(rng: np.random.Generator, times_s: np.ndarray, amps: np.ndarray, freq_hz: np.ndarray,
            dur_s: np.ndarray, fs: int, total: int, rise: float = 1 / 3) -> np.ndarray:
    """Damped tone bursts (heart sounds, crackles): gamma-shaped envelope peaking at ``rise`` of the duration,
    times a sinusoid with random phase; each row its own time, amplitude, frequency and duration."""
    if len(times_s) == 0:
        return np.zeros(total)
    # float32 for the element-wise transcendentals: several times faster, and ample for audio.
    t = (np.arange(int(np.ceil(dur_s.max() * fs)) + 1) / fs).astype(np.float32)[None, :]
    dur = dur_s.astype(np.float32)[:, None]
    x = t / ((rise / 2) * dur)  # (t/tau)^2 exp(-t/tau) peaks at t = 2 tau
    env = np.where(t <= dur, x**2 * np.exp(2.0 - x) / 4.0, 0.0)
    phase = rng.uniform(0, 2 * np.pi, (len(times_s), 1)).astype(np.float32)
    waves = amps.astype(np.float32)[:, None] * env * np.sin(2 * np.pi * freq_hz.astype(np.float32)[:, None] * t + phase)
    return _overlay(np.round(times_s * fs).astype(int), waves, total)


def _cycle_phase(onsets_s: np.ndarray, total: int, fs: int) -> tuple[np.ndarray, np.ndarray]:
    """For every sample: the index of the cycle (beat or breath) it falls in and the time since that cycle's
    onset (s, float32). ``onsets_s`` increases, starts at or before 0 and ends before ``total / fs``."""
    starts = np.clip(np.ceil(onsets_s * fs).astype(int), 0, total)
    k = np.repeat(np.arange(len(onsets_s)), np.diff(np.append(starts, total)))
    return k, np.arange(total, dtype=np.float32) / np.float32(fs) - onsets_s.astype(np.float32)[k]


def _window(local_s: np.ndarray, start_s: np.ndarray | float, end_s: np.ndarray | float) -> np.ndarray:
    """Position u in [0, 1) (float32) of each sample inside its cycle's [start, end) window; NaN outside."""
    start, end = np.asarray(start_s, dtype=np.float32), np.asarray(end_s, dtype=np.float32)
    u = (local_s - start) / np.maximum(end - start, np.float32(1e-3))
    return np.where((u >= 0) & (u < 1), u, np.float32(np.nan))


def _cycle_onsets(rng: np.random.Generator, period_s: float, jitter: float, span_s: float) -> np.ndarray:
    """Onsets (s) of cycles with mean ``period_s`` and relative jitter, the first at or before 0, up to span_s."""
    count = int(np.ceil(span_s / period_s * 1.3)) + 3
    periods = period_s * np.clip(1 + rng.normal(0, jitter, count), 0.7, 1.3)
    onsets = -rng.uniform(0, period_s) + np.concatenate([[0.0], np.cumsum(periods[:-1])])
    return onsets[onsets < span_s]


def _inside(times_s: np.ndarray, pad: int, n: int, fs: int) -> np.ndarray:
    return (times_s >= pad / fs) & (times_s < (pad + n) / fs)


# ----------------------------------------------------------------------------------------------------------
# Heart


def _heart(rng: np.random.Generator, label: str, n: int, pad: int, fs: int,
           age_group: str) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(S1 + S2 signal, abnormal additions, metadata fields) on the padded timeline of ``n + 2 pad`` samples."""
    total = n + 2 * pad
    bpm = rng.uniform(*_HEART_RATE_BPM[age_group])
    rr_mean = 60.0 / bpm
    count = int(np.ceil(total / fs / rr_mean * 1.2)) + 2
    # Beat-to-beat variability: a few % white jitter plus respiratory sinus arrhythmia (slow modulation).
    beat_times = np.arange(count) * rr_mean
    rsa = rng.uniform(0.0, 0.05) * np.sin(2 * np.pi * rng.uniform(0.2, 0.35) * beat_times + rng.uniform(0, 6.3))
    rr = rr_mean * (1 + rng.normal(0, rng.uniform(0.01, 0.04), count) + rsa)
    onsets = -rng.uniform(0, rr_mean) + np.concatenate([[0.0], np.cumsum(rr[:-1])])
    keep = onsets < total / fs
    onsets, rr = onsets[keep], rr[keep]
    systole = 0.30 * np.sqrt(rr / 0.8)  # S1 onset -> S2 onset, shortening at higher rates
    beats = len(onsets)

    def per_beat(spread: float) -> np.ndarray:
        return 1 + rng.normal(0, spread, beats)

    # S1: mitral then tricuspid component 15-30 ms apart, ~100 ms, centred 30-60 Hz.
    f1, d1 = rng.uniform(30, 60), rng.uniform(0.08, 0.12)
    s1 = _bursts(rng, onsets, per_beat(0.08), np.full(beats, f1), np.full(beats, d1), fs, total)
    t1 = onsets + rng.uniform(0.015, 0.03)
    s1 += _bursts(rng, t1, 0.6 * per_beat(0.1), np.full(beats, 1.6 * f1), np.full(beats, 0.8 * d1), fs, total)
    # S2: higher pitched and shorter (~80 ms), aortic then pulmonary component (physiological split < 20 ms).
    f2, d2, a2 = rng.uniform(60, 110), rng.uniform(0.06, 0.09), rng.uniform(0.5, 0.9)
    s2_on = onsets + systole
    s2 = _bursts(rng, s2_on, a2 * per_beat(0.08), np.full(beats, f2), np.full(beats, d2), fs, total)

    murmur, shape, extra_sound = "none", "none", "none"
    if label == "abnormal":
        murmur = str(rng.choice(["systolic", "diastolic", "none"], p=[0.55, 0.3, 0.15]))
        if murmur == "none":
            extra_sound = str(rng.choice(["S3", "S4", "split-S2"]))
        elif rng.random() < 0.25:
            extra_sound = str(rng.choice(["S3", "S4", "split-S2"]))

    # P2 belongs to the reference signal (every heart has one); a wide split moves it later and makes it louder.
    wide = extra_sound == "split-S2"
    split = rng.uniform(0.04, 0.07) if wide else rng.uniform(0.0, 0.02)
    p2_amp = (rng.uniform(0.6, 0.9) if wide else 0.5) * a2 * per_beat(0.1)
    s2 += _bursts(rng, s2_on + split, p2_amp, np.full(beats, 1.15 * f2), np.full(beats, 0.9 * d2), fs, total)

    additions = np.zeros(total)
    if extra_sound in ("S3", "S4"):
        # S3: early diastolic filling sound after S2; S4: atrial kick just before the next S1. Both 20-50 Hz.
        at = s2_on + rng.uniform(0.12, 0.18) if extra_sound == "S3" else onsets + rr - rng.uniform(0.08, 0.12)
        f3, d3 = rng.uniform(20, 50), rng.uniform(0.04, 0.07)
        additions += _bursts(rng, at, rng.uniform(0.3, 0.6) * per_beat(0.1), np.full(beats, f3),
                             np.full(beats, d3), fs, total)

    if murmur != "none":
        lo, hi = rng.uniform(100, 180), rng.uniform(320, 500)
        noise = _unit_rms(_bandpass(rng.standard_normal(total), lo, hi, fs))
        k, local = _cycle_phase(onsets, total, fs)
        if murmur == "systolic":  # from the end of S1 to the start of S2
            u = _window(local, 0.05, systole[k] - 0.01)
            shape = str(rng.choice(["crescendo-decrescendo", "plateau"]))
        else:  # from the end of S2 to just before the next S1
            u = _window(local, systole[k] + 0.04, rr[k] - 0.05)
            shape = "decrescendo"
        if shape == "crescendo-decrescendo":
            peak = rng.uniform(0.3, 0.6)
            env = np.minimum(u / peak, (1 - u) / (1 - peak))
        elif shape == "plateau":
            env = np.clip(np.minimum(u, 1 - u) / 0.1, 0, 1)
        else:
            env = (1 - u) ** 1.5 * np.clip(u / 0.05, 0, 1)
        env = np.nan_to_num(env, nan=0.0)
        additions += rng.uniform(0.08, 0.2) * noise * env

    fields = {"heart_rate_bpm": f"{bpm:.1f}", "murmur": murmur, "murmur_shape": shape,
              "extra_sound": extra_sound}
    return s1 + s2, additions, fields


# ----------------------------------------------------------------------------------------------------------
# Lung


def _lung(rng: np.random.Generator, label: str, n: int, pad: int, fs: int,
          age_group: str) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(breath + heart signal, adventitious sounds, metadata fields) on the padded timeline."""
    total = n + 2 * pad
    rate = rng.uniform(*_BREATH_RATE_PER_MIN[age_group])
    onsets = _cycle_onsets(rng, 60.0 / rate, 0.05, total / fs)
    periods = np.diff(np.append(onsets, onsets[-1] + 60.0 / rate))
    insp = rng.uniform(0.33, 0.42) * periods
    exp_end = insp + rng.uniform(0.45, 0.55) * periods
    depth = np.clip(1 + rng.normal(0, 0.1, len(onsets)), 0.6, 1.4)

    k, local = _cycle_phase(onsets, total, fs)
    u_in = _window(local, 0.0, insp[k])
    u_ex = _window(local, insp[k], exp_end[k])
    gain = depth.astype(np.float32)[k]
    env_in = np.nan_to_num(np.sin(np.float32(np.pi) * u_in), nan=0.0) * gain
    env_ex = np.nan_to_num(np.sin(np.float32(np.pi) * u_ex) ** 1.2, nan=0.0) * gain * rng.uniform(0.25, 0.55)
    # Vesicular breath sounds: inspiration broader (up to ~600-900 Hz), expiration softer and lower.
    # One white source serves both phases: they never overlap in time.
    white = rng.standard_normal(total)
    noise_in = _unit_rms(_bandpass(white, rng.uniform(80, 150), rng.uniform(600, 900), fs))
    noise_ex = _unit_rms(_bandpass(white, rng.uniform(60, 120), rng.uniform(250, 450), fs))
    breath = noise_in * env_in + noise_ex * env_ex

    # Faint heart sounds under the chest piece, independent of the label.
    bpm = rng.uniform(*_HEART_RATE_BPM[age_group])
    beats = _cycle_onsets(rng, 60.0 / bpm, 0.03, total / fs)
    heart_level = rng.uniform(0.3, 1.0)
    heart = _bursts(rng, beats, np.full(len(beats), heart_level), np.full(len(beats), rng.uniform(30, 60)),
                    np.full(len(beats), 0.1), fs, total)
    heart += _bursts(rng, beats + 0.3 * np.sqrt(60.0 / bpm / 0.8), np.full(len(beats), 0.7 * heart_level),
                     np.full(len(beats), rng.uniform(60, 110)), np.full(len(beats), 0.08), fs, total)

    crackles, wheeze, wheeze_hz = "none", "none", "none"
    additions = np.zeros(total)
    top = _NYQUIST_MARGIN * fs * 0.9  # keep tones and crackle pitch clear of the anti-alias band edge
    if label == "crackle":
        crackles = str(rng.choice(["fine", "coarse"]))
        fine = crackles == "fine"
        per_breath = rng.integers(6, 21) if fine else rng.integers(4, 13)
        cyc = np.repeat(np.arange(len(onsets)), per_breath)
        # Fine crackles cluster late in inspiration, coarse ones early.
        pos = rng.beta(4, 2, len(cyc)) if fine else rng.beta(2, 4, len(cyc))
        times = onsets[cyc] + pos * insp[cyc]
        times = times[_inside(times, pad, n, fs)]
        if len(times) == 0:
            times = (pad + rng.uniform(0.2, 0.8, per_breath) * n) / fs
        count = len(times)
        dur = rng.uniform(0.005, 0.01, count) if fine else rng.uniform(0.01, 0.02, count)
        freq = rng.uniform(300, 700, count) if fine else rng.uniform(100, 300, count)
        amps = rng.uniform(2.5, 6.0, count) * rng.choice([-1.0, 1.0], count)
        additions += _bursts(rng, times, amps, np.minimum(freq, top), dur, fs, total, rise=0.2)
    elif label == "wheeze":
        wheeze = "monophonic"
        base = rng.uniform(100, min(1000.0, top))
        wheeze_hz = f"{base:.1f}"
        # Mostly expiratory; sometimes also inspiratory.
        exp_on = np.flatnonzero(rng.random(len(onsets)) < rng.uniform(0.6, 1.0))
        ins_on = np.flatnonzero(rng.random(len(onsets)) < 0.3)
        starts = np.concatenate([onsets[exp_on] + insp[exp_on] + rng.uniform(0.05, 0.3, len(exp_on)),
                                 onsets[ins_on] + rng.uniform(0.05, 0.3, len(ins_on))])
        starts = starts[_inside(starts, pad, n, fs)]
        if len(starts) == 0:
            starts = np.array([(pad + rng.uniform(0.2, 0.7) * n) / fs])
        additions += _wheezes(rng, starts, base, top, fs, total)

    fields = {"breath_rate_per_min": f"{rate:.1f}", "heart_rate_bpm": f"{bpm:.1f}", "crackles": crackles,
              "wheeze": wheeze, "wheeze_hz": wheeze_hz}
    return breath + 0.3 * heart, additions, fields


def _wheezes(rng: np.random.Generator, starts_s: np.ndarray, base_hz: float, top_hz: float, fs: int,
             total: int) -> np.ndarray:
    """Gliding tones (100-400 ms, +-2-10 % glide, weak 2nd harmonic) around ``base_hz``, one per start."""
    count = len(starts_s)
    dur = rng.uniform(0.1, 0.4, count)[:, None]
    t = (np.arange(int(0.4 * fs) + 1) / fs)[None, :]
    f0 = base_hz * rng.uniform(0.95, 1.05, (count, 1))
    f1 = f0 * (1 + rng.uniform(0.02, 0.1, (count, 1)) * rng.choice([-1.0, 1.0], (count, 1)))
    phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) * t**2 / dur) + rng.uniform(0, 2 * np.pi, (count, 1))
    u = np.clip(t / dur, 0, 1)
    env = np.where(t < dur, np.sin(np.pi * u) ** 0.6, 0.0) * rng.uniform(1.5, 3.0, (count, 1))
    second = np.where(2 * f0.max() < top_hz, rng.uniform(0.1, 0.35), 0.0)  # only if it stays in band
    waves = env * (np.sin(phase) + second * np.sin(2 * phase))
    return _overlay(np.round(starts_s * fs).astype(int), waves, total)


# ----------------------------------------------------------------------------------------------------------
# Recording chain


def _record(rng: np.random.Generator, reference: np.ndarray, additions: np.ndarray, site: _Site, n: int,
            pad: int, fs: int) -> tuple[np.ndarray, float]:
    """Device response, background noise at the site's SNR, mains hum and a random peak level.

    The SNR is measured against ``reference`` only (the label-independent part), so adding a murmur or
    crackles does not change the noise level and noise carries no label information."""
    lo, hi = site.band_hz
    sos = _band_sos(lo, hi, fs)
    ref = signal.sosfilt(sos, reference)[pad:pad + n]
    add = signal.sosfilt(sos, additions)[pad:pad + n] if additions.any() else 0.0
    ref_power = float(np.mean(ref**2)) + 1e-12

    snr_db = rng.uniform(*site.snr_db)
    white = rng.standard_normal(n + pad)
    lp = np.array([_biquad("low", site.noise_lp_hz, fs)])
    coloured = _unit_rms(signal.sosfilt(lp, white)[pad:]) + 0.3 * _unit_rms(white[pad:])
    noise = _unit_rms(coloured) * np.sqrt(ref_power / 10 ** (snr_db / 10))

    t = np.arange(n, dtype=np.float32) / np.float32(fs)
    hum_amp = site.hum_level * rng.uniform(0.5, 1.5) * np.sqrt(ref_power)
    hum = hum_amp * (np.sin(2 * np.pi * site.hum_hz * t + rng.uniform(0, 6.3))
                     + 0.3 * np.sin(2 * np.pi * 3 * site.hum_hz * t + rng.uniform(0, 6.3)))

    x = ref + add + noise + hum
    x *= rng.uniform(0.3, 0.95) / (np.max(np.abs(x)) + 1e-12)
    return x.astype(np.float32), snr_db
