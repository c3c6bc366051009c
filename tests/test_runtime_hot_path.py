"""The per-window and per-hop path: block quality statistics, preallocated quantization, output ownership, the
finiteness check and the ExecuTorch threadpool."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402
from acula_edge.errors import AudioError  # noqa: E402
from acula_edge.frontend import preset  # noqa: E402
from acula_edge.manifest import TensorSpec  # noqa: E402
from acula_edge.runtime import backends  # noqa: E402
from acula_edge.runtime.model import softmax  # noqa: E402
from acula_edge.runtime.quality import BlockQuality, QualityConfig, WindowBandPower, window_quality  # noqa: E402

FE, WIN = preset("heart")
W, H = WIN.window_samples(FE), WIN.hop_samples(FE)


def _recording(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FE.sample_rate)) / FE.sample_rate
    x = 0.2 * np.sin(2 * np.pi * 60 * t) * (1 + np.sin(2 * np.pi * 0.3 * t)) + 0.02 * rng.standard_normal(t.size)
    x[1000:1100] = 1.0  # a clipped burst, so clip fractions differ between windows
    x += 0.01 * (t > seconds / 2)  # and a DC step
    return x.astype(np.float32)


def _frame_bands(x: np.ndarray, meter: BlockQuality) -> np.ndarray | None:
    """Each front-end frame's pooled power, as the model's front-end gives it."""
    from acula_edge.features import LogMel

    return LogMel(FE).with_bands(x, meter.bands)[1] if meter.bands is not None else None


def test_flatness_bands_come_from_the_front_end_spectrum():
    from acula_edge.features import LogMel, SpectrumBands

    bands = SpectrumBands.between(FE, 16)
    hz = FE.sample_rate / FE.n_fft
    assert bands.lo * hz >= FE.fmin and (bands.lo + bands.count * bands.per_band) * hz <= FE.fmax + hz
    x = _recording(5.0)
    frames, pooled = LogMel(FE).with_bands(x, bands)
    assert np.array_equal(frames, LogMel(FE)(x))  # the log-mel frames are the same with or without bands
    # the pooled power is the frames' own power spectrum, summed per band
    frame0 = x[:FE.win_length].astype(np.float64) * LogMel(FE).window
    power = np.abs(np.fft.rfft(frame0, n=FE.n_fft)) ** 2
    lo, k = bands.lo, bands.per_band
    assert np.allclose(pooled[0], [power[lo + b * k:lo + (b + 1) * k].sum() for b in range(16)], rtol=1e-9)
    assert SpectrumBands.between(FE, 1000) is None  # fewer bins than bands: flatness not measured


@pytest.mark.parametrize("per_hop, per_window", [(50, 196), (50, 200), (50, 30), (7, 23), (1, 5)])
@pytest.mark.parametrize("batches", ["hops", "random"])
def test_window_band_power_equals_the_sum_over_the_window_frames(per_hop, per_window, batches):
    """A stream's window band power (per-block sums of the frames' power, then pooled) equals pooling each frame
    and summing the window's frames, for windows longer or shorter than a hop and for frames arriving in any
    batches (first the first window's frames, then a hop's; or random sizes)."""
    rng = np.random.default_rng(per_hop * 1000 + per_window)
    bands = BlockQuality(FE, W, H, QualityConfig()).bands
    power = rng.gamma(0.5, 1.0, size=(40 * per_hop + per_window, FE.n_freqs)) * 10.0 ** rng.uniform(-6, 2)
    pooled = bands.pool(power)
    blocks = WindowBandPower(bands, per_hop, per_window, FE.n_freqs)
    if batches == "hops":
        sizes = [per_window] + [per_hop] * 40
    else:
        sizes = list(rng.integers(1, 3 * per_hop + 2, size=200))
    done = nxt = 0
    for size in sizes:
        size = min(int(size), power.shape[0] - done)
        if size <= 0:
            break
        blocks.add(done, power[done:done + size], nxt)
        done += size
        while nxt * per_hop + per_window <= done:  # every window now complete, as a session scores them
            want = pooled[nxt * per_hop:nxt * per_hop + per_window].sum(axis=0)
            assert np.allclose(blocks.window(nxt), want, rtol=1e-12, atol=0)
            nxt += 1
    assert nxt >= 30


def test_block_quality_level_checks_equal_the_whole_window_ones():
    x = _recording(9.0)
    meter = BlockQuality(FE, W, H, QualityConfig())
    assert (meter.block, meter.blocks_per_window, meter.blocks_per_hop) == (H, W // H, 1)
    n = 1 + (x.shape[0] - W) // H
    blocks = meter.windows(x, n, _frame_bands(x, meter))
    assert len(blocks) == n == 6
    for k, q in enumerate(blocks):
        whole = window_quality(x[k * H:k * H + W], FE, QualityConfig())
        # block sums are float32 dot products (relative rounding ~1e-7): a dB level agrees far below 1e-5 dB
        assert q.rms_dbfs == pytest.approx(whole.rms_dbfs, abs=1e-5)
        assert q.dc_offset == pytest.approx(whole.dc_offset, abs=1e-8)
        assert q.clip_fraction == whole.clip_fraction
        # flatness: the same frames' spectra, from the whole recording's front-end or from the window's own
        assert q.flatness == pytest.approx(whole.flatness, rel=1e-9)
        assert q.flags == whole.flags
    assert blocks[0].clip_fraction == 100 / W and blocks[1].clip_fraction == 0.0


@pytest.mark.parametrize("make, flags", [
    (lambda rng, t: 0.1 * np.sin(2 * np.pi * 60 * t), ()),
    (lambda rng, t: 0.0 * t, ("silence",)),
    (lambda rng, t: 0.05 * rng.standard_normal(t.size), ("noise",)),
    (lambda rng, t: np.clip(3 * np.sin(2 * np.pi * 60 * t), -1, 1), ("clipping", "too_loud")),
    (lambda rng, t: 0.1 * np.sin(2 * np.pi * 60 * t) + 0.5, ("dc_offset",)),
])
def test_block_quality_flags(make, flags):
    t = np.arange(W) / FE.sample_rate
    x = make(np.random.default_rng(0), t).astype(np.float32)
    meter = BlockQuality(FE, W, H, QualityConfig())
    q = meter.windows(x, 1, _frame_bands(x, meter))[0]
    assert q.flags == flags


def test_block_quality_too_few_bins_for_the_bands_reports_no_flatness():
    meter = BlockQuality(FE, W, H, QualityConfig(flatness_bands=500))  # more bands than FFT bins in the band
    assert not meter.flatness_available and meter.bands is None
    x = (0.05 * np.random.default_rng(0).standard_normal(W)).astype(np.float32)
    q = meter.windows(x, 1, None)[0]
    assert np.isnan(q.flatness) and "noise" not in q.flags


def test_streamed_quality_equals_offline_for_any_chunking():
    bundle = rf.bundle_or_skip("onnx-fp32")
    model = acula_edge.load(bundle, num_threads=1)
    x = _recording(9.5, seed=3)
    offline = model.classify(x, FE.sample_rate)
    for chunk in (7, 333, 2000, 5000):
        session = model.stream()
        for i in range(0, x.shape[0], chunk):
            session.push(x[i:i + chunk], FE.sample_rate)
        streamed = session.finish()
        assert len(streamed.windows) == len(offline.windows) == 6
        for a, b in zip(streamed.windows, offline.windows):
            assert a.quality.flags == b.quality.flags
            assert a.quality.rms_dbfs == pytest.approx(b.quality.rms_dbfs, abs=1e-5)
            assert a.quality.flatness == pytest.approx(b.quality.flatness, rel=1e-5)


@pytest.mark.parametrize("hop_s", [1.0, 6.0])
def test_streamed_windows_equal_offline_when_hops_skip_frames(tmp_path, hop_s):
    """With a hop longer than the window, frames between windows are computed but belong to no window; the session
    drops them on arrival. Windows, quality and probabilities still equal offline classify for any chunking."""
    import json

    from acula_edge.runtime import site_shift

    bundle = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "b")
    # with a description of training audio, so the session also keeps the site-shift statistics of every frame
    feats = site_shift.features_of((_recording(6.0, seed=s) for s in range(4)), FE)
    extra = json.loads((bundle / "manifest.json").read_text())["extra"]
    extra[site_shift.DESCRIPTION_KEY] = site_shift.describe(feats).to_dict()
    rf.reseal(bundle, windowing={"window_s": 4.0, "hop_s": hop_s}, extra=extra)
    model = acula_edge.load(bundle, num_threads=1)
    assert model.site is not None
    x = _recording(40.0, seed=4)
    offline = model.classify(x, FE.sample_rate)
    assert len(offline.windows) == 1 + int((40.0 - 4.0) // hop_s)
    for chunk in (333, 7000):
        session = model.stream()
        for i in range(0, x.shape[0], chunk):
            session.push(x[i:i + chunk], FE.sample_rate)
        streamed = session.finish()
        assert len(streamed.windows) == len(offline.windows)
        for a, b in zip(streamed.windows, offline.windows):
            assert a.quality.flags == b.quality.flags
            assert a.quality.flatness == pytest.approx(b.quality.flatness, rel=1e-5)
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        np.testing.assert_allclose(streamed.probabilities, offline.probabilities, atol=1e-5)
        assert streamed.site_shift == offline.site_shift  # every frame counted once, skipped ones included


def test_preallocated_quantizer_equals_quantize():
    spec = TensorSpec("x", (1, 1, 4, 3), "int8", 0.05, -3)
    q = backends._Quantizer(spec)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = (rng.standard_normal(spec.shape) * 8).astype(np.float32)
        x[0, 0, 0, :2] = (-50.0, 50.0)  # beyond the int8 range: saturates
        got = q(x)
        np.testing.assert_array_equal(got, backends.quantize(x, spec))
        assert got.dtype == np.int8 and got.min() == -128 and got.max() == 127


def test_dequantize_returns_a_new_array():
    out = np.arange(4, dtype=np.float32)
    got = backends.dequantize(out, TensorSpec("y", (4,), "float32"))
    out[:] = -1  # a runtime reusing its output buffer must not change what was returned
    np.testing.assert_array_equal(got, [0, 1, 2, 3])
    q = backends.dequantize(np.array([-3, 17], np.int8), TensorSpec("y", (2,), "int8", 0.5, -3))
    np.testing.assert_allclose(q, [0.0, 10.0])
    assert q.dtype == np.float32


@pytest.mark.parametrize("kind, fresh", [("onnx-fp32", False), ("tflite-fp32", True), ("executorch-fp32", True)])
def test_outputs_are_not_changed_by_the_next_call(kind, fresh):
    """Float outputs of runtimes that return new arrays are not copied again; onnxruntime writes into the calling
    thread's bound buffers, so those are copied. Either way the next call must not change what one returned."""
    model = acula_edge.load(rf.bundle_or_skip(kind), num_threads=1)
    assert model.backend.fresh_outputs is fresh
    rng = np.random.default_rng(0)
    first = rng.standard_normal(model.manifest.inputs[0].shape).astype(np.float32)
    emb, logits = model.backend.run(first)
    kept = emb.copy(), logits.copy()
    model.backend.run(rng.standard_normal(first.shape).astype(np.float32))
    np.testing.assert_array_equal(emb, kept[0])
    np.testing.assert_array_equal(logits, kept[1])


