"""Streaming equals offline for any chunking, on every installed backend; session lifecycle; concurrency."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402
from acula_edge.errors import AudioError, ConfigError  # noqa: E402
from acula_edge.runtime.results import RecordingUpdate, WindowEvent  # noqa: E402

PHYSIONET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "physionet2016"
# Tolerance on probabilities, streaming vs offline: frames may differ in the last float bit (BLAS batch sizes).
ATOL = {"fp32": 1e-5, "int8": 1e-5}


@pytest.fixture(scope="module", params=rf.KINDS)
def model(request):
    return acula_edge.load(rf.bundle_or_skip(request.param))


def chunkings(n: int, window: int, seed: int) -> list[list[int]]:
    """Chunk-size lists covering n samples: 1-sample chunks then random, random up to > window, one chunk."""
    rng = np.random.default_rng(seed)
    out = []
    sizes = [1] * min(n, 2500)  # more than one hop of single samples
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 3 * window)))
    out.append(sizes)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.choice([1, 7, 333, window - 1, window + 1, 2 * window + 5])))
    out.append(sizes)
    out.append([n])
    return out


def stream_all(model, x: np.ndarray, rate: int, sizes: list[int], **kw):
    session = model.stream(**kw)
    events, i = [], 0
    for size in sizes:
        events += session.push(x[i:i + size], rate)
        i += size
    return events, session.finish()


def assert_same(offline, streamed, atol: float) -> None:
    assert streamed.n_windows == offline.n_windows
    assert streamed.n_excluded == offline.n_excluded
    assert streamed.decision == offline.decision
    assert streamed.duration_s == pytest.approx(offline.duration_s)
    np.testing.assert_allclose(streamed.probabilities, offline.probabilities, atol=atol)
    np.testing.assert_allclose(streamed.embedding, offline.embedding, atol=10 * atol)
    for a, b in zip(offline.windows, streamed.windows):
        assert (a.index, a.start_s, a.end_s, a.quality.flags) == (b.index, b.start_s, b.end_s, b.quality.flags)
        assert b.quality.rms_dbfs == pytest.approx(a.quality.rms_dbfs, abs=1e-6)
        # the stream sums its frames' power per hop block before pooling; offline pools every frame first
        assert b.quality.flatness == pytest.approx(a.quality.flatness, rel=1e-6, nan_ok=True)
        np.testing.assert_allclose(b.probabilities, a.probabilities, atol=atol)


def test_chunk_invariance_synthetic(model):
    rate = model.sample_rate
    x = rf.heart_like(11.3, rate, seed=1, silence=(0.5, 5.5), clip=(7.0, 7.5))
    offline = model.classify(x, rate)
    assert offline.n_windows == 8 and 0 < offline.n_excluded < 8  # the silent stretch is excluded
    atol = ATOL[model.manifest.precision]
    for seed, sizes in enumerate(chunkings(x.shape[0], model.window_samples, seed=3)):
        events, summary = stream_all(model, x, rate, sizes)
        assert_same(offline, summary, atol)
        windows = [e for e in events if isinstance(e, WindowEvent)]
        updates = [e for e in events if isinstance(e, RecordingUpdate)]
        assert [w.index for w in windows] == list(range(offline.n_windows))
        assert isinstance(events[0], WindowEvent) and isinstance(events[1], RecordingUpdate)
        assert updates[-1].n_windows == offline.n_windows
        np.testing.assert_allclose(updates[-1].probabilities, offline.probabilities, atol=atol)


def test_chunk_invariance_ema_and_short_recording(model):
    rate = model.sample_rate
    x = rf.heart_like(9.0, rate, seed=2)
    offline = model.classify(x, rate, aggregation="ema", ema_alpha=0.5)
    _, streamed = stream_all(model, x, rate, [123] * (x.shape[0] // 123 + 1), aggregation="ema", ema_alpha=0.5)
    assert streamed.aggregation == "ema"
    assert_same(offline, streamed, ATOL[model.manifest.precision])
    short = x[: model.window_samples // 3]  # padded to one window, both ways, when asked for
    offline = model.classify(short, rate, pad=True)
    _, streamed = stream_all(model, short, rate, [50] * 60, pad=True)
    assert offline.n_windows == streamed.n_windows == 1
    assert streamed.duration_s == pytest.approx(short.shape[0] / rate)
    assert_same(offline, streamed, ATOL[model.manifest.precision])


@pytest.mark.parametrize("rate", [4000, 44100])
def test_chunk_invariance_at_another_input_rate(model, rate):
    """Input at another rate is resampled on the fly; results equal offline resample-then-classify."""
    x = rf.heart_like(7.7, rate, seed=6, silence=(5.0, 7.7))
    offline = model.classify(x, rate)
    window = model.window_samples * rate // model.sample_rate
    for sizes in chunkings(x.shape[0], window, seed=11)[1 if rate == 4000 else 2:]:
        events, streamed = stream_all(model, x, rate, sizes)
        assert_same(offline, streamed, ATOL[model.manifest.precision])
    assert offline.n_windows == 4 and offline.duration_s == pytest.approx(7.7)


def physionet_records(n: int = 2) -> list[Path]:
    import csv

    with open(PHYSIONET / "labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: float(r["duration_s"]))
    # two short recordings from different subsets (devices)
    picked, subsets = [], set()
    for r in rows:
        if float(r["duration_s"]) >= 8.0 and r["subset"] not in subsets:
            picked.append(PHYSIONET / r["path"])
            subsets.add(r["subset"])
        if len(picked) == n:
            break
    return picked


@pytest.mark.shared_data
def test_chunk_invariance_physionet(model):
    if not (PHYSIONET / "labels.csv").is_file():
        pytest.skip(f"{PHYSIONET} not present")
    from acula_edge.audio import load_audio

    for path in physionet_records():
        x = load_audio(path, model.sample_rate)
        offline = model.classify(x, model.sample_rate)
        assert offline.n_windows == model.count_windows(x.shape[0]) >= 5
        sizes = chunkings(x.shape[0], model.window_samples, seed=7)[1]
        _, streamed = stream_all(model, x, model.sample_rate, sizes)
        assert_same(offline, streamed, ATOL[model.manifest.precision])
        from_disk = model.classify_file(path)  # streams the file from disk in blocks
        assert_same(offline, from_disk, ATOL[model.manifest.precision])


def test_session_lifecycle_and_errors():
    model = acula_edge.load(rf.bundle_or_skip("onnx-fp32"))
    rate = model.sample_rate
    x = rf.heart_like(6.0, rate)
    session = model.stream()
    assert session.push(x[:100], rate) == []  # not a whole window yet
    with pytest.raises(AudioError, match="this session's input is at 2000 Hz, got a chunk at 4000 Hz"):
        session.push(x[:100], 4000)
    bad = x[:10].copy()
    bad[3] = np.nan
    with pytest.raises(AudioError, match="sample 103 is NaN"):
        session.push(bad, rate)
    session.reset()
    first = stream_all(model, x, rate, [x.shape[0]])[1]
    session.push(x, rate)
    again = session.finish()
    np.testing.assert_allclose(again.probabilities, first.probabilities, atol=1e-6)
    with pytest.raises(ConfigError, match="reset"):
        session.push(x[:10], rate)
    session.reset()
    with pytest.raises(AudioError, match="no samples were pushed"):
        session.finish()
    nopad = model.stream(pad=False)
    nopad.push(x[:500], rate)
    with pytest.raises(AudioError, match="one window needs 8000"):
        nopad.finish()
    int16 = (x * 32767).astype(np.int16)  # int PCM is scaled to [-1, 1)
    np.testing.assert_allclose(stream_all(model, int16, rate, [999] * 13)[1].probabilities,
                               model.classify(int16.astype(np.float32) / 32768, rate).probabilities, atol=1e-5)


def test_one_model_many_sessions_in_threads():
    model = acula_edge.load(rf.bundle_or_skip("tflite-int8"))
    rate = model.sample_rate
    signals = [rf.heart_like(7.0 + i, rate, seed=10 + i) for i in range(4)]
    serial = [model.classify(x, rate) for x in signals]
    results: dict[int, object] = {}

    def work(i: int) -> None:
        sizes = chunkings(signals[i].shape[0], model.window_samples, seed=i)[1]
        results[i] = stream_all(model, signals[i], rate, sizes)[1]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert_same(serial[i], results[i], 1e-5)
