"""bench accuracy: recording-level predictions equal classify(), shared windows, figures per class and group, the
report, plots and JSON from the CLI, and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_fixtures import bundle_or_skip, heart_like  # noqa: E402

from acula_edge.bench.accuracy import (AccuracyConfig, BundlePredictions, Predictions, evaluate,  # noqa: E402
                                       predict)
from acula_edge.bench.metrics import auroc  # noqa: E402
from acula_edge.bench.report import (ACCURACY_BUNDLE_KEYS, ACCURACY_KEYS, ACCURACY_SCHEMA,  # noqa: E402
                                     accuracy_table)
from acula_edge.cli import main  # noqa: E402
from acula_edge.data import Dataset, Recording  # noqa: E402
from acula_edge.errors import DatasetError  # noqa: E402

FAST = AccuracyConfig(n_boot=50, seed=0)


@pytest.fixture(scope="module")
def bundles() -> list[Path]:
    return [bundle_or_skip("onnx-fp32"), bundle_or_skip("tflite-int8")]


def _dataset() -> Dataset:
    recs = []
    specs = [(6.0, None), (3.0, None), (9.0, (1.0, 6.5)), (5.0, None), (7.0, None), (4.5, None)]
    for i, (seconds, silence) in enumerate(specs):
        x = heart_like(seconds, seed=i, silence=silence) * np.float32(0.3 + 0.1 * i)
        recs.append(Recording(record_id=f"r{i}", label=("normal", "abnormal")[i % 2],
                              metadata={"site": "AB"[i // 3]}, samples=x, sample_rate=2000))
    return Dataset("mem", tuple(recs))


def test_predictions_equal_classify_and_windows_are_shared(bundles, monkeypatch):
    from acula_edge.runtime.model import EdgeModel, load

    models = [load(b, num_threads=1) for b in bundles]
    ds = _dataset()
    calls = []
    real = EdgeModel.prepare
    monkeypatch.setattr(EdgeModel, "prepare", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    pred = predict(models, ds, group_by="site")
    assert len(calls) == len(ds)  # the front-end runs once per recording, not once per bundle
    assert pred.record_ids == [r.record_id for r in ds] and pred.groups == ["A", "A", "A", "B", "B", "B"]
    for m, bp in zip(models, pred.bundles):
        for r, rec in enumerate(ds):
            expected = m.classify(rec.samples, rec.sample_rate, pad=True)  # the bench pads short recordings too
            np.testing.assert_allclose(bp.probabilities[r], expected.probabilities, atol=1e-6)
            np.testing.assert_allclose(bp.embeddings[r], expected.embedding, atol=1e-5)
    assert pred.bundles[0].n_excluded > 0  # the silent stretch was left out, as classify does


def _fake(probs: np.ndarray, labels: tuple[str, ...], threshold: float = 0.5, name: str = "b") -> BundlePredictions:
    info = {"bundle": name, "target": "onnx", "precision": "fp32", "runtime": "fake", "labels": list(labels),
            "threshold": threshold, "model_bytes": 1}
    return BundlePredictions(bundle=name, info=info, probabilities=probs.astype(np.float32),
                             embeddings=np.zeros((probs.shape[0], 2), np.float32))


def test_binary_figures_use_the_manifest_threshold_and_last_label():
    p_pos = np.array([0.9, 0.6, 0.4, 0.65, 0.2, 0.1])
    labels = ["abnormal", "abnormal", "abnormal", "normal", "normal", "normal"]
    probs = np.stack([1 - p_pos, p_pos], axis=1)
    pred = Predictions("mem", [f"r{i}" for i in range(6)], labels, None,
                       [_fake(probs, ("normal", "abnormal"), threshold=0.62)])
    (rec,) = evaluate(pred, FAST)
    fig = rec["pooled"]["abnormal"]
    # at 0.62: positives 0.9 yes, 0.6 no, 0.4 no -> Se 1/3; negatives 0.65 yes, 0.2, 0.1 no -> Sp 2/3
    assert fig["sensitivity"]["value"] == pytest.approx(1 / 3) and fig["specificity"]["value"] == pytest.approx(2 / 3)
    assert fig["auroc"]["value"] == pytest.approx(auroc(np.array(labels) == "abnormal", p_pos))
    assert fig["n"] == 6 and fig["n_positive"] == 3 and rec["task"] == "binary" and rec["by_group"] == {}


def test_multiclass_figures_are_one_vs_rest_by_argmax():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.45, 0.15], [0.5, 0.1, 0.4]])
    labels = ["normal", "crackle", "wheeze", "normal", "wheeze"]
    pred = Predictions("mem", list("abcde"), labels, ["x", "x", "y", "y", "y"],
                       [_fake(probs, ("normal", "crackle", "wheeze"))])
    (rec,) = evaluate(pred, FAST)
    assert rec["task"] == "multiclass" and list(rec["pooled"]) == ["normal", "crackle", "wheeze"]
    normal = rec["pooled"]["normal"]
    # argmax: normal, crackle, wheeze, crackle, normal -> class normal: Se 1/2 (a yes, d no), Sp 2/3 (e wrong)
    assert normal["sensitivity"]["value"] == pytest.approx(0.5)
    assert normal["specificity"]["value"] == pytest.approx(2 / 3)
    assert rec["pooled"]["crackle"]["auroc"]["value"] == pytest.approx(
        auroc(np.array(labels) == "crackle", probs[:, 1]))
    assert set(rec["by_group"]) == {"x", "y"} and rec["by_group"]["x"]["normal"]["n"] == 2
    assert rec["by_group"]["x"]["wheeze"]["auroc"]["value"] is None  # no wheeze in group x: undefined, not 0.5


def test_unknown_labels_in_the_data_are_an_error():
    probs = np.array([[0.5, 0.5], [0.2, 0.8]])
    pred = Predictions("mem", ["a", "b"], ["normal", "murmur"], None, [_fake(probs, ("normal", "abnormal"))])
    with pytest.raises(DatasetError, match=r"labels \['murmur'\].*does not know"):
        evaluate(pred, FAST)


def test_agreement_with_the_first_bundle():
    probs = np.array([[0.3, 0.7], [0.8, 0.2], [0.45, 0.55]])
    other = probs + np.array([[0.0, 0.0], [0.0, 0.0], [0.1, -0.1]])
    pred = Predictions("mem", list("abc"), ["abnormal", "normal", "abnormal"], None,
                       [_fake(probs, ("normal", "abnormal"), name="fp32"),
                        _fake(other, ("normal", "abnormal"), name="int8")])
    recs = evaluate(pred, FAST)
    vs = recs[1]["vs_first"]
    assert vs["bundle"] == "fp32" and vs["max_abs_probability_diff"] == pytest.approx(0.1, abs=1e-6)
    assert vs["decisions_differ"] == 1 and vs["decision_agreement"] == pytest.approx(2 / 3)
    assert "vs_first" not in recs[0]


def test_cli_accuracy_end_to_end(bundles, tmp_path, capsys):
    lat = tmp_path / "lat.json"
    main(["bench", "latency", *map(str, bundles), "--runs", "5", "--warmup", "1", "--min-seconds", "0",
          "--json-out", str(lat)])
    capsys.readouterr()
    out_json, plots, report = tmp_path / "acc.json", tmp_path / "plots", tmp_path / "rep" / "report.md"
    main(["bench", "accuracy", *map(str, bundles), "--data", "synthetic:heart?n=8&seed=2", "--group-by", "subset",
          "--n-boot", "40", "--json-out", str(out_json), "--plots", str(plots), "--report", str(report),
          "--latency-json", str(lat)])
    printed = capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == ACCURACY_SCHEMA and set(ACCURACY_KEYS) <= set(doc)
    assert doc["n_recordings"] == 8 and sum(doc["label_counts"].values()) == 8
    assert set(doc["groups"]) == {"A", "B", "C", "D"} and "not an unseen-site estimate" in doc["group_note"]
    for b in doc["bundles"]:
        assert set(ACCURACY_BUNDLE_KEYS) <= set(b)
        assert list(b["pooled"]) == ["abnormal"] and set(b["by_group"]) == {"A", "B", "C", "D"}
        assert b["pooled"]["abnormal"]["n"] == 8 and b["pooled"]["abnormal"]["auroc"]["n_boot"] == 40
    assert "vs_first" in doc["bundles"][1]
    for png in ("roc.png", "latency_accuracy.png"):
        assert (plots / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.read_text()
    assert "## Accuracy (recording level)" in text and "## Latency" in text and "## Agreement" in text
    assert "](../plots/roc.png)" in text and "not an unseen-site estimate" in text
    assert "--group-by subset" in text
    assert "tflite int8" in printed and "note: Per-group figures" in printed
    assert "## Decision (the answer the device gives)" in text and "decision (the answer the device gives):" in printed
    assert "manifest threshold" in printed  # the fixture bundles predate the recorded operating point
    assert accuracy_table(doc).splitlines()[0].split()[:3] == ["bundle", "target", "class"]


@pytest.mark.parametrize("args, message", [
    (["{missing}", "--data", "synthetic:heart?n=2"], "no such bundle folder"),
    (["{bundle}", "--data", "synthetic:heart?n=2", "--group-by", "ward"], "no metadata column 'ward'"),
    (["{bundle}", "--data", "synthetic:heart?n=2", "--latency-json", "{bad_json}"], "not a acula-edge/bench-latency"),
])
def test_cli_accuracy_errors_are_one_line(bundles, tmp_path, capsys, args, message):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"schema": "something-else"}))
    subs = {"missing": str(tmp_path / "nope"), "bundle": str(bundles[0]), "bad_json": str(bad)}
    with pytest.raises(SystemExit) as e:
        main(["bench", "accuracy", *(a.format(**subs) for a in args)])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and message in err[0]


def test_bundle_spec_parse(tmp_path):
    from acula_edge.bench.accuracy import BundleSpec

    assert BundleSpec.parse("out/onnx-fp32") == BundleSpec("out/onnx-fp32")
    assert BundleSpec.parse("a=out/fold-a/onnx") == BundleSpec("out/fold-a/onnx", "a")
    odd = tmp_path / "x=y"
    odd.mkdir()
    assert BundleSpec.parse(str(odd)) == BundleSpec(str(odd))  # an existing folder with '=' stays a path


def test_folds_are_pooled_per_target_and_precision():
    from acula_edge.bench.accuracy import pool_folds

    labels = ["abnormal", "normal", "abnormal", "normal", "abnormal", "normal"]
    groups = ["a", "a", "b", "b", "c", "c"]
    nan = np.full(2, np.nan)
    fa = _fake(np.array([[0.2, 0.8], [0.7, 0.3], nan, nan, nan, nan]), ("normal", "abnormal"), 0.5, "fold-a")
    fb = _fake(np.array([nan, nan, [0.45, 0.55], [0.4, 0.6], nan, nan]), ("normal", "abnormal"), 0.58, "fold-b")
    fa.held_out, fb.held_out = "a", "b"
    plain = _fake(np.tile([0.5, 0.5], (6, 1)), ("normal", "abnormal"), 0.5, "plain")
    pred = Predictions("mem", list("uvwxyz"), labels, groups, [fa, plain, fb])
    recs = evaluate(pred, FAST)
    assert [r["kind"] for r in recs] == ["bundle", "leave-one-group-out"]
    logo = recs[1]
    assert logo["folds"] == {"a": "fold-a", "b": "fold-b"} and logo["threshold"] == {"a": 0.5, "b": 0.58}
    fig = logo["pooled"]["abnormal"]
    assert fig["n"] == 4 and set(logo["by_group"]) == {"a", "b"}  # group c has no fold: not scored
    # decisions at each fold's own threshold: 0.8 >= .5 yes, 0.3 no, 0.55 < .58 no, 0.6 >= .58 yes
    assert fig["sensitivity"]["value"] == pytest.approx(0.5) and fig["specificity"]["value"] == pytest.approx(0.5)
    assert logo["by_group"]["a"]["abnormal"]["auroc"]["value"] == 1.0
    assert logo["by_group"]["b"]["abnormal"]["auroc"]["value"] == 0.0
    assert "site_probe" in recs[0] and "site_probe" not in logo  # folds embed one group each: no probe
    fb2 = _fake(fb.probabilities, ("normal", "abnormal"), 0.5, "fold-b-again")
    fb2.held_out = "a"
    with pytest.raises(Exception, match="two onnx fp32 bundles hold out group 'a'"):
        pool_folds([fa, fb2], groups)


def test_fold_bundles_run_on_their_group_only(bundles):
    from acula_edge.bench.accuracy import BundleSpec, bench_accuracy

    onnx, int8 = map(str, bundles)
    doc, pred = bench_accuracy([f"A={onnx}", BundleSpec(onnx, "B"), int8], "synthetic:heart?n=8&seed=2",
                               AccuracyConfig(n_boot=20, group_by="subset"))
    fold_a, fold_b, plain = pred.bundles
    groups = np.array(pred.groups)
    assert fold_a.scored.tolist() == (groups == "A").tolist() and fold_b.scored.tolist() == (groups == "B").tolist()
    assert plain.scored.all()
    # the same bundle on the same recordings gives the same numbers as a plain run
    np.testing.assert_allclose(fold_a.probabilities[groups == "A"], pred.bundles[0].probabilities[groups == "A"])
    kinds = {b["kind"]: b for b in doc["bundles"]}
    assert set(kinds) == {"bundle", "leave-one-group-out"}
    logo = kinds["leave-one-group-out"]
    assert logo["pooled"]["abnormal"]["n"] == int(np.isin(groups, ["A", "B"]).sum())
    assert logo["folds"] == {"A": onnx, "B": onnx}
    with pytest.raises(Exception, match="needs --group-by"):
        bench_accuracy([f"A={onnx}"], "synthetic:heart?n=4", AccuracyConfig(n_boot=5))


def test_site_probe_finds_device_information_and_separates_the_label_route():
    from acula_edge.bench.probe import site_probe

    rng = np.random.default_rng(0)
    n = 160
    groups = np.array(list("ABCD"))[np.arange(n) % 4]
    # label rates differ by site (A, B mostly abnormal), the classic confound
    p_abn = np.where(np.isin(groups, ["A", "B"]), 0.8, 0.2)
    labels = np.where(rng.random(n) < p_abn, "abnormal", "normal")
    noise = rng.standard_normal((n, 8))
    clean = site_probe(noise, groups, labels)
    assert clean["chance"] == 0.25 and clean["balanced_accuracy"] < 0.4
    device = noise.copy()
    device[:, :4] += 3.0 * (groups[:, None] == np.array(list("ABCD"))[None])
    leaky = site_probe(device, groups, labels)
    assert leaky["balanced_accuracy"] > 0.9 and leaky["within_label_mean"] > 0.75
    two = np.where(np.isin(groups, ["A", "B"]), "AB", "CD")  # two sites, 80 % vs 20 % abnormal
    label_only = noise.copy()
    label_only[:, 0] += 4.0 * (labels == "abnormal")
    via_label = site_probe(label_only, two, labels)
    assert via_label["chance"] == 0.5
    assert via_label["balanced_accuracy"] > 0.7  # finds the site through the label ...
    assert via_label["within_label_mean"] < 0.62  # ... which the within-label probe cannot
    assert site_probe(noise, groups, labels) == clean  # deterministic
    with_nan = noise.copy()
    with_nan[:10] = np.nan
    assert site_probe(with_nan, groups, labels)["n"] == n - 10
    assert site_probe(noise, ["A"] * n) is None


def test_roc_png_has_one_panel_per_class_for_multiclass(tmp_path):
    from acula_edge.bench.plots import roc_png

    rng = np.random.default_rng(0)
    labels = ["normal", "crackle", "wheeze"] * 4
    probs = rng.dirichlet(np.ones(3), size=12)
    pred = Predictions("mem", [f"r{i}" for i in range(12)], labels, None,
                       [_fake(probs, ("normal", "crackle", "wheeze"))])
    out = roc_png(pred, tmp_path / "roc.png")
    from matplotlib.image import imread

    h, w = imread(str(out)).shape[:2]
    assert w > 2.5 * h  # three panels side by side