@pytest.mark.parametrize("kind", ["onnx-fp32", "tflite-fp32", "executorch-fp32"])
def test_a_read_only_window_runs_quietly_and_alike(kind):
    """Offline windows are read-only views of the recording's frames; a runtime that wraps the input without a copy
    (ExecuTorch) must neither warn about it nor give other outputs than for a writable copy."""
    import warnings

    model = acula_edge.load(rf.bundle_or_skip(kind), num_threads=1)
    window = np.random.default_rng(2).standard_normal(model.manifest.inputs[0].shape[2:]).astype(np.float32)
    frozen = window.copy()
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = model.run_window(frozen)
    for a, b in zip(got, model.run_window(window)):
        np.testing.assert_array_equal(a, b)


def test_softmax_is_float32_and_matches_float64():
    logits = np.array([3.0, -1.5, 80.0], np.float32)
    p = softmax(logits)
    ref = np.exp(logits.astype(np.float64) - 80.0)
    np.testing.assert_allclose(p, ref / ref.sum(), rtol=1e-6)
    assert p.dtype == np.float32 and logits[0] == 3.0  # the input is left alone


def test_a_non_finite_window_is_blamed_on_the_audio():
    model = acula_edge.load(rf.bundle_or_skip("onnx-fp32"), num_threads=1)
    window = np.zeros((model.frames_per_window, model.frontend.n_mels), np.float32)
    window[3, 4] = np.inf
    with pytest.raises(AudioError, match="a log-mel window is not finite: the audio's magnitude is beyond"):
        model.run_window(window)


