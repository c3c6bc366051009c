"""The export machinery around the targets: parity metrics and gate, tolerances, calibration data, atomic bundles,
the CLI on a checkpoint folder, and verify's integrity checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from acula_edge.errors import BundleError, ExportError, ParityError
from acula_edge.export import parity
from acula_edge.export.tolerances import TOLERANCES, Tolerance, tolerance_for


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


def _report(cos_e: float, cos_l: float, auc_delta: float, per_class: int = 20) -> dict:
    return {"outputs": {"embedding": {"cosine_mean": cos_e, "cosine_min": cos_e, "max_abs_error": 0.1},
                        "logits": {"cosine_mean": cos_l, "cosine_min": cos_l, "max_abs_error": 0.2}},
            "auroc": {"pytorch_fp32": 0.9, "runtime": 0.9 + auc_delta, "delta": auc_delta,
                      "recordings_per_class": [per_class, per_class], "gated": per_class >= 10}}


def test_gate_collects_every_mismatch():
    tol = Tolerance(min_cosine={"embedding": 0.99, "logits": 0.99}, max_auroc_delta=0.01)
    with pytest.raises(ParityError) as err:
        parity.gate(_report(0.5, float("nan"), -0.05), tol, "onnx int8 export")
    problems = err.value.mismatches
    assert len(problems) == 3
    assert problems[0].startswith("embedding: mean cosine 0.500000 < 0.99")
    assert problems[1].startswith("logits: mean cosine nan < 0.99")
    assert problems[2].startswith("AUROC: runtime 0.8500 vs PyTorch fp32 0.9000 (|delta| 0.0500 > 0.01)")
    assert "onnx int8 export" in str(err.value) and all(p in str(err.value) for p in problems)


def test_gate_passes_and_records_verdict_and_ungated_small_auroc():
    tol = tolerance_for("tflite", "int8")
    report = parity.gate(_report(0.995, 0.5, 0.2, per_class=3), tol, "x")  # logits cosine and AUROC not gated
    assert report["passed"] is True and report["tolerance"] == {"min_cosine": {"embedding": 0.99},
                                                                "max_auroc_delta": 0.01}


def test_tolerances_declared_per_target_and_precision():
    assert TOLERANCES[("onnx", "fp32")].min_cosine == {"embedding": 0.9999, "logits": 0.9999}
    assert TOLERANCES[("tflm", "int8")].max_auroc_delta == 0.01
    with pytest.raises(ExportError, match="no parity tolerance declared for target 'tflm' at precision 'fp32'"):
        tolerance_for("tflm", "fp32")


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
    assert text.startswith(f"onnx-fp32: {out}")
    m = read_manifest(out)
    assert m.source_checkpoint_sha256 == weights_sha256(student_checkpoint)
    assert m.extra["source_checkpoint"] == str(student_checkpoint.resolve())
    assert m.extra["model_class"] == "acula_edge.distill.students:DSCNNStudent"
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
        export_model(model, info, out, "onnx", "fp32", data=data,
                     tolerance=Tolerance(min_cosine={"embedding": 1.5, "logits": 1.5}))
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
