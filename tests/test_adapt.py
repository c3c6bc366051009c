"""Site adaptation from unlabeled recordings and the device's site-shift warning (tiny synthetic data, sites =
synthetic subsets)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acula_edge.adapt import AdaptConfig, adapt, prior_threshold
from acula_edge.errors import BundleError, ConfigError, DatasetError
from acula_edge.runtime import site_shift
from acula_edge.runtime.site_shift import (DESCRIPTION_KEY, FeatureAccumulator, FrontendCorrection, SiteDescription,
                                           batch_verdict, describe, recording_features, site_stats)

TRAIN = "synthetic:heart?n=32&seed=1"
SITE = "synthetic:heart?n=24&seed=5"


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``acula-edge ARGS`` run in this process (no second torch import)."""
    from acula_edge.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _frames(rng: np.random.Generator, n: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (mean + std * rng.standard_normal((n, mean.size))).astype(np.float32)


# -- device side: description, score, correction -------------------------------------------------------------------

def test_recording_features_and_stream_accumulator_agree():
    rng = np.random.default_rng(0)
    frames = _frames(rng, 500, np.linspace(-5, 1, 8), np.linspace(0.5, 2, 8))
    acc = FeatureAccumulator(8)
    assert acc.features() is None
    for piece in np.array_split(frames, 7):
        acc.push(piece)
    np.testing.assert_allclose(acc.features(), recording_features(frames), rtol=1e-5, atol=1e-5)
    f = recording_features(frames)
    np.testing.assert_allclose(f[:8], frames.mean(0), rtol=1e-5)
    np.testing.assert_allclose(f[8:], frames.std(0), rtol=1e-4)


def test_shift_score_flags_shifted_recordings_not_training_like_ones():
    rng = np.random.default_rng(1)
    mean, std = np.linspace(-6, 0, 16), np.full(16, 1.0)

    def recs(n: int, offset: float) -> np.ndarray:
        return np.stack([recording_features(_frames(rng, 200, mean + offset + 0.3 * rng.standard_normal(16), std))
                         for _ in range(n)])

    desc = describe(recs(200, 0.0), prevalence=0.4)
    same, shifted = desc.check(recs(50, 0.0)), desc.check(recs(50, 2.0))
    assert same["fraction_flagged"] <= 0.1 and not same["batch_flagged"]
    assert shifted["fraction_flagged"] == 1.0 and shifted["batch_flagged"]
    assert np.median(shifted["scores"]) > 3 * np.median(same["scores"])
    # round trip through the manifest's JSON, a few KB
    text = json.dumps(desc.to_dict())
    assert len(text) < 8000
    back = SiteDescription.from_dict(json.loads(text))
    assert back.n_recordings == 200 and back.prevalence == 0.4
    probe = recs(3, 2.0)
    np.testing.assert_allclose(back.score(probe), desc.score(probe), rtol=1e-3)
    with pytest.raises(BundleError, match="malformed site_description"):
        SiteDescription.from_dict({"feature_mean": [0.0]}, "x/manifest.json")
    with pytest.raises(BundleError, match="inconsistent lengths"):
        SiteDescription.from_dict({**desc.to_dict(), "band_std": [1.0]})


def test_batch_verdict_counts_flagged_recordings():
    v = [{"score": 3.0, "threshold": 2.0, "flagged": True}, {"score": 1.0, "threshold": 2.0, "flagged": False},
         {"score": 2.5, "threshold": 2.0, "flagged": True}, None]
    b = batch_verdict(v)
    assert b["n"] == 3 and b["flagged"] == 2 and b["batch_flagged"] and b["median_score"] == 2.5
    assert batch_verdict([None, None]) is None


def test_frontend_correction_maps_site_statistics_onto_training():
    rng = np.random.default_rng(2)
    t_mean, t_std = np.linspace(-4, 0, 6), np.linspace(0.5, 1.5, 6)
    train = describe(np.stack([recording_features(_frames(rng, 300, t_mean, t_std)) for _ in range(20)]))
    site_frames = [_frames(rng, 300, 2.0 * t_mean + 3.0, 2.0 * t_std) for _ in range(20)]
    corr = FrontendCorrection.between(site_stats(np.stack([recording_features(f) for f in site_frames])), train)
    fixed = np.stack([recording_features(corr.apply(f)) for f in site_frames])
    mean, std = site_stats(fixed)
    np.testing.assert_allclose(mean, train.band_mean, atol=1e-3)
    np.testing.assert_allclose(std, train.band_std, rtol=1e-3)
    offset_only = FrontendCorrection.between(site_stats(fixed), train, match_scale=False)
    assert offset_only.scale == (1.0,) * 6
    with pytest.raises(BundleError, match="frontend_correction has 6 bands, the front-end 8"):
        FrontendCorrection.from_dict(corr.to_dict(), 8)


def test_prior_threshold_calls_the_training_prevalence_positive():
    scores = np.linspace(0.0, 1.0, 101)
    thr = prior_threshold(scores, 0.3)
    assert thr == pytest.approx(0.7)
    assert np.mean(scores >= thr) == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ValueError, match="prevalence in"):
        prior_threshold(scores, 1.0)


