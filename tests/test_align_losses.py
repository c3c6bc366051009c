"""Alignment losses: linear CKA properties and the contrastive options."""

from __future__ import annotations

import pytest
import torch

from acula_edge.align.losses import alignment_loss, cka_loss, infonce_loss, linear_cka, siglip_loss
from acula_edge.errors import ConfigError


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def test_cka_is_one_for_identical_features():
    x = torch.randn(32, 16, dtype=torch.float64)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert cka_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)


def test_cka_invariant_to_orthogonal_transform_isotropic_scale_and_offset():
    x = torch.randn(40, 12, dtype=torch.float64)
    y = torch.randn(40, 8, dtype=torch.float64) + 0.5 * x[:, :8]
    base = linear_cka(x, y).item()
    moved = linear_cka(3.7 * x @ _orthogonal(12, 1) + 5.0, 0.2 * y @ _orthogonal(8, 2) - 1.0).item()
    assert moved == pytest.approx(base, rel=1e-6)
    assert 0.0 < base < 1.0


def test_cka_is_not_invariant_to_anisotropic_scaling():
    x = torch.randn(64, 6, dtype=torch.float64)
    scale = torch.tensor([10.0, 1, 1, 1, 1, 0.1], dtype=torch.float64)
    assert linear_cka(x, x * scale).item() < 0.9


def test_cka_is_low_for_independent_random_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = torch.randn(512, 8, generator=g)
    assert linear_cka(x, y).item() < 0.05


def test_cka_gradient_increases_alignment():
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    w = torch.randn(4, 4, requires_grad=True)
    target = x @ torch.randn(4, 4)
    opt = torch.optim.SGD([w], lr=0.5)
    before = cka_loss(x @ w, target).item()
    for _ in range(30):
        opt.zero_grad()
        cka_loss(x @ w, target).backward()
        opt.step()
    assert cka_loss(x @ w, target).item() < before - 0.05


def test_contrastive_losses_prefer_matched_pairs():
    torch.manual_seed(0)
    t = torch.randn(16, 8)
    matched, shuffled = t + 0.01 * torch.randn(16, 8), t[torch.randperm(16)]
    assert infonce_loss(matched, t).item() < infonce_loss(shuffled, t).item()
    assert siglip_loss(matched, t).item() < siglip_loss(shuffled, t).item()


def test_grouped_infonce_treats_shared_texts_as_positives():
    t = torch.eye(4)[[0, 0, 1, 1]]  # two windows per text
    a = t.clone()
    groups = torch.tensor([0, 0, 1, 1])
    assert infonce_loss(a, t, 0.1, groups).item() < infonce_loss(a, t, 0.1).item()


def test_unknown_loss_name_is_refused():
    with pytest.raises(ConfigError, match="unknown alignment loss 'mse'"):
        alignment_loss("mse", torch.zeros(2, 2), torch.zeros(2, 2))


def test_align_package_public_names_exist():
    import acula_edge.align as align

    for name in align.__all__:
        assert getattr(align, name) is not None, name
