"""Distillation losses, recording-level metrics and augmentation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from acula_edge.errors import ConfigError
from acula_edge.frontend import preset
from acula_edge.distill.augment import AugmentConfig, Augmenter
from acula_edge.distill.losses import DistillConfig, distill_loss, kd_loss
from acula_edge.distill.metrics import auroc, binary_metrics, recording_metrics

FE, WIN = preset("heart")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_kd_is_zero_for_equal_logits_and_matches_t2_scaled_kl():
    a = torch.tensor([[1.0, -1.0], [0.3, 0.2]])
    assert torch.allclose(kd_loss(a, a, 3.0), torch.zeros(2), atol=1e-7)
    t = torch.tensor([[2.0, 0.0]])
    s = torch.tensor([[0.0, 0.0]])
    p = torch.softmax(t / 2.0, -1)
    expected = (p * (p.log() - math.log(0.5))).sum() * 4.0
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(float(expected), rel=1e-6)


def test_terms_and_weights():
    torch.manual_seed(0)
    emb, logits = torch.randn(4, 8), torch.randn(4, 2)
    y = torch.tensor([0, 1, -1, 1])
    cfg = DistillConfig(w_cosine=2.0, w_distance=0.0, w_kd=0.0, w_ce=1.0, class_balanced=False)
    total, parts = distill_loss(cfg, emb, logits, y, teacher_emb=emb.clone())
    assert set(parts) == {"cosine", "ce"} and parts["cosine"] == pytest.approx(0.0, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits[[0, 1, 3]], y[[0, 1, 3]])
    assert parts["ce"] == pytest.approx(float(ce), rel=1e-6) and float(total) == pytest.approx(parts["ce"], rel=1e-5)
    # teacher outputs only where has_teacher: the distance is taken over those rows only
    t_emb = emb.clone()
    t_emb[1] += 10.0
    _, parts = distill_loss(DistillConfig(w_cosine=0, w_kd=0, w_ce=0), emb, logits, y, teacher_emb=t_emb,
                            has_teacher=torch.tensor([True, False, True, True]))
    assert parts == {"distance": pytest.approx(0.0, abs=1e-7)}
    _, parts = distill_loss(DistillConfig(w_cosine=0, w_kd=0, w_ce=0, distance="l1"), emb, logits, y,
                            teacher_emb=t_emb, teacher_scale=2.0)
    assert parts["distance"] == pytest.approx(10.0 / 2.0 / 4.0, rel=1e-5)  # one of 4 rows differs by 5 in units


def test_class_balanced_weights_give_each_class_equal_say():
    logits = torch.tensor([[5.0, 0.0]] * 3 + [[0.0, 5.0]])  # all correct
    logits_wrong_minority = logits.clone()
    logits_wrong_minority[3] = torch.tensor([5.0, 0.0])
    y = torch.tensor([0, 0, 0, 1])
    cw = torch.tensor([4 / 6, 4 / 2])
    cfg = DistillConfig(w_cosine=0, w_distance=0, w_kd=0)
    _, balanced = distill_loss(cfg, torch.zeros(4, 2), logits_wrong_minority, y, cw)
    _, plain = distill_loss(dataclasses.replace(cfg, class_balanced=False), torch.zeros(4, 2),
                            logits_wrong_minority, y, cw)
    assert balanced["ce"] > 1.5 * plain["ce"]


def test_loss_needs_a_term_and_a_valid_config():
    with pytest.raises(ConfigError, match="no loss term applies"):
        distill_loss(DistillConfig(), torch.zeros(2, 3), torch.zeros(2, 2), torch.tensor([-1, -1]))
    with pytest.raises(ConfigError, match="temperature must be positive"):
        DistillConfig(temperature=0)
    with pytest.raises(ConfigError, match="distance must be one of"):
        DistillConfig(distance="huber")


def test_auroc_and_binary_metrics():
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.7, 0.2]))
    assert (m["se"], m["sp"], m["macc"]) == (0.5, 0.5, 0.5)


def test_recording_metrics_average_window_probabilities():
    # recording 0 (normal): windows strongly normal; recording 1 (abnormal): one confident abnormal window
    logits = np.array([[3.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.5, 0.0]])
    rec = np.array([0, 0, 1, 1])
    m = recording_metrics(logits, rec, np.array([0, 1]))
    assert m["auroc"] == 1.0 and m["se"] == 1.0 and m["sp"] == 1.0 and m["n"] == 2
    m3 = recording_metrics(np.eye(3)[[0, 1, 2, 2]] * 5, np.array([0, 1, 2, 3]), np.array([0, 1, 2, 1]))
    assert m3["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)


def _x(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, WIN.frames_per_window(FE), FE.n_mels, generator=g)


def test_augmentation_is_seeded_shape_preserving_and_off_is_identity():
    x = _x()
    aug = Augmenter(AugmentConfig(), FE)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x) and torch.isfinite(a).all()
    assert torch.equal(Augmenter(AugmentConfig.off(), FE)(x, torch.Generator().manual_seed(1)), x)


def test_gain_is_a_db_offset_in_log_mel_units():
    cfg = dataclasses.replace(AugmentConfig.off(), p_gain=1.0, gain_db=10.0)
    fe = dataclasses.replace(FE, norm_std=2.0)
    x = _x(64)
    d = (Augmenter(cfg, fe)(x, torch.Generator().manual_seed(0)) - x)[:, 0, 0, 0]
    assert d.abs().max() <= math.log(10.0) / 2.0 + 1e-6  # 10 dB of power = ln(10) nats, / norm_std
    assert d.abs().max() > 0.5 * math.log(10.0) / 2.0


def test_eq_response_is_smooth_and_bounded():
    cfg = dataclasses.replace(AugmentConfig.off(), eq_tilt_db=6.0, eq_ripple_db=3.0)
    aug = Augmenter(cfg, FE)
    resp = aug.eq_response(16, FE.n_mels, torch.Generator().manual_seed(0))
    per_db = math.log(10.0) / 10.0
    assert resp.abs().max() <= (3.0 + 3.0) * per_db + 1e-6
    assert resp.diff(dim=1).abs().max() < 0.5 * (6.0 * per_db)  # no jumps between neighbouring mel bands


def test_masks_time_shift_and_per_window_normalisation():
    x = _x(8)
    masks = dataclasses.replace(AugmentConfig.off(), p_mask=1.0, time_masks=1, max_time_mask=30, freq_masks=0)
    y = Augmenter(masks, FE)(x, torch.Generator().manual_seed(3))
    changed_frames = (y != x).any(dim=3)[:, 0]  # (B, T)
    assert changed_frames.sum(1).max() <= 30 and changed_frames.any()
    shift = dataclasses.replace(AugmentConfig.off(), p_shift=1.0, max_shift_frames=5)
    s = Augmenter(shift, FE)(x, torch.Generator().manual_seed(0))
    assert any(torch.equal(s[0], torch.roll(x[0], k, dims=1)) for k in range(-5, 6))
    fe = dataclasses.replace(FE, normalisation="per_window")
    z = Augmenter(AugmentConfig(), fe)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(8, 1), atol=1e-4)
    assert torch.allclose(z.std(dim=(2, 3), unbiased=False), torch.ones(8, 1), atol=1e-3)


def test_noise_mixing_only_adds_power():
    cfg = dataclasses.replace(AugmentConfig.off(), p_noise=1.0, noise_snr_db=(0.0, 0.0))
    x = _x(4)
    y = Augmenter(cfg, FE)(x, torch.Generator().manual_seed(0))
    assert (y >= x - 1e-6).all() and (y > x + 1e-3).any()


def test_bad_augment_config():
    with pytest.raises(ConfigError, match="probabilities must be in"):
        AugmentConfig(p_eq=2.0)
