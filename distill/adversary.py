"""A site-adversarial head: training signal that pushes the site (device) out of the student's embedding.

A small classifier predicts the group (a metadata column such as ``subset``: site and stethoscope) from the
student's embedding through a gradient-reversal layer (Ganin & Lempitsky, 2015): the classifier learns to find the
site, the student receives the negated gradient and learns an embedding from which the site cannot be read. The
reversal strength ramps up from 0 (``ramp``), so the classifier can learn before it pushes back. The head is used
in training only; it is not part of the student checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:  # noqa: ANN001 (autograd signature)
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``-strength`` on the way back."""
    return _ReverseGradient.apply(x, float(strength))


def ramp(progress: float) -> float:
    """DANN schedule: 0 at the start of training, ~1 by its middle (``progress`` in [0, 1])."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


class SiteAdversary(nn.Module):
    """Group classifier on the (gradient-reversed) embedding: Linear -> ReLU -> Linear."""

    def __init__(self, embedding_dim: int, n_groups: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_groups))

    def forward(self, embedding: torch.Tensor, strength: float) -> torch.Tensor:
        return self.net(reverse_gradient(embedding, strength))