def test_huge_finite_values_are_not_taken_for_nan_and_stay_quiet():
    """The finiteness checks are float32 dot products, which such values overflow: a finite window or chunk of
    absurd magnitude is still not refused as NaN or Inf (the full check tells them apart), and no overflow warning
    reaches the user."""
    import warnings

    model = acula_edge.load(rf.bundle_or_skip("onnx-fp32"), num_threads=1)
    window = np.zeros((model.frames_per_window, model.frontend.n_mels), np.float32)
    window[0, :2] = (3e38, 3e38)  # finite; their float32 sum would overflow
    session = model.stream()
    loud = np.zeros(model.window_samples, np.float32)
    loud[10:12] = 3e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        model.run_window(window)
        session.push(loud[:100], FE.sample_rate)
    bad = loud.copy()
    bad[150] = np.nan
    with pytest.raises(AudioError, match="sample 150 is NaN or Inf"):
        session.push(bad[100:], FE.sample_rate)


def test_stream_front_end_writes_into_given_buffers():
    """A session's front-end writes new frames into the session's own buffer (no copy); the values equal those it
    returns without a buffer."""
    from acula_edge.features import LogMel, LogMelStream

    x = _recording(3.0, seed=1)
    plain, into = LogMelStream(FE), LogMelStream(FE)
    frames = np.full((200, FE.n_mels), np.nan, np.float32)
    at = 0
    for chunk in (x[:700], x[700:3000], x[3000:]):
        want = plain.push(chunk)
        n = into.frames_for(chunk.shape[0])
        got, _ = into.push_with_power(chunk, frames[at:])
        assert got.shape[0] == n == want.shape[0]
        assert np.shares_memory(got, frames)
        np.testing.assert_array_equal(got, want)
        at += n
    np.testing.assert_array_equal(frames[:at], LogMel(FE)(x)[:at])
    assert np.isnan(frames[at:]).all()  # nothing written beyond the new frames


