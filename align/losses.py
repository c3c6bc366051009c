"""Alignment losses: linear CKA (AcuLa's), InfoNCE and SigLIP contrastive options.

All take a batch of projected audio features ``a`` (B, D_a) and text features ``t`` (B, D_t) and return a scalar
to minimise. The masked-spectrogram-modelling loss lives with the encoder that can compute it
(:meth:`acula_edge.align.encoders.AudioEncoder.mae_loss`).
"""

from __future__ import annotations

import torch

ALIGN_LOSSES = ("cka", "infonce", "siglip")


def linear_cka(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Linear centred kernel alignment of two feature batches (B, Dx) and (B, Dy), in [0, 1].

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with Xc, Yc centred over the batch. Invariant to
    orthogonal transforms and isotropic scaling of either side; 1 when the two are the same up to those.
    Computed in float32 whatever the autocast dtype.
    """
    x = x.float() - x.float().mean(dim=0, keepdim=True)
    y = y.float() - y.float().mean(dim=0, keepdim=True)
    # Gram-matrix form (B x B) is cheaper than the feature form when B < D, and equal in value.
    kx, ky = x @ x.T, y @ y.T
    hsic = (kx * ky).sum()
    return hsic / (kx.square().sum().sqrt() * ky.square().sum().sqrt() + eps)


def cka_loss(audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """1 - linear CKA between the batch-centred audio and text features."""
    return 1.0 - linear_cka(audio, text)


def infonce_loss(audio: torch.Tensor, text: torch.Tensor, temperature: float = 0.07,
                 groups: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) on cosine similarities / ``temperature``.

    ``groups`` (B,) optional ids of the text each row came from: rows sharing a text (windows of one recording,
    or identical reports) are all counted as positives of each other instead of as negatives.
    """
    a = torch.nn.functional.normalize(audio.float(), dim=-1)
    t = torch.nn.functional.normalize(text.float(), dim=-1)
    logits = a @ t.T / temperature
    if groups is None:
        target = torch.arange(a.shape[0], device=a.device)
        return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                      + torch.nn.functional.cross_entropy(logits.T, target))
    pos = (groups[:, None] == groups[None, :]).float()
    pos = pos / pos.sum(dim=1, keepdim=True)
    la = -(pos * logits.log_softmax(dim=1)).sum(dim=1).mean()
    lt = -(pos * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return 0.5 * (la + lt)


def siglip_loss(audio: torch.Tensor, text: torch.Tensor, logit_scale: float = 10.0, logit_bias: float = -10.0,
                groups: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid pairwise loss (SigLIP): every (audio, text) pair is a binary positive/negative decision."""
    a = torch.nn.functional.normalize(audio.float(), dim=-1)
    t = torch.nn.functional.normalize(text.float(), dim=-1)
    logits = logit_scale * (a @ t.T) + logit_bias
    if groups is None:
        labels = 2.0 * torch.eye(a.shape[0], device=a.device) - 1.0
    else:
        labels = 2.0 * (groups[:, None] == groups[None, :]).float() - 1.0
    return -torch.nn.functional.logsigmoid(labels * logits).sum() / a.shape[0]


def alignment_loss(kind: str, audio: torch.Tensor, text: torch.Tensor, temperature: float = 0.07,
                   groups: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch on ``kind`` (one of ALIGN_LOSSES)."""
    if kind == "cka":
        return cka_loss(audio, text)
    if kind == "infonce":
        return infonce_loss(audio, text, temperature, groups)
    if kind == "siglip":
        return siglip_loss(audio, text, groups=groups)
    from acula_edge.errors import ConfigError

    raise ConfigError(f"unknown alignment loss {kind!r}; choose one of {ALIGN_LOSSES}")
