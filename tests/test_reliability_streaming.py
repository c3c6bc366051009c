"""Reliability of streaming: property-based (hypothesis) chunk invariance of the front-end and of a session on a
loaded bundle for any chunking, amplitude, PCM type and length >= 0; one model shared by sessions in several
threads; a short soak (benchmarks/soak.py) with flat memory and results equal to offline.

Complements tests/test_features.py and tests/test_runtime_streaming.py (fixed chunkings, every backend).
"""

from __future__ import annotations

import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402
from acula_edge.errors import AculaEdgeError, AudioError  # noqa: E402
from acula_edge.features import LogMel, LogMelStream  # noqa: E402
from acula_edge.frontend import preset  # noqa: E402
from acula_edge.runtime.results import WindowEvent  # noqa: E402

PROPERTY = settings(max_examples=30, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
RATE = 2000

# Amplitudes from silence to far beyond full scale (finite float32 audio of any level must work).
amplitudes = st.one_of(st.just(0.0), st.floats(min_value=-12, max_value=30).map(lambda e: float(10.0 ** e)))
chunk_lists = st.lists(st.integers(min_value=0, max_value=6000), min_size=1, max_size=12)


def chunks_of(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    """(start, end) pieces covering n samples, cycling through ``sizes`` (0 = an empty push)."""
    if not any(sizes):
        return [(0, 0), (0, n)]
    out, i, k = [], 0, 0
    while i < n:
        size = sizes[k % len(sizes)]
        out.append((i, min(n, i + size)))
        i += size
        k += 1
    return out


def signal(n: int, amplitude: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rf.heart_like(n / RATE + 1.0, RATE, seed=seed)[:n] / np.float32(0.2)
    x += 0.1 * rng.standard_normal(n).astype(np.float32)
    return (x.astype(np.float64) * amplitude).astype(np.float32)


@PROPERTY
@given(name=st.sampled_from(["heart", "lung", "acula"]), n=st.integers(0, 20_000), amplitude=amplitudes,
       sizes=chunk_lists, seed=st.integers(0, 2**16))
def test_logmel_stream_equals_offline_for_any_chunking_amplitude_and_length(name, n, amplitude, sizes, seed):
    fe, _ = preset(name)
    x = signal(n, amplitude, seed)
    offline = LogMel(fe)(x)
    stream = LogMelStream(fe)
    parts = [stream.push(x[a:b]) for a, b in chunks_of(n, sizes)]
    got = np.concatenate([np.zeros((0, fe.n_mels), np.float32), *parts])
    assert got.shape == offline.shape == (fe.num_frames(n), fe.n_mels)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, offline, rtol=1e-6, atol=1e-5)


@pytest.fixture(scope="module")
def model():
    return acula_edge.load(rf.bundle_or_skip("onnx-fp32"), num_threads=1)


def as_pcm(x: np.ndarray, kind: str, channels: int) -> np.ndarray:
    """float audio -> the given PCM type (ints saturate, as a real converter would) and channel count."""
    if kind in ("int16", "int32"):
        info = np.iinfo(kind)
        x = np.clip(np.round(x.astype(np.float64) * -float(info.min)), info.min, info.max).astype(kind)
    else:
        x = x.astype(kind)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


@PROPERTY
@given(seconds=st.floats(0.0, 7.5), amplitude=amplitudes, sizes=chunk_lists, seed=st.integers(0, 2**16),
       rate=st.sampled_from([2000, 4000, 8000, 11025]), kind=st.sampled_from(["float32", "float64", "int16", "int32"]),
       channels=st.sampled_from([1, 2]))
def test_session_equals_offline_classify_for_any_finite_input(model, seconds, amplitude, sizes, seed, rate, kind,
                                                              channels):
    n = int(seconds * rate)
    x = as_pcm(signal(n, amplitude, seed), kind, channels)
    try:
        offline = model.classify(x, rate, pad=True)
    except AculaEdgeError as e:  # only a documented error, and the session must give the same one
        assert isinstance(e, AudioError) and n == 0, e
        offline = e
    session = model.stream(pad=True)
    events = []
    try:
        for a, b in chunks_of(n, sizes) or [(0, 0)]:
            events += session.push(x[a:b], rate)
        streamed = session.finish()
        events += session.tail_events
    except AculaEdgeError as e:
        assert type(e) is type(offline), f"session raised {e!r}, offline gave {offline!r}"
        return
    assert not isinstance(offline, Exception), f"offline raised {offline!r}, the session did not"
    windows = [e for e in events if isinstance(e, WindowEvent)]
    assert [w.index for w in windows] == list(range(offline.n_windows)) == [w.index for w in offline.windows]
    assert (streamed.n_windows, streamed.n_excluded, streamed.decision) == \
        (offline.n_windows, offline.n_excluded, offline.decision)
    for got, want in zip(windows, offline.windows):
        assert got.quality.flags == want.quality.flags
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-5)
    np.testing.assert_allclose(streamed.probabilities, offline.probabilities, atol=1e-5)


@PROPERTY
@given(n=st.integers(1, 20_000), where=st.floats(0.0, 1.0), bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       sizes=chunk_lists)
def test_session_rejects_non_finite_samples_wherever_they_are(model, n, where, bad, sizes):
    x = signal(n, 0.5, n)
    k = min(int(where * n), n - 1)
    x[k] = bad
    session = model.stream()
    with pytest.raises(AudioError, match=f"sample {k} is NaN or Inf"):
        for a, b in chunks_of(n, sizes):
            session.push(x[a:b], RATE)
    session.reset()  # the session is still usable after the error
    session.push(signal(9000, 0.5, 1), RATE)
    assert session.finish().n_windows == 1


# -- concurrency -----------------------------------------------------------------------------------------------------


def stream_events(model, x: np.ndarray, chunk: int, barrier: threading.Barrier | None = None):
    session = model.stream()
    if barrier is not None:
        barrier.wait()
    events = []
    for i in range(0, x.shape[0], chunk):
        events += session.push(x[i:i + chunk], RATE)
    summary = session.finish()
    return [(e.index, e.probabilities.tobytes(), e.embedding.tobytes(), e.quality.flags)
            for e in events if isinstance(e, WindowEvent)], summary.probabilities.tobytes()


@pytest.mark.parametrize("kind", ["onnx-fp32", "tflite-fp32"])  # onnxruntime runs concurrently; LiteRT is locked
def test_one_model_in_four_threads_gives_exactly_the_serial_results(kind):
    model = acula_edge.load(rf.bundle_or_skip(kind), num_threads=1)
    recordings = [rf.heart_like(9.0 + i, RATE, seed=40 + i, silence=(2.0, 3.5) if i == 1 else None,
                                clip=(5.0, 5.5) if i == 2 else None) for i in range(4)]
    chunks = [137, 1000, 3001, 59]
    serial = [stream_events(model, x, c) for x, c in zip(recordings, chunks)]
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            results[i] = stream_events(model, recordings[i], chunks[i], barrier)
        except BaseException as e:  # surfaced below: a thread's exception would otherwise be lost
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    for i in range(4):
        assert results[i] == serial[i]  # bit for bit
    assert len({r[1] for r in serial}) == 4  # and the recordings really differ


def test_interleaved_sessions_in_one_thread_do_not_share_state(model):
    recordings = [rf.heart_like(8.0, RATE, seed=s) for s in (1, 2, 3)]
    sessions = [model.stream() for _ in recordings]
    events: list[list] = [[], [], []]
    for i in range(0, recordings[0].shape[0], 500):
        for k, (s, x) in enumerate(zip(sessions, recordings)):
            events[k] += s.push(x[i:i + 500], RATE)
    for s, x in zip(sessions, recordings):
        np.testing.assert_array_equal(s.finish().probabilities, model.classify(x, RATE).probabilities)


# -- soak -----------------------------------------------------------------------------------------------------------


def test_five_minute_soak_keeps_memory_flat_and_equals_offline(model):
    import soak

    tracemalloc.start()
    try:
        result = soak.soak(model, 300.0, chunk_s=1.0, report_every_s=60.0,
                           memory=lambda: tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert [m for m, _ in result.reports] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert abs(result.growth) < 64 * 1024, result.reports  # traced Python/numpy memory after minute 1
    assert result.summary.n_windows == 297 and result.summary.windows == ()
    assert result.summary.n_excluded > 0  # the silent (minute 3) stretch was flagged
    full = soak.check_span(model, result, 0.0, 300.0)
    assert full["windows"] == 297 and full["max_abs_diff"] <= 1e-5
    assert soak.check_summary(model, result) <= 1e-5
