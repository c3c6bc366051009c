"""The exported teacher: aligned audio encoder + audio projection head + a zero-shot (or trained) label head.

:class:`AlignedTeacher` obeys the checkpoint contract (:mod:`acula_edge.checkpoint`): ``from_config(dict)``,
``config_dict()``, and ``forward(x)`` with x (B, 1, frames, n_mels) log-mel returning
``(embedding (B, D), logits (B, C))``. The embedding is the projected audio feature in the space shared with the
text teacher. Logits are ``logit_scale * cos(embedding, label embedding)``: one per label, the label embedding
being the normalised mean of that label's projected prompt embeddings (a zero-shot head), unless a trained linear
head is attached (``head=True``). Label embeddings are stored as a buffer, so the checkpoint rebuilds with no text
model.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from acula_edge.align.encoders import AudioEncoder, build_encoder
from acula_edge.errors import ConfigError

ARCHITECTURE = "acula_edge.align.teacher:AlignedTeacher"


class ProjectionHead(nn.Module):
    """Two-layer MLP projection into the shared space: Linear -> GELU -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AlignedTeacher(nn.Module):
    """See the module docstring."""

    def __init__(self, encoder: AudioEncoder, hidden_dim: int, embedding_dim: int, labels: Sequence[str],
                 logit_scale: float = 10.0, head: bool = False) -> None:
        super().__init__()
        if not labels:
            raise ConfigError("the teacher needs at least one label")
        self.encoder = encoder
        self.audio_proj = ProjectionHead(encoder.dim, hidden_dim, embedding_dim)
        self.labels = tuple(labels)
        self.hidden_dim, self.embedding_dim, self.logit_scale = hidden_dim, embedding_dim, float(logit_scale)
        self.register_buffer("label_embeddings", torch.zeros(len(self.labels), embedding_dim))
        self.head = nn.Linear(embedding_dim, len(self.labels)) if head else None

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> "AlignedTeacher":
        try:
            encoder = build_encoder(str(d["encoder_type"]), dict(d["encoder"]))
            return cls(encoder, int(d["hidden_dim"]), int(d["embedding_dim"]), tuple(d["labels"]),
                       float(d.get("logit_scale", 10.0)), bool(d.get("head", False)))
        except KeyError as e:
            raise ConfigError(f"teacher config lacks {e}; keys given: {sorted(d)}") from e

    def config_dict(self) -> dict[str, Any]:
        return {"encoder_type": self.encoder.encoder_type, "encoder": self.encoder.config_dict(),
                "hidden_dim": self.hidden_dim, "embedding_dim": self.embedding_dim, "labels": list(self.labels),
                "logit_scale": self.logit_scale, "head": self.head is not None}

    def set_label_embeddings(self, prompt_embeddings: np.ndarray | torch.Tensor, prompt_labels: Sequence[str]) -> None:
        """Set each label's embedding to the normalised mean of its (normalised) projected prompt embeddings."""
        emb = torch.as_tensor(np.asarray(prompt_embeddings), dtype=torch.float32)
        emb = nn.functional.normalize(emb, dim=-1)
        rows = []
        for label in self.labels:
            idx = [i for i, owner in enumerate(prompt_labels) if owner == label]
            if not idx:
                raise ConfigError(f"no prompt stands for label {label!r}; prompt labels: {sorted(set(prompt_labels))}")
            rows.append(nn.functional.normalize(emb[idx].mean(dim=0), dim=-1))
        self.label_embeddings.copy_(torch.stack(rows).to(self.label_embeddings.device))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.audio_proj(self.encoder.embed(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(x)
        if self.head is not None:
            return z, self.head(z)
        zn = nn.functional.normalize(z, dim=-1)
        return z, self.logit_scale * (zn @ self.label_embeddings.T)
