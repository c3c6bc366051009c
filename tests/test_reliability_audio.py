"""Reliability: every kind of bad or unusual audio file through the device path (``EdgeModel.classify_file``, the
``acula-edge classify/stream`` CLI). Bad input raises :class:`~acula_edge.errors.AudioError` naming the file (the
CLI: one ``error:`` line, exit 2, no traceback); unusual but valid input (any PCM width, any channel count, 384 kHz,
a FLAC named .wav, silence, clipping, DC offset) is classified, with quality flags where the signal is unusable.

Complements tests/test_audio.py (``load_audio`` on common formats) and tests/test_runtime_model.py.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402
from acula_edge.audio import read_audio  # noqa: E402
from acula_edge.errors import AudioError  # noqa: E402
from acula_edge.runtime import model as model_mod  # noqa: E402

RATE = 2000  # the "heart" preset of the test bundles


@pytest.fixture(scope="module")
def model():
    return acula_edge.load(rf.bundle_or_skip("onnx-fp32"), num_threads=1)


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    return rf.heart_like(6.0, RATE, seed=3)  # 3 windows of 4 s every 1 s


def _wav_bytes(tmp_path: Path, x: np.ndarray) -> bytes:
    sf.write(tmp_path / "_src.wav", x, RATE, subtype="PCM_16")
    return (tmp_path / "_src.wav").read_bytes()


def _flac_bytes(tmp_path: Path, x: np.ndarray) -> bytes:
    sf.write(tmp_path / "_src.flac", x, RATE, subtype="PCM_16")
    return (tmp_path / "_src.flac").read_bytes()


def _with(x: np.ndarray, index: int, value: float) -> np.ndarray:
    y = x.astype(np.float64)
    y[index] = value
    return y


# name -> (file name, writer(tmp_path, path, signal), message fragment)
BAD_FILES = {
    "missing": ("gone.wav", lambda d, p, x: None, "no such file"),
    "folder": ("dir.wav", lambda d, p, x: p.mkdir(), "is a folder"),
    "empty": ("empty.wav", lambda d, p, x: p.write_bytes(b""), r"empty \(0 bytes\)"),
    "truncated header": ("hdr.wav", lambda d, p, x: p.write_bytes(_wav_bytes(d, x)[:20]), "cannot decode"),
    "header without data": ("nodata.wav", lambda d, p, x: p.write_bytes(_wav_bytes(d, x)[:44]),
                            "truncated: the WAV header promises 24000 bytes of audio but the file holds 0"),
    "truncated FLAC": ("cut.flac", lambda d, p, x: p.write_bytes(_flac_bytes(d, x)[:len(_flac_bytes(d, x)) // 2]),
                       "cannot decode"),
    "unknown WAV codec tag": ("mp3tag.wav", lambda d, p, x: p.write_bytes(
        _wav_bytes(d, x)[:20] + (0x55).to_bytes(2, "little") + _wav_bytes(d, x)[22:]), "cannot decode"),
    "random bytes": ("noise.wav", lambda d, p, x: p.write_bytes(np.random.default_rng(0).bytes(5000)),
                     "cannot decode"),
    "text": ("notes.wav", lambda d, p, x: p.write_text("not audio " * 100), "cannot decode"),
    "headerless RAW PCM_S8": ("pcm.raw", lambda d, p, x: sf.write(p, x, RATE, subtype="PCM_S8", format="RAW"),
                              "cannot decode"),
    "100 Hz": ("slow.wav", lambda d, p, x: sf.write(p, np.zeros(600, np.float32), 100), "sample rate 100 Hz"),
    "NaN (float WAV)": ("nan.wav", lambda d, p, x: sf.write(p, _with(x, 5000, np.nan), RATE, subtype="FLOAT"),
                        "sample 5000 is NaN or Inf"),
    "Inf (double WAV)": ("inf.wav", lambda d, p, x: sf.write(p, _with(x, 7001, -np.inf), RATE, subtype="DOUBLE"),
                         "sample 7001 is NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_audio_error_naming_the_file(model, signal, tmp_path, case):
    name, write, message = BAD_FILES[case]
    path = tmp_path / name
    write(tmp_path, path, signal)
    with pytest.raises(AudioError, match=message) as e:
        model.classify_file(path)
    assert str(path) in str(e.value)


def test_truncated_wav_data_is_an_error_not_a_shorter_recording(model, signal, tmp_path):
    """libsndfile sizes a cut WAV from the file and would read the surviving prefix; the header check refuses it."""
    path = tmp_path / "cut.wav"
    data = _wav_bytes(tmp_path, signal)
    path.write_bytes(data[:44 + 2 * 9000 + 1])  # 9000 whole samples and one odd byte
    with pytest.raises(AudioError, match="truncated: the WAV header promises 24000 bytes of audio but the file "
                                         "holds 18001"):
        model.classify_file(path)
    with pytest.raises(AudioError, match="truncated"):
        read_audio(path)


def test_flac_named_wav_is_read_by_content(model, signal, tmp_path):
    (tmp_path / "really_flac.wav").write_bytes(_flac_bytes(tmp_path, signal))
    as_wav = model.classify_file(tmp_path / "really_flac.wav")
    as_flac = model.classify_file(tmp_path / "_src.flac")
    assert as_wav.n_windows == 3
    np.testing.assert_array_equal(as_wav.probabilities, as_flac.probabilities)


@pytest.mark.parametrize("subtype,fmt,atol", [
    ("PCM_S8", "AIFF", 0.05), ("PCM_U8", "WAV", 0.05), ("PCM_16", "WAV", 2e-3), ("PCM_24", "WAV", 1e-4),
    ("PCM_32", "WAV", 1e-4), ("FLOAT", "WAV", 1e-5), ("DOUBLE", "WAV", 1e-5), ("PCM_24", "FLAC", 1e-4)])
def test_every_pcm_width_classifies_like_the_float_signal(model, signal, tmp_path, subtype, fmt, atol):
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, signal, RATE, subtype=subtype, format=fmt)
    result = model.classify_file(path)
    reference = model.classify(signal, RATE)
    assert result.n_windows == 3 and result.n_excluded == 0
    np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=atol)


def test_multichannel_is_mixed_down(model, signal, tmp_path):
    rng = np.random.default_rng(1)
    channels = np.stack([signal + 0.01 * rng.standard_normal(signal.shape[0]) for _ in range(6)], axis=1)
    sf.write(tmp_path / "six.wav", channels, RATE, subtype="FLOAT")
    result = model.classify_file(tmp_path / "six.wav")
    reference = model.classify(channels.astype(np.float32).mean(axis=1), RATE)
    np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=1e-5)


def test_384_khz_is_resampled_on_the_fly(model, tmp_path):
    x = rf.heart_like(5.0, 384_000, seed=4)
    sf.write(tmp_path / "fast.wav", x, 384_000, subtype="PCM_24")
    streamed = model.classify_file(tmp_path / "fast.wav")
    offline = model.classify(sf.read(tmp_path / "fast.wav", dtype="float32")[0], 384_000)  # resample_poly
    assert streamed.n_windows == offline.n_windows == 2 and streamed.duration_s == pytest.approx(5.0)
    np.testing.assert_allclose(streamed.probabilities, offline.probabilities, atol=1e-5)


@pytest.mark.parametrize("make,flag", [
    (lambda x: np.zeros_like(x), "silence"),
    (lambda x: np.clip(x * 30.0, -1.0, 1.0), "clipping"),
    (lambda x: 0.5 * x + 0.5, "dc_offset"),
    (lambda x: x * 1e30, "too_loud"),  # finite float WAV far beyond full scale: the front-end stays finite
])
def test_unusable_signals_classify_with_quality_flags_and_no_decision(model, signal, tmp_path, make, flag):
    sf.write(tmp_path / "q.wav", make(signal), RATE, subtype="FLOAT")
    result = model.classify_file(tmp_path / "q.wav")
    assert result.n_windows == 3 and result.n_excluded == 3
    assert all(flag in w.quality.flags for w in result.windows)
    assert result.decision is None and np.isfinite(result.probabilities).all()


def test_long_file_is_streamed_from_disk_in_bounded_memory(model, tmp_path, monkeypatch):
    """30 min at 2 kHz: 14.4 MB as float32; classify_file reads it in blocks and its traced peak (about 2 MB, a
    constant: front-end, quality FFT and one block) stays a small fraction of that."""
    seconds = 30 * 60
    beat = rf.heart_like(60.0, RATE, seed=6)
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as f:
        for _ in range(seconds // 60):
            f.write(beat)
    float32_bytes = seconds * RATE * 4
    block = 1 << 15  # 16 s per read
    monkeypatch.setattr(model_mod, "FILE_BLOCK_SAMPLES", block)
    reads = []
    real_blocks = model_mod.file_blocks

    def counting_blocks(p, n):
        for b in real_blocks(p, n):
            reads.append(b.shape[0])
            yield b

    monkeypatch.setattr(model_mod, "file_blocks", counting_blocks)
    tracemalloc.start()
    try:
        result = model.classify_file(path, keep_windows=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.n_windows == (seconds - 4) // 1 + 1 and result.windows == ()
    assert max(reads) == block and sum(reads) == seconds * RATE
    assert peak < float32_bytes / 5, f"peak {peak / 1e6:.1f} MB for a {float32_bytes / 1e6:.1f} MB recording"


# -- the CLI: one line, exit 2, no traceback ------------------------------------------------------------------------


def run_cli(*args: str, pre: str = "") -> subprocess.CompletedProcess:
    code = f"{pre}from acula_edge.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("INFO: ")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_bad_audio_exits_2_with_one_line(signal, tmp_path):
    bundle = str(rf.bundle_or_skip("onnx-fp32"))
    sf.write(tmp_path / "slow.wav", np.zeros(600, np.float32), 100)
    proc = run_cli("classify", bundle, str(tmp_path / "slow.wav"))
    assert_one_line_error(proc, str(tmp_path / "slow.wav"), "sample rate 100 Hz is outside")
    assert proc.stdout == ""
    sf.write(tmp_path / "nan.wav", _with(signal, 5000, np.nan), RATE, subtype="FLOAT")
    proc = run_cli("stream", bundle, str(tmp_path / "nan.wav"), "--chunk-ms", "500")
    assert_one_line_error(proc, "nan.wav", "sample 5000 is NaN or Inf")


def test_offline_classify_of_a_long_buffer_has_bounded_memory(model):
    """10 min in memory (4.8 MB float32): the front-end works in frame batches (185 MB traced before, at once)."""
    x = np.tile(rf.heart_like(60.0, RATE, seed=7), 10)
    tracemalloc.start()
    try:
        result = model.classify(x, RATE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.n_windows == 597
    assert peak < 32e6, f"peak {peak / 1e6:.0f} MB for {x.nbytes / 1e6:.1f} MB of audio"


# -- audio truth: what the header promises, recordings too short, buffer shapes, rates, pipes ----------------------

def test_a_header_promising_2_to_the_31_frames_over_100_bytes_is_an_error(model, signal, tmp_path):
    import struct

    data = bytearray(_wav_bytes(tmp_path, signal)[:44 + 100])
    data[40:44] = struct.pack("<I", 2 ** 31)  # the data chunk's size: 2^31 bytes
    path = tmp_path / "liar.wav"
    path.write_bytes(bytes(data))
    with pytest.raises(AudioError, match="truncated: the WAV header promises 2147483648 bytes of audio but the file "
                                         "holds 100"):
        model.classify_file(path)
    assert_one_line_error(run_cli("classify", str(rf.bundle_or_skip("onnx-fp32")), str(path)), "truncated")


@pytest.mark.parametrize("seconds", [0.2, 3.0])
def test_a_recording_shorter_than_one_window_is_refused_unless_padding_is_asked_for(model, signal, tmp_path,
                                                                                    seconds):
    n = int(seconds * RATE)
    path = tmp_path / "short.wav"
    sf.write(path, signal[:n], RATE, subtype="FLOAT")
    for call in (lambda: model.classify(signal[:n], RATE), lambda: model.classify_file(path)):
        with pytest.raises(AudioError, match=f"too short: the recording has {n} samples .*window needs 8000"):
            call()
    padded = model.classify_file(path, pad=True)
    assert padded.n_windows == 1
    np.testing.assert_allclose(padded.probabilities, model.classify(signal[:n], RATE, pad=True).probabilities,
                               atol=1e-5)
    bundle = str(rf.bundle_or_skip("onnx-fp32"))
    for cmd in ("classify", "stream"):
        assert_one_line_error(run_cli(cmd, bundle, str(path)), "too short", "--pad")
        proc = run_cli(cmd, bundle, str(path), "--pad")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_pushes_must_be_samples_by_channels_at_a_whole_positive_rate(model, signal):
    session = model.stream()
    with pytest.raises(AudioError, match=r"shaped \(2, 12000\) would be 12000 channels of 2 sample\(s\); .* x.T"):
        session.push(np.stack([signal, signal]), RATE)
    session.push(np.stack([signal, signal], axis=1)[:100], RATE)  # (samples, channels) is fine
    for bad in ("2000", None, 0, -2000, 2000.5, float("nan"), True):
        with pytest.raises(AudioError, match=f"sample rate {bad!r} Hz is outside the supported"):
            model.stream().push(signal[:100], bad)
    assert model.stream().push(signal[:100], np.int64(2000)) == []


def test_stdin_rate_zero_huge_chunks_and_fifos_are_refused(tmp_path, signal):
    bundle = str(rf.bundle_or_skip("onnx-fp32"))
    pcm = (signal * 32767).astype("<i2").tobytes()
    proc = subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", "stream", bundle, "-",
                           "--sample-rate", "0"], input=pcm, capture_output=True, timeout=120)
    assert proc.returncode == 2 and b"sample rate 0 Hz is outside the supported" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", "stream", bundle, "-",
                           "--chunk-ms", "100000000", "--sample-rate", "768000"], input=pcm, capture_output=True,
                          timeout=120)
    assert proc.returncode == 2 and b"100000000 is not in the range 1<=x<=10000" in proc.stderr, proc.stderr
    import os

    fifo = tmp_path / "live.wav"
    os.mkfifo(fifo)
    assert_one_line_error(run_cli("classify", bundle, str(fifo)), "is a FIFO (named pipe)", "stream BUNDLE -")
