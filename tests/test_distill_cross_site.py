"""Cross-site training options: simulated device copies, site x label balanced sampling, the site-adversarial head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_same_weights

from acula_edge.data import load_dataset
from acula_edge.errors import ConfigError
from acula_edge.training import read_jsonl
from acula_edge.distill import train as train_mod
from acula_edge.distill.adversary import SiteAdversary, ramp, reverse_gradient
from acula_edge.distill.device_sim import DeviceSimConfig, simulate_device, simulated_copies
from acula_edge.distill.train import TrainConfig, train_student

DATA = "synthetic:heart?n=16&seed=3"
FAST = dict(student="tiny", epochs=1, batch_size=16, max_windows_per_recording=2, val_fraction=0.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tone(n=8000, rate=2000):
    t = np.arange(n) / rate
    return (0.3 * np.sin(2 * np.pi * 60 * t) + 0.1 * np.sin(2 * np.pi * 700 * t)).astype(np.float32)


def test_simulated_device_is_seeded_keeps_length_and_changes_the_sound():
    x = _tone()
    a = simulate_device(x, np.random.default_rng(5))
    b = simulate_device(x, np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == x.shape and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    outs = [simulate_device(x, np.random.default_rng(s)) for s in range(8)]
    assert all(np.abs(o - x).max() > 1e-3 for o in outs)


def test_each_simulation_step_does_what_it_says():
    x = _tone()
    spec = lambda y: np.abs(np.fft.rfft(y))  # noqa: E731
    only = dict(p_band=0.0, p_resample=0.0, p_peak=0.0, p_noise=0.0, p_clip=0.0, p_codec=0.0, gain_db=0.0)
    # a low-pass below 700 Hz removes the 700 Hz tone, keeps the 60 Hz one
    lp = simulate_device(x, np.random.default_rng(0), DeviceSimConfig(**{**only, "p_band": 1.0,
                                                                        "lowpass": (0.3, 0.35)}))
    s, s0 = spec(lp), spec(x)
    assert s[2800] < 0.05 * s0[2800] and s[240] > 0.5 * s0[240]
    # resampling through half the rate drops everything above the intermediate Nyquist (500 Hz)
    rs = simulate_device(x, np.random.default_rng(0), DeviceSimConfig(**{**only, "p_resample": 1.0,
                                                                        "resample_ratios": (0.5,)}))
    assert spec(rs)[2800] < 0.05 * s0[2800]
    # clipping bounds the peak; an 8-bit codec leaves at most 256 levels
    cl = simulate_device(x, np.random.default_rng(0), DeviceSimConfig(**{**only, "p_clip": 1.0,
                                                                        "clip_fraction": (0.5, 0.5)}))
    assert np.abs(cl).max() <= 0.5 * np.abs(x).max() + 1e-6
    cd = simulate_device(x, np.random.default_rng(0), DeviceSimConfig(**{**only, "p_codec": 1.0,
                                                                        "pcm_bits": (8, 8)}))
    assert len(np.unique(cd)) <= 256


def test_simulated_copies_keep_ids_labels_and_metadata():
    data = load_dataset("synthetic:heart?n=6&seed=1")
    copies = simulated_copies(data, 2000, 2, seed=1)
    assert len(copies) == 2
    for c in copies:
        assert [(r.record_id, r.label, r.metadata) for r in c] == [(r.record_id, r.label, r.metadata) for r in data]
    a, b = copies[0].recordings[0].load(2000), copies[1].recordings[0].load(2000)
    assert a.shape == data.recordings[0].load(2000).shape and not np.array_equal(a, b)
    with pytest.raises(ConfigError, match="device simulation"):
        DeviceSimConfig(lowpass=(0.5, 1.2))


def test_gradient_reversal_and_ramp():
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -0.5))
    assert ramp(0.0) == 0.0 and 0.98 < ramp(0.5) < 1.0 and ramp(2.0) == ramp(1.0)
    head = SiteAdversary(8, 3)
    assert head(torch.randn(4, 8), 1.0).shape == (4, 3)


def test_balanced_sampling_draws_every_site_label_cell_equally():
    cells = np.repeat(np.arange(4), [100, 10, 30, 5])
    order = train_mod._epoch_order(len(cells), TrainConfig(), 0, cells)
    counts = np.bincount(cells[order], minlength=4) / len(order)
    np.testing.assert_allclose(counts, 0.25, atol=0.06)
    assert sorted(train_mod._epoch_order(10, TrainConfig(), 0, None)) == list(range(10))


def test_training_with_every_cross_site_option_and_exact_resume(tmp_path, interrupted_then_resumed):
    data = load_dataset(DATA)
    cfg = TrainConfig(**{**FAST, "epochs": 2}, device_copies=1, balance_column="subset", adversary_column="subset",
                      adversary_weight=0.5)
    train_student(cfg, None, data, tmp_path / "straight", progress=False)
    log = read_jsonl(tmp_path / "straight.run" / "train_log.jsonl")
    plain = TrainConfig(**FAST)
    train_student(plain, None, data, tmp_path / "plain", progress=False)
    plain_log = read_jsonl(tmp_path / "plain.run" / "train_log.jsonl")
    assert log[0]["n_train_windows"] == 2 * plain_log[0]["n_train_windows"]  # clean + one simulated copy
    assert log[0]["adversary_groups"] == sorted({r.metadata["subset"] for r in data})
    assert all("train_adversary" in r for r in log if r["event"] == "epoch")
    interrupted_then_resumed(lambda: train_student(cfg, None, data, tmp_path / "crashed", progress=False))
    assert_same_weights(tmp_path / "straight", tmp_path / "crashed")

def test_cross_site_options_fail_clearly(tmp_path):
    data = load_dataset(DATA)
    with pytest.raises(ConfigError, match="needs adversary_column"):
        TrainConfig(adversary_weight=1.0)
    with pytest.raises(ConfigError, match="have no 'site_x' metadata"):
        train_student(TrainConfig(**FAST, balance_column="site_x"), None, data, tmp_path / "s",
                      progress=False)
    one_site = data.where("subset", [data.recordings[0].metadata["subset"]], keep=True)
    with pytest.raises(ConfigError, match="at least two values"):
        train_student(TrainConfig(**FAST, adversary_column="subset", adversary_weight=1.0), None, one_site,
                      tmp_path / "s", progress=False)


def test_cli_flags_reach_the_training_config(tmp_path, capsys):
    from acula_edge.checkpoint import read_checkpoint_info
    from acula_edge.cli import main

    out = tmp_path / "s"
    try:
        main(["distill", "--teacher", "none", "--data", DATA, "--student", "tiny", "--out", str(out), "--epochs", "1",
              "--batch-size", "16", "--max-windows", "1", "--quiet", "--normalisation", "per_window_band",
              "--device-copies", "1", "--balance-by", "subset", "--adversary-by", "subset"])
    except SystemExit as e:
        assert e.code == 0, capsys.readouterr().err
    info = read_checkpoint_info(out)
    used = info.extra["training_config"]
    assert (used["device_copies"], used["balance_column"], used["adversary_column"], used["adversary_weight"]) == (
        1, "subset", "subset", 0.3)
    assert info.frontend.normalisation == "per_window_band"  # the device runtime normalises as in training
