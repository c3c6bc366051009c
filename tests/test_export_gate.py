"""The export machinery around the targets: parity metrics and gate, tolerances, calibration data, atomic bundles,
the CLI on a checkpoint folder, and verify's integrity checks."""

from __future__ import annotations

import dataclasses
import json

import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

from acula_edge.errors import BundleError, ExportError, ParityError  # noqa: E402
from acula_edge.export import parity  # noqa: E402
from acula_edge.export.tolerances import FP32, INT8, tolerance_for  # noqa: E402


# --- parity metrics and gate (no torch) --------------------------------------------------------------------------

def test_auroc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    pos = rng.random(40) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in scores[pos] for b in scores[~pos]]
    assert parity.auroc(scores, pos) == pytest.approx(np.mean(pairs))
    assert parity.auroc(scores, np.ones(40, bool)) is None


def test_recording_auroc_averages_windows_per_recording():
    # two recordings per class, two windows each; P(abnormal) rises with the logit difference
    logits = np.array([[0, -2], [0, -1], [0, 0.5], [0, 1], [0, 2], [0, 2], [0, 3], [0, -5]], float)
    recording = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # recording means of P(abnormal): r0 0.20, r1 0.68 (normal); r2 0.88, r3 mean(0.95, 0.007) = 0.48 (abnormal):
    # r3 < r1 is the one wrong pair of four
    assert parity.recording_auroc(logits, recording, y) == pytest.approx(0.75)
    assert parity.recording_auroc(np.zeros((8, 3)), recording, y) is None  # not binary


def test_cosine_rows():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, -1.0]])
    np.testing.assert_allclose(parity.cosine_rows(a, b), [1.0, 1.0, -1.0])


def _outputs(n: int = 60, seed: int = 0, spread: float = 2.0) -> dict[str, np.ndarray]:
    """Reference-like outputs: 16-d embeddings, two logits whose difference spreads over the decision range."""
    rng = np.random.default_rng(seed)
    logits = np.stack([np.zeros(n), rng.normal(0.0, spread, n)], axis=1)
    return {"embedding": rng.normal(size=(n, 16)), "logits": logits}


