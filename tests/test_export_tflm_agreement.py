"""TFLite Micro and LiteRT run the same int8 model file of a tflm bundle: their outputs must agree to int8
rounding (what the firmware computes is what the workstation verified); the MCU student fits the
reference MCU."""

import numpy as np
import pytest

import runtime_fixtures as rf

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tflite_micro")


def test_tflm_matches_litert_on_the_same_int8_model():
    from acula_edge.export.parity import file_outputs
    from acula_edge.manifest import read_manifest

    bundle = rf.bundle_or_skip("tflm-int8")
    manifest = read_manifest(bundle)
    windows = rf.calibration_windows(manifest.frontend, manifest.windowing, n=6, seed=7)
    path = bundle / manifest.model_file
    litert = file_outputs("tflite", path, windows, manifest.inputs, manifest.outputs)
    tflm = file_outputs("tflm", path, windows, manifest.inputs, manifest.outputs, manifest.extra)
    for spec in manifest.outputs:
        step = spec.scale if spec.scale is not None else 0.0
        diff = np.abs(litert[spec.name] - tflm[spec.name])
        # XNNPACK and TFLM's reference kernels may round an intermediate differently: at most two output steps
        # apart, and most values identical (measured on this fixture: 11 of 12 logits identical, one 2 steps off)
        assert diff.max() <= 2 * step + 1e-6, (spec.name, float(diff.max()), step)
        assert np.mean(diff == 0) >= 0.8, (spec.name, float(np.mean(diff == 0)))


def test_small_mcu_student_fits_the_reference_mcu(tmp_path, one_torch_thread):
    """The small-mcu preset exists to fit the issue's MCU (flash <= 256 KiB, RAM <= 128 KiB with the C front-end
    and the input window): its int8 tflm export, arena measured by TFLite Micro, must stay inside both."""
    from acula_edge.checkpoint import CheckpointInfo
    from acula_edge.distill.students import ARCHITECTURE, build_student
    from acula_edge.export.registry import ExportJob
    from acula_edge.export.targets import tflm
    from acula_edge.frontend import preset

    fe, win = preset("heart")
    model = build_student("small-mcu", 384, 2).eval()
    info = CheckpointInfo(kind="student", architecture=ARCHITECTURE, model_config=model.config_dict(), frontend=fe,
                          windowing=win, labels=rf.LABELS, embedding_dim=384)
    x = rf.calibration_windows(fe, win, n=8, seed=3).astype(np.float32)
    result = tflm.export(ExportJob(model=model, info=info, precision="int8", example=x[:1], calibration=x), tmp_path)
    extra = result.extra
    assert extra["memory"]["flash_bytes"] == extra["model_bytes"] + extra["frontend_memory"]["flash_bytes"]
    assert extra["memory"]["flash_bytes"] <= tflm.MCU_FLASH_BYTES, extra["memory"]
    assert extra["memory"]["ram_bytes"] <= tflm.MCU_RAM_BYTES, (extra["memory"], extra["arena_bytes_measured"])
    assert "DEQUANTIZE" not in extra["ops"]  # no float activations: they would take 4x the arena
