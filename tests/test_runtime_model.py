"""Loading bundles (checks and errors), backends against PyTorch, int8 I/O, classify / embed / zero-shot."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402
from acula_edge.errors import AudioError, BundleError, ConfigError, MissingDependencyError  # noqa: E402
from acula_edge.manifest import TensorSpec  # noqa: E402
from acula_edge.runtime import backends  # noqa: E402
from acula_edge.runtime.model import softmax  # noqa: E402

@pytest.fixture(scope="module", params=rf.KINDS)
def kind(request):
    return request.param


def test_backend_matches_pytorch(kind):
    """Every kind of bundle passes the export's own parity gate (the one definition) on fresh windows, run through
    acula_edge.load as the device runs it."""
    pytest.importorskip("torch", reason="the PyTorch reference needs torch")
    from acula_edge.export import parity
    from acula_edge.export.tolerances import tolerance_for

    bundle = rf.bundle_or_skip(kind)
    model = acula_edge.load(bundle, num_threads=1)
    windows = rf.calibration_windows(model.frontend, model.windowing, n=4, seed=100)
    ref_emb, ref_logits = rf.reference_outputs(kind, windows[:, 0])
    m = model.manifest
    report = parity.check_bundle(bundle, windows, {"embedding": ref_emb, "logits": ref_logits},
                                 tolerance_for(m.target, m.precision), f"{kind} on fresh windows")
    assert report["passed"] is True and report["windows"] == 4
    emb, probs = model.run_window(windows[0, 0])
    assert emb.shape == (rf.EMBED_DIM,) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, softmax(model.backend.run(windows[:1])[1]), atol=1e-7)


def test_int8_tflite_bundle_takes_float_and_quantizes_in_the_graph():
    bundle = rf.bundle_or_skip("tflite-int8")
    model = acula_edge.load(bundle)
    assert {s.dtype for s in (*model.manifest.inputs, *model.manifest.outputs)} == {"float32"}
    assert model.backend._quantizer is None  # no numpy quantize per window
    window = rf.calibration_windows(model.frontend, model.windowing, n=1, seed=3)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(bundle / model.manifest.model_file))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], window)
    it.invoke()
    lg_spec = model.manifest.output("logits")
    raw = [it.get_tensor(o["index"]) for o in it.get_output_details() if tuple(o["shape"]) == lg_spec.shape][0]
    _, logits = model.backend.run(window)
    np.testing.assert_array_equal(logits, raw.reshape(-1))


def test_int8_io_tflite_bundle_still_loads_and_is_quantized_with_the_manifest_scale(tmp_path):
    """A tflite bundle from before the float boundary (int8 input and outputs): the SDK quantizes the window and
    dequantizes the outputs with the manifest's scales, and gets what the float-boundary bundle gets."""
    new = rf.bundle_or_skip("tflite-int8")
    tflm = rf.bundle_or_skip("tflm-int8")  # the same int8 conversion, int8 I/O
    bundle = rf.copy_bundle(new, tmp_path / "old")
    shutil.copyfile(tflm / "model.tflite", bundle / "model.tflite")
    int8 = json.loads((tflm / "manifest.json").read_text())
    rf.reseal(bundle, inputs=int8["inputs"], outputs=int8["outputs"])
    model = acula_edge.load(bundle)
    spec = model.manifest.inputs[0]
    assert spec.dtype == "int8" and spec.scale > 0 and model.backend._quantizer is not None
    window = rf.calibration_windows(model.frontend, model.windowing, n=1, seed=3)
    # the same window quantized by hand and run on a bare interpreter
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(bundle / model.manifest.model_file))
    it.allocate_tensors()
    q = np.clip(np.rint(window / spec.scale) + spec.zero_point, -128, 127).astype(np.int8)
    it.set_tensor(it.get_input_details()[0]["index"], q)
    it.invoke()
    lg_spec = model.manifest.output("logits")
    raw = [it.get_tensor(o["index"]) for o in it.get_output_details() if tuple(o["shape"]) == lg_spec.shape][0]
    expected = (raw.astype(np.float32) - lg_spec.zero_point) * lg_spec.scale
    emb, logits = model.backend.run(window)
    np.testing.assert_array_equal(logits, expected.reshape(-1))
    new_emb, new_logits = acula_edge.load(new).backend.run(window)
    np.testing.assert_array_equal(logits, new_logits)
    np.testing.assert_array_equal(emb, new_emb)