def _labels(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    recording = np.arange(n) // 2  # two windows per recording
    return recording, (recording % 2).astype(int)


def _gate(reference, candidate, tol=INT8, threshold=0.5, labelled=True):
    recording, y = _labels(reference["logits"].shape[0]) if labelled else (None, None)
    report = parity.parity_report(reference, candidate, threshold, tol, recording, y, "test")
    return parity.gate(report, tol, "onnx int8 export")


def _noisy(reference: dict, scale: float, seed: int = 1) -> dict:
    """int8-like noise: each output perturbed by ``scale`` x its own standard deviation."""
    rng = np.random.default_rng(seed)
    return {k: v + scale * v.std() * rng.standard_normal(v.shape) for k, v in reference.items()}


def test_quantization_noise_passes_the_int8_gate():
    ref = _outputs()
    report = _gate(ref, _noisy(ref, 0.02))
    assert report["passed"] is True and report["tolerance"] == INT8.to_dict()
    assert report["decisions"]["threshold"] == 0.5 and report["ranking"]["recordings"] == 30
    assert report["probabilities"]["max_abs_error"] < INT8.max_prob_error
    assert report["auroc"]["ci95"][0] <= report["auroc"]["delta"] <= report["auroc"]["ci95"][1]


def test_a_logit_shifted_by_one_fails_with_every_symptom_named():
    ref = _outputs()
    shifted = {"embedding": ref["embedding"].copy(), "logits": ref["logits"] + np.array([1.0, 0.0])}
    with pytest.raises(ParityError) as err:
        _gate(ref, shifted)
    kinds = [p.split(":")[0] for p in err.value.mismatches]
    assert kinds == ["probabilities", "logits", "decisions"], err.value.mismatches
    assert err.value.mismatches[1].startswith("logits: max abs error 1 is ")
    assert "onnx int8 export" in str(err.value) and err.value.report["passed"] is False


def test_gate_collects_every_mismatch_and_nan_fails():
    ref = _outputs()
    bad = {"embedding": -ref["embedding"], "logits": np.full_like(ref["logits"], np.nan)}
    with pytest.raises(ParityError) as err:
        _gate(ref, bad, labelled=False)
    problems = err.value.mismatches
    assert problems[0].startswith("embedding: mean cosine -1.000000 < 0.99")
    assert [p.split(":")[0] for p in problems] == ["embedding", "probabilities", "logits", "decisions"]


def test_decisions_on_the_threshold_are_excused_but_clear_ones_are_not():
    # logit difference 0.1 -> P = 0.525, 0.025 from the threshold: inside the margin, a flip there is rounding
    ref = {"embedding": np.ones((4, 3)), "logits": np.array([[0, 0.1], [0, -0.1], [0, 3.0], [0, -3.0]])}
    got = {"embedding": np.ones((4, 3)), "logits": np.array([[0, -0.1], [0, 0.1], [0, 3.0], [0, -3.0]])}
    report = parity.parity_report(ref, got, 0.5, INT8)
    assert report["decisions"]["changed"] == 2 and report["decisions"]["changed_clear_of_threshold"] == 0
    assert parity.mismatches(report, INT8) == []
    report = parity.parity_report(ref, got, 0.95, INT8)  # another operating point: P = 0.953 is now on it
    assert report["decisions"]["threshold"] == 0.95 and report["decisions"]["changed"] == 0


def test_auroc_fails_only_when_its_interval_shows_a_real_loss():
    ref = _outputs(n=80)
    recording, y = _labels(80)
    ref["logits"][:, 1] += 1.5 * y  # a model that separates the classes
    noisy = _noisy(ref, 0.05)
    report = parity.parity_report(ref, noisy, 0.5, INT8, recording, y)
    assert report["auroc"]["gated"] and report["auroc"]["ci95"][1] >= -INT8.max_auroc_loss
    inverted = {"embedding": ref["embedding"], "logits": ref["logits"][:, ::-1].copy()}
    report = parity.parity_report(ref, inverted, 0.5, INT8, recording, y)
    assert report["auroc"]["ci95"][1] < -0.1
    assert any(p.startswith("AUROC: runtime") and "entirely below -0.02" in p for p in parity.mismatches(report, INT8))


def test_rank_correlations():
    a = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert parity.spearman(a, a * 2) == pytest.approx(1.0) and parity.kendall(a, -a) == pytest.approx(-1.0)
    assert parity.kendall(a, np.array([0.1, 0.3, 0.2, 0.4, 0.5])) == pytest.approx(0.8)
    assert np.isnan(parity.spearman(a, np.ones(5)))


def test_tolerances_are_declared_with_each_target():
    from acula_edge.export.registry import get_target, targets

    assert get_target("onnx").tolerance("fp32") is FP32 and tolerance_for("tflm", "int8") is INT8
    assert all(set(t.tolerances) == set(t.precisions) for t in targets().values())
    with pytest.raises(ExportError, match="no parity tolerance declared for target 'tflm' at precision 'fp32'"):
        tolerance_for("tflm", "fp32")


def test_one_target_object_feeds_every_table(tmp_path):
    """manifest.TARGETS / RUNTIME_EXTRA and the runtime's backend registry are views of the Target objects."""
    import importlib

    from acula_edge.export.registry import Target, targets
    from acula_edge.manifest import RUNTIME_EXTRA, TARGETS
    from acula_edge.runtime.backends import REGISTRY, Backend, backend_class

    found = targets()
    assert tuple(TARGETS) == tuple(found) == ("executorch", "onnx", "tflite", "tflm") and "onnx" in TARGETS
    assert dict(RUNTIME_EXTRA) == {n: t.extra for n, t in found.items()} and RUNTIME_EXTRA["tflm"] == "export"
    for name, t in found.items():
        assert REGISTRY[name] == t.backend and issubclass(backend_class(name), Backend)
        module = importlib.import_module(f"acula_edge.export.targets.{name}")
        assert getattr(module, "MODEL_FILE") == t.model_file
    with pytest.raises(ExportError, match="declares tolerances for \\['fp32'\\] but exports \\['fp32', 'int8'\\]"):
        Target(name="x", precisions=("fp32", "int8"), export=lambda job, folder: None, backend="m:C", extra="x",
               runtime="x", model_file="m", tolerances={"fp32": FP32})
    with pytest.raises(BundleError, match="no runtime backend for target 'coreml'"):
        backend_class("coreml")


# --- quiet stages -------------------------------------------------------------------------------------------------

def test_captured_sends_third_party_output_to_the_log(tmp_path, capfd):
    import logging
    import os
    import warnings

    from acula_edge.quiet import captured

    log = tmp_path / "stage.log"
    with captured(log) as console:
        os.write(2, b"C-level stderr banner\n")
        os.write(1, b"C-level stdout trace\n")
        print("python print")
        warnings.warn("a FutureWarning from a library", FutureWarning)
        logging.getLogger("absl").warning("absl banner")
        console.line("onnx-int8 ok")
    out, err = capfd.readouterr()
    assert out == "" and err == "onnx-int8 ok\n"
    text = log.read_text()
    for expected in ("C-level stderr banner", "C-level stdout trace", "python print", "a FutureWarning from a library",
                     "absl banner"):
        assert expected in text
    with captured(tmp_path / "verbose.log", verbose=True) as console:
        os.write(2, b"shown\n")
    assert "shown" in capfd.readouterr().err and not (tmp_path / "verbose.log").exists()


def test_captured_shows_the_log_tail_when_the_stage_fails(tmp_path, capfd):
    import os

    from acula_edge.quiet import captured

    with pytest.raises(RuntimeError, match="converter crashed"):
        with captured(tmp_path / "x.log", what="export"):
            os.write(2, b"the converter's last words\n")
            raise RuntimeError("converter crashed")
    err = capfd.readouterr().err
    assert f"export failed; last 1 of 1 lines of its captured output ({tmp_path / 'x.log'})" in err
    assert "  | the converter's last words" in err
    # a typed error is one line that says what to do: the log is only named (and a temporary one removed)
    with pytest.raises(ExportError, match="pass --calib-data"):
        with captured(tmp_path / "y.log", what="export"):
            os.write(2, b"a banner\n")
            raise ExportError("int8 export needs real calibration windows: pass --calib-data SPEC")
    assert capfd.readouterr().err == f"(export: library output in {tmp_path / 'y.log'})\n"
    before = set(Path(tempfile.gettempdir()).glob("acula-edge-*.log"))
    with pytest.raises(ExportError):
        with captured(None, what="verify"):
            raise ExportError("bad bundle")
    assert capfd.readouterr().err == "" and set(Path(tempfile.gettempdir()).glob("acula-edge-*.log")) == before


# --- calibration data ---------------------------------------------------------------------------------------------

def _info(**kw):
    from acula_edge.checkpoint import CheckpointInfo
    from acula_edge.frontend import FrontendConfig, Windowing

    return CheckpointInfo(kind="student", architecture="acula_edge.distill.students:DSCNNStudent", model_config={},
                          frontend=FrontendConfig(), windowing=Windowing(1.0, 0.5), labels=("normal", "abnormal"),
                          embedding_dim=16, **kw)


def test_int8_without_calibration_data_is_refused():
    from acula_edge.export.calibration import prepare_data

    with pytest.raises(ExportError, match="int8 export needs real calibration windows: pass --calib-data SPEC"):
        prepare_data(_info(), "int8")


def test_calibration_windows_are_real_spread_and_deterministic():
    from acula_edge.export.calibration import prepare_data

    a = prepare_data(_info(), "int8", "synthetic:heart?n=12&seed=3", n_calib=12, n_eval=6)
    b = prepare_data(_info(), "int8", "synthetic:heart?n=12&seed=3", n_calib=12, n_eval=6)
    np.testing.assert_array_equal(a.calibration.x, b.calibration.x)
    assert a.calibration.x.shape == (12, 1, 46, 32) and a.calibration.x.dtype == np.float32
    assert set(a.calibration.y.tolist()) == {0, 1}  # both labels
    assert a.calibration.n_recordings >= 6  # spread over recordings
    assert a.held_out and a.evaluation.source.endswith("[held]")
    # fp32 with no data at all: parity on synthetic heart sounds at the model's rate
    c = prepare_data(_info(), "fp32", n_eval=4)
    assert c.calibration is None and c.evaluation.source.startswith("synthetic:heart")


# --- whole exports (torch) ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def student_checkpoint(tmp_path_factory):
    """A tiny distill/ student saved as a checkpoint folder."""
    pytest.importorskip("torch")
    import torch

    from acula_edge.checkpoint import save_checkpoint
    from acula_edge.distill.students import ARCHITECTURE, DSCNNStudent, StudentConfig

    torch.manual_seed(0)
    cfg = StudentConfig(channels=(8, 8), strides=((2, 2), (1, 1)), stem_kernel=(3, 3), embedding_dim=16,
                        num_classes=2)
    model = DSCNNStudent(cfg).eval()
    info = dataclasses.replace(_info(), architecture=ARCHITECTURE, model_config=cfg.to_dict())
    folder = tmp_path_factory.mktemp("ckpt") / "student"
    save_checkpoint(model, info, folder)
    return folder


def _cli(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from acula_edge.cli import cli

    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, (SystemExit, ExportError, BundleError)):
        raise result.exception
    return result.exit_code, result.output + (str(result.exception) if result.exception else "")


@pytest.mark.slow
def test_cli_export_and_verify_a_checkpoint_folder(student_checkpoint, tmp_path):
    from acula_edge.checkpoint import weights_sha256
    from acula_edge.manifest import read_manifest

    out = tmp_path / "bundle"
    code, text = _cli("export", str(student_checkpoint), "--target", "onnx", "--out", str(out), "--eval-windows", "8")
    assert code == 0, text
    lines = text.splitlines()  # one progress line, then where the converter output went
    assert len(lines) == 2 and lines[0].startswith("onnx-fp32        ok ") and lines[0].endswith(f"-> {out}")
    assert lines[1] == f"converter output: {tmp_path / 'bundle.export.log'}"
    assert (tmp_path / "bundle.export.log").is_file() and not (out / "export.log").exists()
    m = read_manifest(out)
    assert m.source_checkpoint_sha256 == weights_sha256(student_checkpoint)
    assert m.extra["source_checkpoint"] == str(student_checkpoint.resolve())
    assert m.extra["model_class"] == "acula_edge.distill.students:DSCNNStudent"
    assert m.parity["passed"] is True and m.parity["runtime"].startswith("onnxruntime ")
    code, text = _cli("verify", str(out))
    assert code == 0, text
    assert "parity vs checkpoint" in text and "embedding: cosine mean 1.0000" in text
    code, text = _cli("verify", str(out), "--data", "synthetic:heart?n=4&seed=5", "--json")
    assert code == 0, text
    report = json.loads(text)
    assert report["passed"] is True and report["windows"] == 8 and report["data"] == "synthetic:heart?n=4&seed=5"
    # tampering with the model file is caught before any parity run
    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes() + b"\0")
    code, text = _cli("verify", str(out))
    assert code != 0 and "does not match the manifest" in text


