"""The seeded synthetic dataset: reproducible, balanced per site, and its labels audible in the signal."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import signal, stats

from acula_edge.errors import DatasetError
from acula_edge.synthetic import KINDS, LABELS, SITES, SyntheticRecording, generate, generate_one

FS = 2000
# One full site x label block is 8 heart or 12 lung recordings; 48 is a whole number of blocks for both.
N = 48


@pytest.fixture(scope="module")
def heart() -> list[SyntheticRecording]:
    return generate("heart", N, seed=0, sample_rate=FS)


@pytest.fixture(scope="module")
def lung() -> list[SyntheticRecording]:
    return generate("lung", N, seed=0, sample_rate=FS)


@pytest.mark.parametrize("kind", KINDS)
def test_same_arguments_give_identical_recordings(kind):
    first = generate(kind, 6, seed=3, duration_s=(2.0, 3.0))
    again = generate(kind, 6, seed=3, duration_s=(2.0, 3.0))
    alone = generate_one(kind, 4, seed=3, duration_s=(2.0, 3.0))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.samples, b.samples)
        assert (a.record_id, a.label, a.metadata) == (b.record_id, b.label, b.metadata)
    np.testing.assert_array_equal(alone.samples, first[4].samples)
    assert (alone.record_id, alone.label, alone.metadata) == (first[4].record_id, first[4].label, first[4].metadata)
    assert alone.record_id == f"{kind}-0004"
    other_seed = generate_one(kind, 4, seed=4, duration_s=(2.0, 3.0))
    assert other_seed.samples.shape != alone.samples.shape or not np.array_equal(other_seed.samples, alone.samples)
    assert generate(kind, 0) == []


def test_labels_are_balanced_within_every_site(heart, lung):
    for kind, recs in (("heart", heart), ("lung", lung)):
        counts = Counter((r.metadata["subset"], r.label) for r in recs)
        per_cell = N // (len(SITES) * len(LABELS[kind]))
        assert counts == {(s, lab): per_cell for s in SITES for lab in LABELS[kind]}, kind
        for r in recs:
            assert r.metadata["site"] == f"site-{r.metadata['subset']}"
        # One device per site, and a different device at each site.
        site_devices = {(r.metadata["subset"], r.metadata["device"]) for r in recs}
        assert len(site_devices) == len({d for _, d in site_devices}) == len(SITES)


def test_samples_are_finite_float32_with_a_label_independent_peak(heart, lung):
    for recs in (heart, lung):
        for r in recs:
            assert r.samples.dtype == np.float32 and r.samples.ndim == 1 and r.sample_rate == FS
            assert np.isfinite(r.samples).all()
            assert 0.3 - 1e-6 <= np.abs(r.samples).max() <= 0.95 + 1e-6
        labels = {r.label for r in recs}
        peaks = {lab: np.median([np.abs(r.samples).max() for r in recs if r.label == lab]) for lab in labels}
        assert max(peaks.values()) - min(peaks.values()) < 0.15, peaks


def test_metadata_values_are_all_strings(heart, lung):
    for r in heart + lung:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in r.metadata.items()), r.metadata
        for key in ("heart_rate_bpm", "site", "subset", "device", "snr_db", "age_group", "sex", "duration_s"):
            assert key in r.metadata, key
    assert {r.metadata["murmur"] for r in heart if r.label == "normal"} == {"none"}
    assert {r.metadata["extra_sound"] for r in heart if r.label == "normal"} == {"none"}
    # Every abnormal heart has something: a murmur, an extra sound, or both.
    abnormal = [r.metadata for r in heart if r.label == "abnormal"]
    assert all(m["murmur"] != "none" or m["extra_sound"] != "none" for m in abnormal)
    assert all(r.metadata["crackles"] != "none" for r in lung if r.label == "crackle")
    assert all(r.metadata["wheeze"] != "none" for r in lung if r.label == "wheeze")


@pytest.mark.parametrize(("kind", "rate"), [("heart", 3000), ("lung", 4000)])
def test_duration_range_and_sample_rate_are_honoured(kind, rate):
    recs = generate(kind, 12, seed=1, sample_rate=rate, duration_s=(2.0, 3.5))
    for r in recs:
        assert r.sample_rate == rate
        assert 2.0 - 1 / rate <= len(r.samples) / rate <= 3.5 + 1 / rate
        assert float(r.metadata["duration_s"]) == pytest.approx(len(r.samples) / rate, abs=1e-3)
    assert len({len(r.samples) for r in recs}) > 1  # durations are drawn, not fixed


def _band_fraction(x: np.ndarray, lo_hz: float, hi_hz: float) -> float:
    f, p = signal.welch(x, FS, nperseg=256)
    return float(p[(f >= lo_hz) & (f <= hi_hz)].sum() / p[(f >= 20) & (f <= 900)].sum())


def test_murmurs_add_energy_in_their_band_at_every_site(heart):
    for site in SITES:
        normal = [_band_fraction(r.samples, 150, 400) for r in heart
                  if r.metadata["subset"] == site and r.label == "normal"]
        murmur = [_band_fraction(r.samples, 150, 400) for r in heart
                  if r.metadata["subset"] == site and r.metadata["murmur"] != "none"]
        assert murmur, site
        assert np.mean(murmur) > 2 * np.mean(normal), (site, np.mean(murmur), np.mean(normal))


def test_heart_rate_in_the_signal_matches_the_metadata(heart):
    """The S1/S2 envelope repeats at the RR interval: its autocorrelation peaks at 60 / heart_rate_bpm."""
    env_rate = FS // 20
    low = signal.butter(2, [20, 150], btype="bandpass", fs=FS, output="sos")
    smooth = signal.butter(2, 10, fs=FS, output="sos")
    for r in heart[:16]:
        env = signal.sosfiltfilt(smooth, np.abs(signal.sosfiltfilt(low, r.samples)))[::20]
        env = env - env.mean()
        ac = np.correlate(env, env, "full")[len(env) - 1:]
        lo, hi = int(0.45 * env_rate), int(1.15 * env_rate)  # 130..52 bpm
        bpm = 60 / ((lo + np.argmax(ac[lo:hi])) / env_rate)
        assert bpm == pytest.approx(float(r.metadata["heart_rate_bpm"]), rel=0.05), r.record_id


def _tonality(x: np.ndarray, f_hz: float) -> float:
    """Peak power near f_hz over the median power of the surrounding octave band."""
    f, p = signal.welch(x, FS, nperseg=1024)
    near = (f >= 0.85 * f_hz) & (f <= 1.2 * f_hz)
    around = (f >= 0.5 * f_hz) & (f <= min(2 * f_hz, 0.45 * FS))
    return float(p[near].max() / np.median(p[around]))


def test_wheezes_show_a_tonal_peak_at_their_frequency(lung):
    wheezes = [r for r in lung if r.label == "wheeze"]
    normals = [r for r in lung if r.label == "normal"]
    freqs = [float(r.metadata["wheeze_hz"]) for r in wheezes]
    assert all(100 <= f <= 0.45 * FS for f in freqs)
    wheeze_tonality = np.median([_tonality(r.samples, f) for r, f in zip(wheezes, freqs)])
    normal_tonality = np.median([_tonality(r.samples, f) for r, f in zip(normals, freqs)])
    assert wheeze_tonality > 8 and wheeze_tonality > 3 * normal_tonality, (wheeze_tonality, normal_tonality)


def test_crackles_make_the_signal_impulsive(lung):
    high = signal.butter(4, 150, btype="highpass", fs=FS, output="sos")
    kurt = {lab: np.mean([stats.kurtosis(signal.sosfilt(high, r.samples)) for r in lung if r.label == lab])
            for lab in ("normal", "crackle")}
    assert kurt["crackle"] > 1.5 * kurt["normal"], kurt


def test_unknown_kind_raises_dataset_error_naming_the_allowed_kinds():
    with pytest.raises(DatasetError, match=r"'cardiac'.*heart, lung"):
        generate("cardiac", 3)
    with pytest.raises(DatasetError, match="heart, lung"):
        generate_one("bowel", 0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"index": -1}, "index must be a non-negative integer"),
    ({"seed": -5}, "seed must be a non-negative integer"),
    ({"sample_rate": 500}, "sample_rate must be an integer >= 1000 Hz"),
    ({"duration_s": (5.0, 2.0)}, "duration_s must satisfy"),
    ({"duration_s": 5.0}, r"duration_s must be a \(min, max\) pair"),
])
def test_bad_arguments_raise_dataset_error(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        generate_one(**{"kind": "heart", "index": 0, **kwargs})