def test_quantize_dequantize_round_trip_and_saturation():
    spec = TensorSpec("x", (4,), "int8", scale=0.5, zero_point=-3)
    q = backends.quantize(np.array([0.0, 1.0, 100.0, -100.0], np.float32), spec)
    assert q.dtype == np.int8 and q.tolist() == [-3, -1, 127, -128]
    np.testing.assert_array_equal(backends.dequantize(q, spec), [0.0, 1.0, 65.0, -62.5])
    u = TensorSpec("x", (2,), "uint8", scale=0.1, zero_point=128)
    assert backends.quantize(np.array([0.0, -50.0], np.float32), u).tolist() == [128, 0]


def test_classify_embed_zero_shot_results():
    model = acula_edge.load(rf.bundle_or_skip("onnx-fp32"))
    rate = model.sample_rate
    x = rf.heart_like(7.5, rate, seed=4, silence=(0.0, 4.5))
    r = model.classify(x, rate)
    assert r.n_windows == 4 and [w.start_s for w in r.windows] == [0.0, 1.0, 2.0, 3.0]
    assert [w.end_s for w in r.windows] == [4.0, 5.0, 6.0, 7.0]
    assert r.windows[0].quality.flags == ("silence",) and r.n_excluded == 1
    included = [w for w in r.windows if w.included]
    np.testing.assert_allclose(r.probabilities, np.mean([w.probabilities for w in included], axis=0), atol=1e-6)
    np.testing.assert_allclose(r.embedding, np.mean([w.embedding for w in included], axis=0), atol=1e-6)
    assert r.decision == bool(r.probabilities[-1] >= model.manifest.threshold)
    assert r.probability("abnormal") == pytest.approx(float(r.probabilities[1]))
    assert r.duration_s == pytest.approx(7.5)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["n_excluded"] == 1 and d["windows"][0]["quality"]["flags"] == ["silence"]
    np.testing.assert_allclose(model.embed(x, rate), r.embedding, atol=1e-7)
    # another input rate is resampled whole
    from acula_edge.audio import resample

    r4k = model.classify(resample(x, rate, 4000), 4000)
    assert r4k.n_windows == r.n_windows and r4k.duration_s == pytest.approx(7.5)
    np.testing.assert_allclose(r4k.probabilities, r.probabilities, atol=0.02)

    z = model.zero_shot(x, rate)
    table = np.asarray(model.manifest.prompts.embeddings)
    expected = table @ r.embedding / (np.linalg.norm(table, axis=1) * np.linalg.norm(r.embedding))
    np.testing.assert_allclose(z.scores, expected, atol=1e-5)
    assert z.texts == rf.PROMPT_TEXTS and z.best == rf.PROMPT_TEXTS[int(np.argmax(expected))]
    some = model.zero_shot(x, rate, prompts=[rf.PROMPT_TEXTS[2], rf.PROMPT_TEXTS[0]])
    np.testing.assert_allclose(some.scores, expected[[2, 0]], atol=1e-5)
    assert some.labels == ("", "normal")
    with pytest.raises(ConfigError, match="no text encoder"):
        model.zero_shot(x, rate, prompts=["a wheeze"])
    with pytest.raises(ConfigError, match="unknown aggregation 'median'"):
        model.classify(x, rate, aggregation="median")