def _shift_logit(path, by: float) -> None:
    """Append ``logits += [by, 0]`` to an ONNX graph (what a wrong export might do)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == "logits":
                node.output[i] = "logits_unshifted"
    graph.initializer.append(numpy_helper.from_array(np.array([[by, 0.0]], np.float32), "logit_shift"))
    graph.node.append(helper.make_node("Add", ["logits_unshifted", "logit_shift"], ["logits"]))
    onnx.save(model, str(path))


@pytest.mark.slow
def test_verify_fails_an_int8_onnx_bundle_with_one_logit_shifted(student_checkpoint, tmp_path):
    from acula_edge.export.api import export_checkpoint
    from acula_edge.export.verify import verify_bundle

    out = tmp_path / "onnx-int8"
    export_checkpoint(student_checkpoint, out, "onnx", "int8", calib_data="synthetic:heart?n=24&seed=2",
                      n_calib=32, n_eval=16)
    for checkpoint in (None, student_checkpoint):
        assert verify_bundle(out, checkpoint=checkpoint)["passed"] is True
    _shift_logit(out / "model.onnx", 1.0)
    rf.reseal(out)  # every sha256 and the bundle digest updated: only the gate can tell
    with pytest.raises(ParityError) as err:
        verify_bundle(out)
    assert f"verify {out}: the bundle does not match PyTorch" in str(err.value)
    assert {p.split(":")[0] for p in err.value.mismatches} >= {"probabilities", "logits"}


def test_verify_checks_the_tflm_c_array_byte_for_byte(tmp_path):
    from acula_edge.export.verify import verify_bundle

    bundle = rf.copy_bundle(rf.bundle_or_skip("tflm-int8"), tmp_path / "b")
    report = verify_bundle(bundle)
    assert report["passed"] is True and report["runtime"] == "tflite-micro"
    assert report["integrity"].endswith(", tflm files consistent")
    source = bundle / "model_data.c"
    text = source.read_text()
    i = text.index("0x", text.index("acula_model_data["))
    changed = "0x00" if text[i:i + 4] != "0x00" else "0x01"
    source.write_text(text[:i] + changed + text[i + 4:])
    rf.reseal(bundle)
    with pytest.raises(BundleError, match=r"model_data.c: the C array differs from model.tflite \(first at byte 0;"):
        verify_bundle(bundle)


@pytest.mark.slow
def test_failed_export_leaves_nothing_and_keeps_an_existing_bundle(student_checkpoint, tmp_path, monkeypatch):
    from acula_edge.checkpoint import load_checkpoint
    from acula_edge.export import registry
    from acula_edge.export.api import export_model
    from acula_edge.export.calibration import prepare_data

    model, info = load_checkpoint(student_checkpoint)
    data = prepare_data(info, "fp32", n_eval=4)
    out = tmp_path / "bundle"
    # 1. the parity gate fails (impossible bar): every mismatch listed, nothing written
    with pytest.raises(ParityError) as err:
        export_model(model, info, out, "onnx", "fp32", data=data, tolerance=FP32.scaled(1.5))
    assert [p.split(":")[0] for p in err.value.mismatches] == ["embedding", "logits"]
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # 2. an existing bundle survives a target that crashes halfway through writing
    export_model(model, info, out, "onnx", "fp32", data=data)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(job, folder):
        (folder / "model.onnx").write_bytes(b"half a model")
        raise ExportError("converter crashed")

    registry.targets()
    monkeypatch.setitem(registry._TARGETS, "onnx", dataclasses.replace(registry.get_target("onnx"), export=crash))
    with pytest.raises(ExportError, match="converter crashed"):
        export_model(model, info, out, "onnx", "fp32", data=data)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary folder left


def test_cli_int8_without_calib_data_fails_cleanly(student_checkpoint, tmp_path):
    code, text = _cli("export", str(student_checkpoint), "--target", "tflite", "--quantize", "int8", "--out",
                      str(tmp_path / "b"))
    assert code != 0 and "--calib-data" in text and not (tmp_path / "b").exists()


def test_unknown_target_and_wrong_precision():
    from acula_edge.export.registry import get_target

    with pytest.raises(ExportError, match="unknown export target 'coreml'; registered targets: "):
        get_target("coreml")
    assert get_target("tflm").precisions == ("int8",)


def test_tflite_findings_report_float_tensors_and_transposes():
    from acula_edge.export.targets import tflite

    desc = {"float_tensors": ["conv/bias", "mean_out"], "ops": ["TRANSPOSE", "CONV_2D", "TRANSPOSE"]}
    found = tflite.findings(desc, "int8")
    assert found[0].startswith("2 float tensor(s) left in the full-int8 model (e.g. ['conv/bias', 'mean_out'])")
    assert found[1].startswith("2 TRANSPOSE op(s) in the graph")
    assert tflite.findings(desc, "fp32") == [found[1]]  # float tensors are expected in an fp32 model


def test_tflm_resolver_names_and_c_strings():
    from acula_edge.export.targets import tflm

    assert [tflm.resolver_name(op) for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN",
                                              "AVERAGE_POOL_2D", "BATCH_MATMUL", "RELU6")] == \
        ["Conv2D", "DepthwiseConv2D", "FullyConnected", "Mean", "AveragePool2D", "BatchMatMul", "Relu6"]
    assert tflm._c_string('a "b"\\?é') == '"a \\042b\\042\\134\\077\\303\\251"'


def test_plan_lanes_balances_declared_costs_and_keeps_reusers_together():
    from acula_edge.export.api import plan_lanes
    from acula_edge.export.registry import targets

    names = list(targets())
    assert plan_lanes(names, 1) == [names]
    lanes = plan_lanes(names, 2)
    assert sorted(n for lane in lanes for n in lane) == sorted(names)
    together = [lane for lane in lanes if "tflm" in lane][0]
    assert "tflite" in together and together.index("tflite") < together.index("tflm")  # tflm reuses its conversion
    loads = [sum(targets()[n].export_cost for n in lane) for lane in lanes]
    assert loads[0] == max(loads) and max(loads) < sum(loads)  # the work is split, the heaviest lane stays here
    assert plan_lanes(["tflm"], 4) == [["tflm"]]


def test_export_errors_cross_a_process_boundary_whole():
    import pickle

    from acula_edge.errors import DatasetError, ParityError

    e = pickle.loads(pickle.dumps(ParityError("onnx int8 export", ["logits: max error 1.0 > 0.2", "decisions"])))
    assert isinstance(e, ParityError) and e.mismatches == ["logits: max error 1.0 > 0.2", "decisions"]
    assert str(e).startswith("onnx int8 export\n  logits")
    d = pickle.loads(pickle.dumps(DatasetError("bad folder", ["a.wav: empty"])))
    assert d.problems == ["a.wav: empty"] and str(d) == "bad folder"


@pytest.mark.slow
def test_targets_spread_over_processes_give_the_same_bundles(student_checkpoint, tmp_path):
    from acula_edge.export.api import export_targets

    lines: dict[int, list[str]] = {1: [], 2: []}
    for jobs in (1, 2):
        written, failed = export_targets(student_checkpoint, tmp_path / f"jobs{jobs}", ["onnx", "tflite"], "int8",
                                         calib_data="synthetic:heart?n=16&seed=2", n_eval=8, jobs=jobs,
                                         progress=lines[jobs].append)
        assert not failed and len(written) == 2
    for name, file in (("onnx", "model.onnx"), ("tflite", "model.tflite")):
        one = (tmp_path / "jobs1" / f"{name}-int8" / file).read_bytes()
        assert one == (tmp_path / "jobs2" / f"{name}-int8" / file).read_bytes(), name
    assert sorted(line.split()[0] for line in lines[2]) == ["onnx-int8", "tflite-int8"]
    assert all(" ok " in line for line in lines[2])
