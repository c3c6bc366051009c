"""Distillation losses: embedding matching, logit distillation and the supervised loss, class-balanced.

total = w_cosine * (1 - cos(s_emb, t_emb)) + w_distance * dist(s_emb / scale, t_emb / scale)
      + w_kd * T^2 * KL(softmax(t_logits / T) || softmax(s_logits / T)) + w_ce * CE(s_logits, y)

``scale`` is the teacher's RMS embedding value (so the distance term does not depend on the teacher's units).
Every term is a weighted mean over the windows that have its target (teacher output or label), each window weighted
by its class weight (inverse class frequency, when ``class_balanced``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from acula_edge.errors import ConfigError

DISTANCES = ("mse", "l1")


@dataclass(frozen=True)
class DistillConfig:
    """Loss weights; a weight of 0 switches a term off."""

    w_cosine: float = 1.0  # 1 - cosine similarity to the teacher embedding
    w_distance: float = 1.0  # distance to the teacher embedding, in teacher RMS units
    distance: str = "mse"  # "mse" or "l1"
    w_kd: float = 1.0  # KL divergence to the teacher's tempered class distribution
    temperature: float = 2.0  # softmax temperature of the KD term (the term is scaled by T^2)
    w_ce: float = 1.0  # cross-entropy on the labels
    label_smoothing: float = 0.0  # of the cross-entropy term
    class_balanced: bool = True  # weight windows by inverse class frequency

    def __post_init__(self) -> None:
        problems = []
        if self.distance not in DISTANCES:
            problems.append(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.temperature <= 0:
            problems.append(f"temperature must be positive, got {self.temperature}")
        if min(self.w_cosine, self.w_distance, self.w_kd, self.w_ce) < 0:
            problems.append("loss weights must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if problems:
            raise ConfigError("invalid distillation config: " + "; ".join(problems))


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    return (values * weights).sum() / total if float(total) > 0 else values.sum() * 0.0


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-window KL(teacher || student) at ``temperature``, times T^2 (Hinton et al.), shape (B,)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * (t * t)


def distill_loss(config: DistillConfig, student_emb: torch.Tensor, student_logits: torch.Tensor,
                 y: torch.Tensor, class_weight: torch.Tensor | None = None,
                 teacher_emb: torch.Tensor | None = None, teacher_logits: torch.Tensor | None = None,
                 has_teacher: torch.Tensor | None = None,
                 teacher_scale: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss, {term: value}) for one batch. ``y`` uses -1 for unlabelled windows; ``has_teacher`` (B,) bool
    marks windows with teacher outputs (all when None); ``class_weight`` (C,) per class."""
    b = student_emb.shape[0]
    labelled = y >= 0
    if config.class_balanced and class_weight is not None:
        sample_w = torch.where(labelled, class_weight[y.clamp_min(0)], torch.ones_like(student_emb[:, 0]))
    else:
        sample_w = torch.ones(b, dtype=student_emb.dtype, device=student_emb.device)
    parts: dict[str, torch.Tensor] = {}
    if teacher_emb is not None:
        tmask = has_teacher.to(sample_w.dtype) if has_teacher is not None else torch.ones_like(sample_w)
        tw = sample_w * tmask
        if config.w_cosine:
            parts["cosine"] = config.w_cosine * _weighted_mean(
                1.0 - F.cosine_similarity(student_emb, teacher_emb, dim=-1), tw)
        if config.w_distance:
            diff = (student_emb - teacher_emb) / teacher_scale
            d = diff.square().mean(-1) if config.distance == "mse" else diff.abs().mean(-1)
            parts["distance"] = config.w_distance * _weighted_mean(d, tw)
        if teacher_logits is not None and config.w_kd:
            parts["kd"] = config.w_kd * _weighted_mean(kd_loss(student_logits, teacher_logits, config.temperature), tw)
    if config.w_ce and bool(labelled.any()):
        ce = F.cross_entropy(student_logits, y.clamp_min(0), reduction="none", label_smoothing=config.label_smoothing)
        parts["ce"] = config.w_ce * _weighted_mean(ce, sample_w * labelled.to(sample_w.dtype))
    if not parts:
        raise ConfigError("no loss term applies: give labels (w_ce > 0) or teacher outputs (w_cosine, w_distance "
                          "or w_kd > 0)")
    total = torch.stack(list(parts.values())).sum()
    return total, {k: float(v.detach()) for k, v in parts.items()}