def test_classify_all_windows_excluded_gives_no_decision():
    model = acula_edge.load(rf.bundle_or_skip("onnx-fp32"))
    r = model.classify(np.zeros(model.window_samples * 2, np.float32), model.sample_rate)
    assert r.n_excluded == r.n_windows == 5 and r.decision is None and r.label is None
    assert r.to_dict()["decision"] is None


def test_classify_file_streams_blocks_and_equals_classify(tmp_path, monkeypatch):
    import soundfile as sf

    from acula_edge.runtime import model as model_mod

    model = acula_edge.load(rf.bundle_or_skip("tflite-int8"))
    rate = model.sample_rate
    x = rf.heart_like(9.7, rate, seed=5, clip=(2.0, 2.4))
    path = tmp_path / "rec.flac"
    sf.write(path, x, rate, subtype="PCM_16")
    from acula_edge.audio import load_audio

    offline = model.classify(load_audio(path, rate), rate)
    monkeypatch.setattr(model_mod, "FILE_BLOCK_SAMPLES", 777)  # many blocks, none aligned to windows
    streamed = model.classify_file(path)
    assert streamed.source == str(path) and streamed.n_windows == offline.n_windows == 6
    np.testing.assert_allclose(streamed.probabilities, offline.probabilities, atol=1e-6)
    assert [w.quality.flags for w in streamed.windows] == [w.quality.flags for w in offline.windows]
    other = tmp_path / "rec4k.wav"
    from acula_edge.audio import resample

    sf.write(other, resample(x, rate, 4000), 4000)
    assert model.classify_file(other).n_windows == 6
    with pytest.raises(AudioError, match="no such file"):
        model.classify_file(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="cannot decode"):
        model.classify_file(tmp_path / "bad.wav")


# -- loading errors ---------------------------------------------------------------------------------------------


def _edit_manifest(bundle: Path, **changes) -> None:
    rf.reseal(bundle, **changes)


def test_sha256_mismatch_is_refused_before_loading(tmp_path):
    bundle = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "b")
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"model.onnx: sha256 .* does not match the manifest"):
        acula_edge.load(bundle)


def test_newer_schema_is_refused(tmp_path):
    bundle = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "b")
    _edit_manifest(bundle, schema_version=99)
    with pytest.raises(BundleError, match="schema version 99 is newer"):
        acula_edge.load(bundle)
    with pytest.raises(BundleError, match="no manifest.json"):
        acula_edge.load(tmp_path)


@pytest.mark.parametrize("kind", ["onnx-fp32", "tflite-fp32"])
def test_corrupt_or_foreign_model_file_names_the_file(tmp_path, kind):

    bundle = rf.copy_bundle(rf.bundle_or_skip(kind), tmp_path / "b")
    name = json.loads((bundle / "manifest.json").read_text())["model_file"]
    (bundle / name).write_bytes(b"garbage" * 100)  # checksums updated: only the runtime can tell
    _edit_manifest(bundle)
    with pytest.raises(BundleError, match=f"{name}: .*cannot load the model file"):
        acula_edge.load(bundle)


def test_missing_runtime_names_the_extra(monkeypatch):
    onnx_bundle = rf.bundle_or_skip("onnx-fp32")
    tflite_bundle = rf.bundle_or_skip("tflite-fp32")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'acula-edge\[onnx\]'"):
        acula_edge.load(onnx_bundle)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'acula-edge\[tflite\]'"):
        acula_edge.load(tflite_bundle)


def test_bad_options_and_inconsistent_manifest(tmp_path):
    bundle = rf.bundle_or_skip("onnx-fp32")
    with pytest.raises(ConfigError, match="num_threads must be a positive integer"):
        acula_edge.load(bundle, num_threads=0)
    copy = rf.copy_bundle(bundle, tmp_path / "b")
    rf.reseal(copy, labels=["a", "b", "c"])
    with pytest.raises(BundleError, match=r"3 labels but the logits output has shape \(1, 2\)"):
        acula_edge.load(copy)