@pytest.mark.parametrize("power", [2.0, 1.0])
def test_stream_front_end_gives_the_frames_power_spectra(power):
    """push_with_power: the same frames as push (written into the given buffer), and each new frame's power spectrum
    (squared magnitude, also for a magnitude front-end) equal to the offline front-end's."""
    import dataclasses

    from acula_edge.features import LogMel, LogMelStream

    fe = dataclasses.replace(FE, power=power)
    x = _recording(3.0, seed=2)
    plain, into = LogMelStream(fe), LogMelStream(fe)
    frames = np.full((200, fe.n_mels), np.nan, np.float32)
    offline = LogMel(fe)
    at = 0
    for chunk in (x[:700], x[700:3000], x[3000:]):
        want = plain.push(chunk)
        first = into.frames_emitted
        got, spectra = into.push_with_power(chunk, frames[at:])
        assert np.shares_memory(got, frames)
        np.testing.assert_array_equal(got, want)
        framed = np.lib.stride_tricks.sliding_window_view(x, fe.win_length)[::fe.hop_length]
        np.testing.assert_array_equal(spectra, offline.power(framed[first:first + got.shape[0]]))
        at += got.shape[0]
    np.testing.assert_allclose(frames[:at], offline(x)[:at], rtol=1e-6, atol=1e-6)


