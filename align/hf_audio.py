"""Hugging Face transformers audio encoders from a LOCAL folder (never downloaded).

- :class:`HFASTEncoder` wraps ``ASTModel`` (Audio Spectrogram Transformer). AST consumes log-mel frames, so it
  takes our windows directly: (B, 1, frames, n_mels) -> ``input_values`` (B, max_length, num_mel_bins), the time
  axis zero-padded/cropped to the model's ``max_length``; ``n_mels`` must equal its ``num_mel_bins``. The embedding
  is AST's ``pooler_output`` (mean of its two class tokens). Note a pretrained AST was trained on Kaldi fbanks at
  16 kHz normalised by AudioSet statistics; our front-end is used instead (same kind of input, other statistics),
  which fine-tuning through the alignment absorbs.
- :class:`HFWaveformEncoder` wraps Wav2Vec2 / HuBERT / WavLM-style models. These consume the RAW WAVEFORM (16 kHz
  samples), not log-mel windows, so they cannot sit behind the teacher contract (log-mel input); use
  :meth:`HFWaveformEncoder.embed_waveform` on samples. Their :meth:`embed` raises a ConfigError saying so.

:func:`load_hf_audio_encoder` picks the wrapper from the folder's ``config.json`` ``model_type``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from acula_edge.align.encoders import AudioEncoder, check_input, fit_time_axis
from acula_edge.errors import ConfigError, require

SPECTROGRAM_MODEL_TYPES = ("audio-spectrogram-transformer",)
WAVEFORM_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer", "unispeech",
                        "unispeech-sat", "sew", "sew-d")


def _model_type(folder: Path) -> str:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"{folder}: no config.json; give a local Hugging Face model folder (made with "
                          f"save_pretrained); models are never downloaded")
    try:
        return str(json.loads(cfg.read_text(encoding="utf-8")).get("model_type", ""))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{cfg}: unreadable ({e})") from e


def load_hf_audio_encoder(path: str | os.PathLike) -> "HFASTEncoder | HFWaveformEncoder":
    """The right wrapper for the local model folder ``path`` (weights loaded, offline)."""
    folder = Path(path).expanduser()
    kind = _model_type(folder)
    if kind in SPECTROGRAM_MODEL_TYPES:
        return HFASTEncoder.from_pretrained(folder)
    if kind in WAVEFORM_MODEL_TYPES:
        return HFWaveformEncoder.from_pretrained(folder)
    raise ConfigError(f"{folder}: model_type {kind!r} is not a supported audio encoder; supported: "
                      f"{SPECTROGRAM_MODEL_TYPES + WAVEFORM_MODEL_TYPES}")


class HFASTEncoder(AudioEncoder):
    """ASTModel behind the AudioEncoder interface; see the module docstring."""

    encoder_type = "hf-ast"
    supports_mae = False

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.frames = int(model.config.max_length)
        self.n_mels = int(model.config.num_mel_bins)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "HFASTEncoder":
        transformers = require("transformers", "train", "The Hugging Face AST encoder")
        model = transformers.ASTModel.from_pretrained(str(folder), local_files_only=True)
        return cls(model)

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> "HFASTEncoder":
        """Rebuild from ``{"hf_config": ASTConfig dict}`` (random weights; a checkpoint loads its own)."""
        transformers = require("transformers", "train", "The Hugging Face AST encoder")
        if "hf_config" not in d:
            raise ConfigError("HFASTEncoder config needs an 'hf_config' entry (the ASTConfig as a dict)")
        cfg = transformers.ASTConfig.from_dict(dict(d["hf_config"]))
        return cls(transformers.ASTModel(cfg))

    def config_dict(self) -> dict[str, Any]:
        return {"hf_config": self.model.config.to_dict()}

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.n_mels, "HFASTEncoder (n_mels = the AST's num_mel_bins)")
        values = fit_time_axis(x, self.frames)[:, 0]
        return self.model(input_values=values).pooler_output


class HFWaveformEncoder(torch.nn.Module):
    """Wav2Vec2 / HuBERT-style encoder: raw samples (B, N) at the model's rate -> (B, hidden) mean-pooled."""

    supports_mae = False

    def __init__(self, model: Any, sample_rate: int = 16000) -> None:
        super().__init__()
        self.model = model
        self.sample_rate = sample_rate  # Hz the model expects (16 kHz for every public checkpoint of this family)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "HFWaveformEncoder":
        transformers = require("transformers", "train", "The Hugging Face waveform encoder")
        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        rate = 16000
        fe = Path(folder) / "preprocessor_config.json"
        if fe.is_file():
            rate = int(json.loads(fe.read_text(encoding="utf-8")).get("sampling_rate", rate))
        return cls(model, rate)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed_waveform(self, samples: torch.Tensor) -> torch.Tensor:
        """(B, N) float samples at ``sample_rate`` Hz, each normalised to zero mean and unit variance here (as
        Wav2Vec2FeatureExtractor does) -> (B, hidden)."""
        if samples.dim() != 2:
            raise ConfigError(f"embed_waveform expects (batch, samples), got {tuple(samples.shape)}")
        x = (samples - samples.mean(dim=1, keepdim=True)) / (samples.std(dim=1, keepdim=True) + 1e-7)
        return self.model(input_values=x).last_hidden_state.mean(dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError(
            f"{type(self.model).__name__} consumes raw waveforms ({self.sample_rate} Hz samples), not the log-mel "
            f"windows the alignment pipeline and the teacher contract use; call embed_waveform(samples), or align "
            f"an AST ('hf:PATH' to an ASTModel folder), 'mae-vit' or 'cnn' encoder instead")

    forward = embed