def test_adabn_reestimates_batch_norm_only(one_torch_thread):
    import torch

    from acula_edge.adapt import adabn
    from acula_edge.distill.students import build_student

    torch.manual_seed(0)
    model = build_student("tiny", 16, 2, input_norm=True).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = (np.random.default_rng(3).standard_normal((40, 196, 32)) * 2.0 + 5.0).astype(np.float32)
    adapted = adabn(model, x, batch_size=8)
    for k, v in model.state_dict().items():  # the source model is untouched
        torch.testing.assert_close(v, before[k])
    bn_in = adapted.input_norm
    assert bn_in.running_mean.item() == pytest.approx(float(x.mean()), abs=1e-3)
    assert bn_in.running_var.item() == pytest.approx(float(x.var()), rel=0.05)
    assert not adapted.training and bn_in.momentum == model.input_norm.momentum
    changed = [k for k in before if not torch.equal(before[k], adapted.state_dict()[k])]
    assert changed and all("running_" in k or "num_batches" in k for k in changed)
    with pytest.raises(ValueError, match="at least 2 windows"):
        adabn(model, x[:1])


# -- adapt: checkpoint and bundle ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny student trained on synthetic heart sounds and its fp32 ONNX bundle."""
    import torch

    from acula_edge.distill.train import TrainConfig, train_student
    from acula_edge.export.api import export_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("adapt")
    cfg = TrainConfig(student="tiny", epochs=1, max_windows_per_recording=1, val_fraction=0.0, batch_size=16)
    ckpt = train_student(cfg, None, TRAIN, root / "ckpt", progress=False)
    export_checkpoint(ckpt, root / "bundle", target="onnx")
    return ckpt, root / "bundle"


def test_training_and_export_carry_the_site_description(trained):
    from acula_edge.manifest import read_manifest

    ckpt, bundle = trained
    extra = json.loads((ckpt / "config.json").read_text())["extra"]
    desc = SiteDescription.from_dict(extra[DESCRIPTION_KEY])
    assert desc.n_recordings == 32 and desc.n_mels == 32 and desc.prevalence == pytest.approx(0.5)
    assert read_manifest(bundle).extra[DESCRIPTION_KEY] == extra[DESCRIPTION_KEY]


