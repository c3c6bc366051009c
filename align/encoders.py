"""The one small interface every audio encoder of the alignment stage obeys, and the registry that builds them.

An :class:`AudioEncoder` is a ``torch.nn.Module`` that turns a batch of log-mel windows ``(B, 1, frames, n_mels)``
into one embedding per window, ``(B, dim)`` (:meth:`AudioEncoder.embed`, also ``forward``). Encoders that can
reconstruct masked spectrogram patches (the MAE ViT) also give :meth:`AudioEncoder.mae_loss`; the others say so with
``supports_mae = False``.

Every encoder rebuilds itself from a plain dict (``encoder_type``, ``config_dict()`` / :func:`build_encoder`) so a
teacher checkpoint can rebuild it with no other file. Types: ``"cnn"`` (:mod:`.cnn_encoder`), ``"mae-vit"``
(:mod:`.mae_vit`), ``"hf-ast"`` and ``"hf-waveform"`` (:mod:`.hf_audio`; the waveform one takes windows of the
"waveform" front-end representation, raw samples laid out as (frames, samples per frame)).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from acula_edge.errors import ConfigError

# encoder type -> (module, class); imported only when that type is built.
ENCODER_TYPES: dict[str, tuple[str, str]] = {
    "cnn": ("acula_edge.align.cnn_encoder", "CNNEncoder"),
    "mae-vit": ("acula_edge.align.mae_vit", "MAEViTEncoder"),
    "hf-ast": ("acula_edge.align.hf_audio", "HFASTEncoder"),
    "hf-waveform": ("acula_edge.align.hf_audio", "HFWaveformEncoder"),
}


class AudioEncoder(torch.nn.Module):
    """Base class: log-mel windows (B, 1, frames, n_mels) -> embeddings (B, dim)."""

    encoder_type: str = ""  # key in ENCODER_TYPES
    supports_mae: bool = False  # True when mae_loss is implemented

    @property
    def dim(self) -> int:
        """Size of the per-window embedding."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, frames, n_mels) float log-mel -> (B, dim)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def mae_loss(self, x: torch.Tensor, mask_t: float = 0.7, mask_f: float = 0.3) -> torch.Tensor:
        """Masked-spectrogram-modelling loss (scalar) of a batch; masks ``mask_t`` of the time patches and
        ``mask_f`` of the frequency patches. Raises ConfigError for encoders without a decoder."""
        raise ConfigError(f"the {self.encoder_type!r} encoder has no masked-spectrogram decoder; set lambda_mam=0 "
                          f"or use the 'mae-vit' encoder")

    def config_dict(self) -> dict[str, Any]:
        """Architecture config from which :func:`build_encoder` rebuilds this encoder."""
        raise NotImplementedError

    def inference_config(self) -> dict[str, Any]:
        """Config of the encoder as needed for inference only (e.g. without the MAE decoder)."""
        return self.config_dict()

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that :meth:`inference_config`'s encoder holds (default: all of them)."""
        return self.state_dict()

    def load_groups(self) -> dict[str, tuple[str, ...]]:
        """Module groups (name -> parameter-name prefixes) that a pretrained file loads whole or not at all
        (:func:`acula_edge.align.pretrained.load_pretrained`); default: the whole encoder is one group."""
        return {"encoder": ("",)}


def build_encoder(encoder_type: str, config: dict[str, Any]) -> AudioEncoder:
    """Build an encoder of ``encoder_type`` (one of ENCODER_TYPES) from its config dict."""
    if encoder_type not in ENCODER_TYPES:
        raise ConfigError(f"unknown audio encoder type {encoder_type!r}; choose one of {sorted(ENCODER_TYPES)}")
    module, name = ENCODER_TYPES[encoder_type]
    cls = getattr(importlib.import_module(module), name)
    return cls.from_config(dict(config))


def fit_time_axis(x: torch.Tensor, frames: int, value: float = 0.0) -> torch.Tensor:
    """Pad with ``value`` (at the end) or crop (keep the start) the time axis of (B, 1, T, F) to ``frames``."""
    t = x.shape[-2]
    if t == frames:
        return x
    if t > frames:
        return x[..., :frames, :]
    return torch.nn.functional.pad(x, (0, 0, 0, frames - t), value=value)


def check_input(x: torch.Tensor, n_mels: int, who: str) -> None:
    """Raise ConfigError unless x is (B, 1, frames, n_mels)."""
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[-1] != n_mels:
        raise ConfigError(f"{who} expects log-mel windows shaped (batch, 1, frames, {n_mels}), got "
                          f"{tuple(x.shape)}; the encoder's n_mels must equal the front-end's n_mels")
