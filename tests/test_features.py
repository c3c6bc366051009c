import numpy as np
import pytest
import soundfile as sf

from acula_edge.audio import load_audio
from acula_edge.features import LogMel, LogMelStream, normalise_window
from acula_edge.frontend import FrontendConfig, preset

CONFIGS = {
    "heart": preset("heart")[0],
    "acula": preset("acula")[0],
    "magnitude-hamming": FrontendConfig(power=1.0, window="hamming", win_length=150, log_offset=1e-3,
                                        norm_mean=-5.0, norm_std=2.0),
}


def synthetic_audio(rate: int, seconds: float = 5.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    chirp = np.sin(2 * np.pi * (30 + 0.2 * rate * t / seconds) * t)
    return (0.3 * chirp + 0.05 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * 60 * t)).astype(np.float32)


def test_logmel_of_a_tone_peaks_in_the_band_containing_it():
    fe = preset("heart")[0]
    t = np.arange(fe.sample_rate * 2) / fe.sample_rate
    out = LogMel(fe)(np.sin(2 * np.pi * 200.0 * t).astype(np.float32))
    from acula_edge.frontend import hz_to_mel, mel_to_hz

    centres = mel_to_hz(np.linspace(hz_to_mel(fe.fmin), hz_to_mel(fe.fmax), fe.n_mels + 2))[1:-1]
    assert abs(centres[out.mean(axis=0).argmax()] - 200.0) < 30.0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_twin_matches_numpy(name):
    torch = pytest.importorskip("torch")
    from acula_edge.torch_frontend import TorchLogMel

    fe = CONFIGS[name]
    x = synthetic_audio(fe.sample_rate)
    ref = LogMel(fe)(x)
    got = TorchLogMel(fe)(torch.from_numpy(x))[0].numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.shared_data
def test_torch_twin_matches_numpy_on_real_recordings(physionet_dir):
    torch = pytest.importorskip("torch")
    from acula_edge.torch_frontend import TorchLogMel

    for rel in ("training-a/a0001.flac", "training-b/b0002.flac", "training-f/f0003.flac"):
        for fe in (CONFIGS["heart"], CONFIGS["acula"]):
            x = load_audio(physionet_dir / rel, fe.sample_rate)
            diff = np.abs(TorchLogMel(fe)(torch.from_numpy(x))[0].numpy() - LogMel(fe)(x)).max()
            assert diff <= 1e-4, (rel, diff)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_streaming_equals_offline_for_any_chunking(name):
    fe = CONFIGS[name]
    x = synthetic_audio(fe.sample_rate, seconds=3.0, seed=1)
    ref = LogMel(fe)(x)
    rng = np.random.default_rng(2)
    for sizes in ([1] * 3000, None, [len(x)], [3 * fe.win_length + 7] * 100):
        stream, out, i = LogMelStream(fe), [], 0
        while i < len(x):
            k = sizes.pop(0) if sizes else int(rng.integers(1, 2 * fe.win_length))
            out.append(stream.push(x[i:i + k]))
            i += k
        got = np.concatenate(out)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5)
        assert stream.frames_emitted == ref.shape[0]


def test_stream_reset_starts_a_new_recording():
    fe = CONFIGS["heart"]
    x = synthetic_audio(fe.sample_rate, seconds=1.0)
    s = LogMelStream(fe)
    first = s.push(x)
    s.push(x[:123])
    s.reset()
    np.testing.assert_allclose(s.push(x), first, atol=1e-6)


def test_short_input_gives_zero_frames():
    fe = CONFIGS["heart"]
    assert LogMel(fe)(np.zeros(fe.win_length - 1, np.float32)).shape == (0, fe.n_mels)
    assert LogMelStream(fe).push(np.zeros(5, np.float32)).shape == (0, fe.n_mels)


def test_per_window_normalisation_gives_zero_mean_unit_std():
    fe = FrontendConfig(normalisation="per_window")
    w = np.random.default_rng(0).normal(3.0, 5.0, size=(2, 10, fe.n_mels)).astype(np.float32)
    out = normalise_window(w, fe)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-4)
    assert normalise_window(w, FrontendConfig()) is w


def test_per_window_band_normalisation_removes_a_fixed_channel_response():
    """A stethoscope's fixed response adds a constant per mel band to log-mel: per-band normalisation cancels it."""
    fe = FrontendConfig(normalisation="per_window_band")
    rng = np.random.default_rng(1)
    w = rng.normal(0.0, 2.0, size=(3, 20, fe.n_mels)).astype(np.float32)
    response = rng.normal(0.0, 4.0, size=(1, 1, fe.n_mels)).astype(np.float32)
    out = normalise_window(w, fe)
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-5)  # every band, every window
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-4)
    np.testing.assert_allclose(normalise_window(w + response, fe), out, atol=1e-5)
    # plain per-window normalisation keeps the response's shape
    per_window = FrontendConfig(normalisation="per_window")
    assert np.abs(normalise_window(w + response, per_window) - normalise_window(w, per_window)).max() > 0.1


@pytest.mark.parametrize("mode", ["per_window", "per_window_band"])
def test_window_normalisation_torch_twin_matches_numpy(mode):
    import torch

    from acula_edge.torch_frontend import normalise_window as torch_normalise_window

    fe = FrontendConfig(normalisation=mode)
    w = np.random.default_rng(2).normal(-3.0, 2.0, size=(2, 1, 15, fe.n_mels)).astype(np.float32)
    np.testing.assert_allclose(torch_normalise_window(torch.from_numpy(w), fe).numpy(), normalise_window(w, fe),
                               atol=1e-5)


def test_file_round_trip_through_soundfile(tmp_path):
    fe = CONFIGS["heart"]
    x = synthetic_audio(4000, seconds=2.0)
    sf.write(tmp_path / "a.wav", x, 4000, subtype="PCM_16")
    y = load_audio(tmp_path / "a.wav", fe.sample_rate)
    assert y.shape == (4000,)
    assert LogMel(fe)(y).shape == (fe.num_frames(4000), fe.n_mels)