def test_adapt_bundle_fe_norm_and_threshold(trained, tmp_path):
    from acula_edge.export.verify import verify_bundle
    from acula_edge.manifest import read_manifest
    from acula_edge.runtime import load

    _, bundle = trained
    before = (bundle / "manifest.json").read_bytes()
    m = adapt(bundle, SITE, tmp_path / "site", AdaptConfig(methods=("fe-norm", "threshold"), min_recordings=10))
    assert (bundle / "manifest.json").read_bytes() == before  # the source is never modified
    src = read_manifest(bundle)
    rec = m.extra["adaptation"]
    assert rec["methods"] == ["fe-norm", "threshold"] and rec["n_recordings"] == 24 and rec["source_kind"] == "bundle"
    assert len(rec["recordings_sha256"]) == 64 and set(rec["estimated"]) == {"fe-norm", "threshold"}
    assert m.model_sha256 == src.model_sha256  # no weight changes
    assert m.extra[site_shift.CORRECTION_KEY]["scale"] != [1.0] * 32
    verify_bundle(tmp_path / "site")  # the adapted bundle passes verify
    # the threshold calls the training prevalence positive on the site's recordings, on the device runtime
    edge = load(tmp_path / "site", num_threads=1)
    from acula_edge.data import load_dataset

    need = edge.window_samples
    p = np.array([edge.classify(r.load(2000, min_samples=need, pad=True), 2000).probabilities[-1]
                  for r in load_dataset(SITE)])
    assert np.mean(p >= m.threshold) == pytest.approx(0.5, abs=0.05)
    assert m.operating_point.threshold == m.threshold  # the operating point says it was replaced, and by what
    assert m.operating_point.override.startswith("acula-edge adapt --method threshold")
    # the front-end correction is applied by the runtime: same audio, other probabilities than the source bundle
    x = load_dataset(SITE).recordings[0].load(2000)
    assert not np.allclose(load(bundle).classify(x, 2000).probabilities, edge.classify(x, 2000).probabilities)
    # re-adapting into the same folder (written by adapt) is allowed; "auto" from a bundle re-chooses the threshold
    m2 = adapt(bundle, SITE, tmp_path / "site", AdaptConfig(min_recordings=10))
    assert m2.extra["adaptation"]["methods"] == ["threshold"]
    assert site_shift.CORRECTION_KEY not in m2.extra


def test_adapt_refuses_unsafe_requests(trained, tmp_path):
    ckpt, bundle = trained
    with pytest.raises(ConfigError, match="the source is never replaced"):
        adapt(bundle, SITE, bundle, AdaptConfig(min_recordings=10))
    with pytest.raises(ConfigError, match="the source is never replaced"):
        adapt(bundle, SITE, bundle / "inside", AdaptConfig(min_recordings=10))
    with pytest.raises(ConfigError, match="adabn re-estimates the model's weights and needs the checkpoint"):
        adapt(bundle, SITE, tmp_path / "x", AdaptConfig(methods=("adabn",), min_recordings=10))
    with pytest.raises(DatasetError, match="24 recording\\(s\\); adaptation needs at least 30"):
        adapt(bundle, SITE, tmp_path / "x", AdaptConfig(min_recordings=30))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="exists, is not empty and was not written by acula-edge"):
        adapt(bundle, SITE, other, AdaptConfig(min_recordings=10))
    assert (other / "notes.txt").read_text() == "keep"
    import shutil

    original = tmp_path / "another-original"  # a bundle that adapt did not write is never replaced either
    shutil.copytree(bundle, original)
    before = (original / "manifest.json").read_bytes()
    with pytest.raises(ConfigError, match="exists and is not a bundle written by 'acula-edge adapt'"):
        adapt(bundle, SITE, original, AdaptConfig(min_recordings=10))
    assert (original / "manifest.json").read_bytes() == before
    with pytest.raises(ConfigError, match="choose one or more of"):
        AdaptConfig(methods=("magic",))
    assert not (tmp_path / "x").exists()


def test_adapt_cli_checkpoint_adabn_passes_verify(trained, tmp_path, capsys):
    ckpt, _ = trained
    out = tmp_path / "ckpt-site"
    code, stdout, stderr = _cli(capsys, "adapt", str(ckpt), "--data", SITE, "--out", str(out), "--method", "fe-norm",
                                "--method", "adabn", "--target", "onnx", "--min-recordings", "10", "--json")
    assert code == 0, stderr
    rec = json.loads(stdout.strip().splitlines()[-1])
    assert rec["source_kind"] == "checkpoint" and "adabn" in rec["estimated"]
    assert "batch-norm layers from" in rec["estimated"]["adabn"]
    assert rec["adapted_weights_sha256"] != rec["source_weights_sha256"]
    code, stdout, stderr = _cli(capsys, "verify", str(out))
    assert code == 0, stderr
    assert f"{out}: ok" in stdout
    code, _, stderr = _cli(capsys, "adapt", str(ckpt), "--data", "synthetic:heart?n=12&seed=5", "--out",
                           str(tmp_path / "y"))
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith(
        "error: synthetic:heart?n=12&seed=5: 12 recording(s); adaptation needs at least 20 unlabeled recordings")
    assert not (tmp_path / "y").exists()