def test_executorch_num_threads_sizes_the_threadpool_once_per_process():
    """The first load sizes ExecuTorch's process-wide pool; a later, different request warns and is not applied
    (resizing after a program is loaded crashed the runtime). A fresh process, so no earlier test has loaded one."""
    import subprocess
    import sys

    bundle = rf.bundle_or_skip("executorch-int8")
    script = f"""
import warnings, numpy as np, acula_edge
from executorch.extension.pybindings import portable_lib
window = np.zeros(({WIN.frames_per_window(FE)}, {FE.n_mels}), np.float32)
one = acula_edge.load({str(bundle)!r}, num_threads=1)
assert portable_lib._threadpool_get_thread_count() == 1 and one.backend.threads == 1
before = one.run_window(window)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    two = acula_edge.load({str(bundle)!r}, num_threads=2)
assert any("resizing it now can crash the runtime" in str(w.message) for w in caught), [str(w.message) for w in caught]
assert portable_lib._threadpool_get_thread_count() == 1 and two.backend.threads == 1
for a, b in zip(before, two.run_window(window)):
    np.testing.assert_allclose(a, b, atol=1e-6)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_a_session_refuses_a_second_thread_clearly():
    import threading

    from acula_edge.errors import ConfigError

    model = acula_edge.load(rf.bundle_or_skip("onnx-fp32"), num_threads=1)
    inside, release = threading.Event(), threading.Event()
    score = model.score_window

    def slow_score(*args, **kwargs):  # holds the first thread inside push() until the main thread has tried
        inside.set()
        release.wait(10)
        return score(*args, **kwargs)

    model.score_window = slow_score
    session = model.stream(source="shared")  # a session takes its model's scoring method when it is made
    x = _recording(4.0)
    results = []
    worker = threading.Thread(target=lambda: results.append(session.push(x, FE.sample_rate)))
    worker.start()
    assert inside.wait(10)
    with pytest.raises(ConfigError, match=r"shared: StreamSession.push\(\) was called while another thread was "
                                          r"inside this session; .* give each thread its own session"):
        session.push(x[:10], FE.sample_rate)
    release.set()
    worker.join(10)
    model.score_window = score
    assert len(results) == 1 and len(results[0]) == 2  # the first thread's window and update, undisturbed
    assert session.finish().n_windows == 1


def test_stage_timers_wrap_each_stage_once():
    """time_stages() times the session's stages; a second call zeroes the same timers instead of wrapping the
    stages again (which would count each stage twice: more stage time than the push took)."""
    import time

    from acula_edge.runtime.streaming import STAGES

    model = acula_edge.load(rf.bundle_or_skip("onnx-fp32"), num_threads=1)
    session = model.stream()
    x = _recording(9.0)
    first = session.time_stages()
    session.push(x[:W], FE.sample_rate)
    assert all(first[stage] > 0 for stage in STAGES)
    again = session.time_stages()
    assert again is first and not any(again.values())
    for k in range(5):
        t0 = time.perf_counter_ns()
        session.push(x[W + k * H:W + (k + 1) * H], FE.sample_rate)
        wall = time.perf_counter_ns() - t0
        assert 0 < sum(again[stage] for stage in STAGES) <= wall
        for name in again:
            again[name] = 0
