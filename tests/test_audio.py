import numpy as np
import pytest
import soundfile as sf

from acula_edge.audio import load_audio, prepare_samples, read_audio, resample, to_mono_float
from acula_edge.errors import AudioError


def tone(rate, seconds=1.0, freq=100.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("subtype,fmt", [("PCM_16", "WAV"), ("PCM_24", "WAV"), ("PCM_32", "WAV"), ("FLOAT", "WAV"),
                                         ("DOUBLE", "WAV"), ("PCM_U8", "WAV"), ("PCM_16", "FLAC"), ("VORBIS", "OGG")])
def test_reads_common_pcm_formats(tmp_path, subtype, fmt):
    x = tone(4000)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, 4000, subtype=subtype, format=fmt)
    y, rate = read_audio(path)
    assert rate == 4000 and y.dtype == np.float32 and y.shape == x.shape
    tol = 0.05 if subtype in ("PCM_U8", "VORBIS") else 1e-3
    assert np.abs(y - x).max() < tol


def test_stereo_is_mixed_down_and_resampled(tmp_path):
    x = tone(8000)
    sf.write(tmp_path / "s.wav", np.stack([x, -x * 0 + x], axis=1), 8000)
    y = load_audio(tmp_path / "s.wav", 2000)
    assert y.shape == (2000,)
    np.testing.assert_allclose(y[200:-200], tone(2000)[200:-200], atol=2e-2)


def test_int_buffers_are_scaled():
    x = np.array([0, 16384, -32768], dtype=np.int16)
    np.testing.assert_allclose(to_mono_float(x), [0.0, 0.5, -1.0])
    np.testing.assert_allclose(to_mono_float(np.array([[0, 2**30]], dtype=np.int32)), [0.25])


def test_resample_keeps_a_tone():
    y = resample(tone(16000, freq=150.0), 16000, 2000)
    assert y.shape == (2000,)
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 2000 / 2000 - 150) <= 2


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"RIFF\x00\x00garbage"), "cannot decode"),
    (lambda p: p.write_text("not audio at all " * 50), "cannot decode"),
])
def test_bad_files_raise_audio_errors_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as e:
        load_audio(path, 2000)
    assert str(path) in str(e.value)


def test_truncated_data_is_detected(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(4000, seconds=2.0), 4000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        x, _ = read_audio(path)
    except AudioError as e:
        assert "truncated" in str(e) or "cannot decode" in str(e)
    else:  # libsndfile may report the shorter length from the file size; then the data must be the real half
        assert x.shape[0] < 8000


def test_non_finite_and_short_and_bad_rate_buffers():
    with pytest.raises(AudioError, match="NaN or Inf"):
        prepare_samples(np.array([0.0, np.nan, 1.0], np.float32), 2000, 2000)
    with pytest.raises(AudioError, match="zero length"):
        prepare_samples(np.zeros(0, np.float32), 2000, 2000)
    with pytest.raises(AudioError, match="too short: .* accept zero-padding with pad=True"):
        prepare_samples(np.zeros(10, np.float32), 2000, 2000, min_samples=100)
    assert prepare_samples(np.ones(10, np.float32), 2000, 2000, min_samples=100, pad=True).shape == (100,)
    with pytest.raises(AudioError, match="sample rate 100"):
        prepare_samples(np.zeros(10, np.float32), 100, 2000)
    with pytest.raises(AudioError, match="expected samples shaped"):
        prepare_samples(np.zeros((2, 2, 2), np.float32), 2000, 2000)
