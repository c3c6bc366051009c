"""The operating point: how distill chooses it (youden / sensitivity=X / specificity=X), its record in the
checkpoint and manifest, overrides (export, load), and that classify, stream and bench accuracy apply the manifest's
point."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_fixtures import LABELS, bundle_or_skip, heart_like  # noqa: E402

from acula_edge.errors import ConfigError  # noqa: E402
from acula_edge.operating_point import (VALIDATION_KEY, OperatingPoint, checkpoint_with, choose,  # noqa: E402
                                        overridden, parse_method, wilson)

# 6 positives, 6 negatives; scores overlap in the middle (positives 0.4 and 0.45 below the negative 0.5)
Y = np.array([0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1], dtype=bool)
S = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9])


def test_youden_maximises_se_plus_sp_and_sits_between_scores():
    p = choose(Y, S, "youden", "toy")
    # >= 0.375 catches all six positives and one negative (0.5): Se 1, Sp 5/6; no threshold does better
    assert p.threshold == pytest.approx(0.375)
    assert (p.sensitivity, p.specificity) == (1.0, pytest.approx(5 / 6, abs=1e-6))
    assert p.method == "youden" and p.n_recordings == 12 and p.n_positive == 6 and p.chosen_on == "toy"
    assert p.threshold not in S
    lo, hi = p.specificity_ci95
    assert lo < 5 / 6 < hi and (lo, hi) == wilson(5, 6)


def test_sensitivity_and_specificity_targets():
    p = choose(Y, S, "specificity=1")
    assert p.specificity == 1.0 and p.sensitivity == pytest.approx(4 / 6, abs=1e-6)  # >= 0.55: misses 0.4, 0.45
    assert p.threshold == pytest.approx(0.55) and p.method == "specificity=1"
    q = choose(Y, S, "sensitivity=0.8")
    assert q.sensitivity >= 0.8 and q.specificity == pytest.approx(5 / 6, abs=1e-6)  # Sp 1 would cost Se 4/6
    r = choose(Y, S, "sensitivity=0.9")
    assert r.sensitivity == 1.0 and r.threshold == pytest.approx(0.375)


def test_wilson_interval_values():
    assert wilson(0, 0) is None
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)  # textbook values


@pytest.mark.parametrize("spec, message", [
    ("median", "not understood"), ("sensitivity", "not understood"), ("youden=0.3", "not understood"),
    ("specificity=1.5", "must be in (0, 1]"), ("1.2", "strictly between 0 and 1")])
def test_bad_method_is_a_config_error(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_method(spec)


def test_one_class_cannot_choose():
    with pytest.raises(ConfigError, match="both classes are needed"):
        choose(np.ones(4, bool), np.linspace(0, 1, 4))


def test_round_trip_and_overrides_are_recorded():
    p = choose(Y, S, "youden", "toy")
    assert OperatingPoint.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    q = overridden(p, "0.6", "load(threshold=...)", Y, S)
    assert q.threshold == 0.6 and q.method == "fixed" and q.override == "load(threshold=...) 0.6"
    assert q.replaced["threshold"] == pytest.approx(0.375) and q.specificity == 1.0  # recomputed at 0.6
    assert q.sensitivity == pytest.approx(4 / 6, abs=1e-6)
    assert "overridden by load(threshold=...) 0.6" in q.rule
    with pytest.raises(ConfigError, match="carries none"):
        overridden(p, "sensitivity=0.9", "export --operating-point")


def test_checkpoint_with_chooses_again_on_stored_validation_scores():
    from acula_edge.checkpoint import CheckpointInfo
    from acula_edge.frontend import preset

    fe, win = preset("heart")
    info = CheckpointInfo(kind="student", architecture="acula_edge.x:Y", model_config={}, frontend=fe, windowing=win,
                          labels=LABELS, embedding_dim=4, threshold=0.375, operating_point=choose(Y, S),
                          extra={VALIDATION_KEY: {"positive": Y.astype(int).tolist(), "score": S.tolist()}})
    again = CheckpointInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert again.operating_point == info.operating_point
    new = checkpoint_with(again, "specificity=1", "export --operating-point")
    assert new.threshold == new.operating_point.threshold == pytest.approx(0.55)
    assert new.operating_point.override == "export --operating-point specificity=1"
    assert new.operating_point.replaced["method"] == "youden"


def test_distill_chooses_on_validation_with_device_aggregation(tmp_path, one_torch_thread):
    from acula_edge.checkpoint import load_checkpoint
    from acula_edge.data import load_dataset
    from acula_edge.distill.train import TrainConfig, score_recordings, split_validation, train_student

    cfg = TrainConfig(student="tiny", epochs=1, max_windows_per_recording=2, operating_point="sensitivity=0.8",
                      batch_size=16)
    out = train_student(cfg, None, "synthetic:heart?n=16&seed=2", tmp_path / "st", progress=False)
    model, info = load_checkpoint(out)
    p = info.operating_point
    assert p.method == "sensitivity=0.8" and info.threshold == p.threshold
    assert p.chosen_on.startswith("validation split (groups of 'subset'")
    _, val, _ = split_validation(load_dataset("synthetic:heart?n=16&seed=2"), cfg)
    scores = score_recordings(model, val, info.frontend, info.windowing, info.labels)[:, -1]
    np.testing.assert_allclose(info.extra[VALIDATION_KEY]["score"], scores, atol=1e-6)
    y = np.array([r.label == LABELS[-1] for r in val])
    assert p == choose(y, np.asarray(info.extra[VALIDATION_KEY]["score"]), "sensitivity=0.8", p.chosen_on)
    assert p.n_recordings == len(val) and p.sensitivity >= 0.8

    # export --operating-point chooses again on the stored validation scores; the manifest records the override
    from acula_edge.cli import main
    from acula_edge.manifest import read_manifest

    main(["export", str(out), "--target", "onnx", "--out", str(tmp_path / "b"), "--eval-data",
          "synthetic:heart?n=4&seed=9", "--operating-point", "specificity=1"])
    m = read_manifest(tmp_path / "b")
    again = choose(y, np.asarray(info.extra[VALIDATION_KEY]["score"]), "specificity=1", p.chosen_on)
    assert m.threshold == again.threshold == m.operating_point.threshold and m.operating_point.specificity == 1.0
    assert m.operating_point.override == "export --operating-point specificity=1"
    assert m.operating_point.replaced["method"] == "sensitivity=0.8"


def _recordings() -> list[np.ndarray]:
    return [heart_like(5.0 + i, seed=i) * np.float32(0.2 + 0.15 * i) for i in range(6)]


def test_classify_stream_and_bench_apply_the_manifest_operating_point(tmp_path, one_torch_thread):
    """Export the tiny model with an operating point between the recordings' probabilities; every path decides
    with it, and load(threshold=) replaces it everywhere."""
    import acula_edge
    from acula_edge.bench.accuracy import AccuracyConfig, evaluate, predict
    from acula_edge.checkpoint import CheckpointInfo
    from acula_edge.data import Dataset, Recording
    from acula_edge.export.api import export_model
    from acula_edge.export.calibration import ExportData
    from acula_edge.errors import BundleError
    from acula_edge.manifest import Manifest, read_manifest
    from acula_edge.runtime.model import bundle_operating_point
    from acula_edge.windows import Windows
    from runtime_fixtures import calibration_windows, tiny_model

    base = acula_edge.load(bundle_or_skip("onnx-fp32"), num_threads=1)
    recs = _recordings()
    p = np.array([base.classify(x, 2000).probabilities[-1] for x in recs])
    order = np.sort(p)
    assert order[3] - order[2] > 1e-4, "the tiny model must separate the recordings for this test"
    thr = float((order[2] + order[3]) / 2)  # half the recordings positive, half negative: 0.5 would differ
    point = OperatingPoint(threshold=thr, method="youden", chosen_on="test", n_recordings=6, n_positive=3)

    fe, win = base.frontend, base.windowing
    info = CheckpointInfo(kind="student", architecture="tests.runtime_fixtures:Tiny", model_config={}, frontend=fe,
                          windowing=win, labels=LABELS, embedding_dim=base.manifest.output("embedding").shape[-1],
                          threshold=thr, operating_point=point)
    x = calibration_windows(fe, win, n=6, seed=100)
    windows = Windows(x, np.arange(6), np.zeros(6, np.int64), np.arange(6) % 2, LABELS, source="test")
    data = ExportData(calibration=None, evaluation=windows, held_out=True, note="test")
    bundle = tmp_path / "b"
    export_model(tiny_model(fe, win), info, bundle, "onnx", "fp32", data=data)
    assert read_manifest(bundle).operating_point == point and read_manifest(bundle).threshold == thr

    model = acula_edge.load(bundle, num_threads=1)
    expected = p >= thr
    assert 0 < expected.sum() < len(recs) and not np.array_equal(expected, p >= 0.5)
    for x, want in zip(recs, expected):
        res = model.classify(x, 2000)
        assert res.threshold == thr and res.decision == bool(want)
        assert res.label == LABELS[int(want)]  # the answer follows the operating point, not argmax at 0.5
        assert len(repr(res)) < 400 and f"at threshold {thr:.4g}" in repr(res) and "<12 floats>" in repr(res)
        session = model.stream()
        for k in range(0, x.shape[0], 700):
            session.push(x[k:k + 700], 2000)
        assert session.finish().decision == bool(want)

    ds = Dataset("mem", tuple(Recording(f"r{i}", LABELS[int(e)], {}, samples=x, sample_rate=2000)
                              for i, (x, e) in enumerate(zip(recs, expected))))
    doc = evaluate(predict([model], ds), AccuracyConfig(n_boot=20))[0]
    assert doc["threshold"] == thr and doc["operating_point"] == point.to_dict()
    fig = doc["pooled"][LABELS[-1]]
    assert fig["sensitivity"]["value"] == 1.0 and fig["specificity"]["value"] == 1.0  # labels = the decisions
    assert doc["warnings"] == []

    moved = acula_edge.load(bundle, num_threads=1, threshold=float(order[-1]) + 1e-3)  # above every recording
    assert moved.operating_point.override.startswith("load(threshold=...)")
    assert all(moved.classify(x, 2000).decision is False for x in recs)
    doc = evaluate(predict([moved], ds), AccuracyConfig(n_boot=20))[0]
    assert doc["pooled"][LABELS[-1]]["sensitivity"]["value"] == 0.0
    assert any("does not transfer" in w and "Se 0.000" in w for w in doc["warnings"])
    with pytest.raises(ConfigError, match="threshold=2.0"):
        acula_edge.load(bundle, threshold=2.0)
    edited = read_manifest(bundle).to_dict()
    edited["threshold"] = 0.5  # two facts that disagree are refused, not silently resolved
    with pytest.raises(BundleError, match="differs from its operating point's"):
        bundle_operating_point(Manifest.from_dict(json.loads(json.dumps(edited))))