def test_classify_and_stream_flag_audio_unlike_training(trained, tmp_path, capsys):
    import soundfile as sf

    from acula_edge.data import load_dataset
    from acula_edge.runtime import load

    _, bundle = trained
    edge = load(bundle, num_threads=1)
    x = load_dataset(TRAIN).recordings[0].load(2000)
    ok = edge.classify(x, 2000)
    loud = np.clip(x * 40.0, -1, 1) + 0.05 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    far = edge.classify(loud, 2000)
    assert not ok.site_shift["flagged"] and far.site_shift["flagged"]
    assert far.site_shift["score"] > far.site_shift["threshold"] > ok.site_shift["score"]
    assert far.to_dict()["site_shift"] == far.site_shift
    long = np.tile(loud, 4)  # long enough for the session's frame buffer to wrap several times
    for audio, pieces in ((loud, np.array_split(loud, 9)), (long, [long[i:i + 333] for i in range(0, long.size, 333)])):
        s = edge.stream()
        for piece in pieces:
            s.push(piece, 2000)
        streamed = s.finish()
        # every frame of the recording counts, as offline, whatever the chunks (the score is rounded to 4 places)
        assert streamed.site_shift == edge.classify(audio, 2000).site_shift
    sf.write(tmp_path / "loud.wav", loud, 2000)
    sf.write(tmp_path / "ok.wav", x, 2000)
    code, stdout, stderr = _cli(capsys, "classify", str(bundle), str(tmp_path / "loud.wav"), str(tmp_path / "ok.wav"))
    assert code == 0, stderr
    assert "UNLIKE TRAINING" in stdout.splitlines()[1] and "UNLIKE" not in stdout.splitlines()[2]
    assert "warning: site shift: 1 of 2 recording(s) unlike the bundle's training audio" in stderr


def test_bench_accuracy_reports_the_site_shift_per_group(trained):
    from acula_edge.bench.accuracy import AccuracyConfig, bench_accuracy
    from acula_edge.bench.report import site_shift_table

    _, bundle = trained
    doc, _ = bench_accuracy([bundle], "synthetic:heart?n=8&seed=3", AccuracyConfig(group_by="subset", n_boot=20))
    shift = doc["bundles"][0]["site_shift"]
    assert shift["pooled"]["n"] == 8 and set(shift["by_group"]) == {"A", "B", "C", "D"}
    assert sum(v["n"] for v in shift["by_group"].values()) == 8
    table = site_shift_table(doc, markdown=True)
    assert table.splitlines()[0] == "| bundle | flagged (all) | flagged (A) | flagged (B) | flagged (C) | flagged (D) |"


def test_adapt_a_bundle_without_description_needs_the_training_data(trained, tmp_path):
    import dataclasses
    import shutil

    from acula_edge.manifest import read_manifest, write_manifest

    _, bundle = trained
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    m = read_manifest(old)  # a bundle exported before bundles described their training audio:
    write_manifest(dataclasses.replace(m, extra={k: v for k, v in m.extra.items() if k != DESCRIPTION_KEY}), old)
    with pytest.raises(ConfigError, match="carries no description of its training audio; pass --train-data SPEC"):
        adapt(old, SITE, tmp_path / "a", AdaptConfig(min_recordings=10))
    m = adapt(old, SITE, tmp_path / "a", AdaptConfig(min_recordings=10, train_data=TRAIN))
    desc = SiteDescription.from_dict(m.extra[DESCRIPTION_KEY])
    assert desc.n_recordings == 32 and desc.prevalence == pytest.approx(0.5)
    assert m.extra["adaptation"]["methods"] == ["threshold"]
