"""Hugging Face transformers audio encoders from a LOCAL folder (never downloaded), computing what their authors'
feature extractors and models compute.

- :class:`HFASTEncoder` wraps ``ASTModel`` (Audio Spectrogram Transformer). It takes windows of the front-end that
  :func:`hf_frontend` derives from the folder (``ASTFeatureExtractor``'s Kaldi-style fbank, normalised with the
  extractor's mean and 2 x std): (B, 1, frames, num_mel_bins) -> ``input_values`` (B, max_length, num_mel_bins).
  Shorter windows are padded as the extractor pads: with the value a zero fbank frame has after normalisation
  (``pad_value``), not with 0. The embedding is AST's ``pooler_output`` (mean of its two class tokens).
- :class:`HFWaveformEncoder` wraps Wav2Vec2 / HuBERT / WavLM-style models, which consume the raw waveform. Their
  front-end is the "waveform" representation (frames of raw samples; :func:`hf_frontend`), so the windows keep the
  teacher contract (B, 1, frames, samples per frame); the encoder flattens them, normalises each window to zero
  mean and unit variance when the folder's ``preprocessor_config.json`` says ``do_normalize`` (as
  ``Wav2Vec2FeatureExtractor`` does), and mean-pools ``last_hidden_state``.

:func:`load_hf_audio_encoder` picks the wrapper from the folder's ``config.json`` ``model_type``; the wrapper's
``load_report`` says what transformers loaded (tensors it initialised, tensors of the file it did not use).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from acula_edge.align.encoders import AudioEncoder, check_input, fit_time_axis
from acula_edge.align.pretrained import ModuleLoad, StateDictReport
from acula_edge.checkpoint import require_safetensors
from acula_edge.errors import ConfigError, require
from acula_edge.frontend import PRESETS, FrontendConfig, Windowing

SPECTROGRAM_MODEL_TYPES = ("audio-spectrogram-transformer",)
WAVEFORM_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer", "unispeech",
                        "unispeech-sat", "sew", "sew-d")
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm: (x - mean) / sqrt(var + 1e-7) per input.
WAVEFORM_NORM_EPS = 1e-7
WAVEFORM_WINDOWING = Windowing(window_s=4.0, hop_s=1.0)  # waveform teachers: 4 s windows every 1 s


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def _model_config(folder: Path) -> dict[str, Any]:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"{folder}: no config.json; give a local Hugging Face model folder (made with "
                          f"save_pretrained); models are never downloaded")
    return _read_json(cfg)


def _preprocessor(folder: Path) -> dict[str, Any]:
    """The folder's preprocessor_config.json ({} when it has none)."""
    path = folder / PREPROCESSOR_CONFIG
    return _read_json(path) if path.is_file() else {}


def load_hf_audio_encoder(path: str | os.PathLike) -> "HFASTEncoder | HFWaveformEncoder":
    """The right wrapper for the local model folder ``path`` (weights loaded, offline)."""
    folder = Path(path).expanduser()
    kind = str(_model_config(folder).get("model_type", ""))
    if kind in SPECTROGRAM_MODEL_TYPES:
        return HFASTEncoder.from_pretrained(folder)
    if kind in WAVEFORM_MODEL_TYPES:
        return HFWaveformEncoder.from_pretrained(folder)
    raise ConfigError(f"{folder}: model_type {kind!r} is not a supported audio encoder; supported: "
                      f"{SPECTROGRAM_MODEL_TYPES + WAVEFORM_MODEL_TYPES}")


def _from_pretrained(auto_cls: Any, folder: Path) -> tuple[Any, StateDictReport]:
    """transformers' ``from_pretrained`` (offline) and what it loaded, as the project's load report."""
    require_safetensors(folder)  # pickled weights are never unpickled: refused with a conversion hint
    model, info = auto_cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                           use_safetensors=True)
    missing = tuple(sorted(info.get("missing_keys", ())))
    mismatched = tuple(f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in info.get("mismatched_keys", ()))
    fresh = set(missing) | {m.split(":")[0] for m in mismatched}
    loaded = tuple(sorted(k for k in model.state_dict() if k not in fresh))
    unused = tuple(sorted(info.get("unexpected_keys", ())))
    module = ModuleLoad("model", "partial" if fresh else "loaded", len(loaded), missing, (), mismatched)
    return model, StateDictReport(source=str(folder), loaded=loaded, missing=missing, unexpected=unused,
                                  mismatched=mismatched, modules=(module,), unused=unused)


def _ast_extractor(folder: Path, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """ASTFeatureExtractor settings of the folder: its preprocessor_config.json over the extractor's defaults,
    with the model's num_mel_bins / max_length where the folder has no extractor config."""
    transformers = require("transformers", "train", "The Hugging Face AST encoder")
    defaults = transformers.ASTFeatureExtractor(num_mel_bins=int(model_cfg.get("num_mel_bins", 128)),
                                                max_length=int(model_cfg.get("max_length", 1024)))
    keys = ("sampling_rate", "num_mel_bins", "max_length", "do_normalize", "mean", "std")
    settings = {k: getattr(defaults, k) for k in keys}
    settings.update({k: v for k, v in _preprocessor(folder).items() if k in keys})
    return settings


def ast_pad_value(settings: dict[str, Any]) -> float:
    """What ASTFeatureExtractor's zero padding becomes after its normalisation."""
    return (0.0 - float(settings["mean"])) / (2.0 * float(settings["std"])) if settings["do_normalize"] else 0.0


def hf_frontend(path: str | os.PathLike) -> tuple[FrontendConfig, Windowing]:
    """The front-end and windowing that reproduce the folder's own preprocessing.

    AST: the "ast" preset with the extractor's sampling rate, num_mel_bins, mean/std (identity when do_normalize is
    false); 8 s windows every 4 s when max_length frames hold 8 s, else windows of max_length frames (hop: half).
    Waveform models: raw samples at the extractor's rate in frames of the model's total convolution stride, 4 s
    windows every 1 s."""
    folder = Path(path).expanduser()
    model_cfg = _model_config(folder)
    kind = str(model_cfg.get("model_type", ""))
    if kind in SPECTROGRAM_MODEL_TYPES:
        s = _ast_extractor(folder, model_cfg)
        base = PRESETS["ast"][0]
        sr = int(s["sampling_rate"])
        fe = dataclasses.replace(base, sample_rate=sr, n_mels=int(s["num_mel_bins"]), fmax=float(sr // 2),
                                 norm_mean=float(s["mean"]) if s["do_normalize"] else 0.0,
                                 norm_std=2.0 * float(s["std"]) if s["do_normalize"] else 1.0)
        frames = int(s["max_length"])
        eight_s = PRESETS["acula"][1]  # 8 s every 4 s, as OPERA and AcuLa; padded to max_length as the extractor pads
        if eight_s.frames_per_window(fe) <= frames:
            return fe, eight_s
        window = (frames - 1) * fe.hop_length + fe.win_length  # the longest window the model takes whole
        return fe, Windowing(window_s=window / sr, hop_s=max(frames // 2, 1) * fe.hop_length / sr)
    if kind in WAVEFORM_MODEL_TYPES:
        sr = int(_preprocessor(folder).get("sampling_rate", 16000))
        stride = int(math.prod(model_cfg.get("conv_stride", [320])))
        fe = FrontendConfig(sample_rate=sr, n_fft=stride, win_length=stride, hop_length=stride, n_mels=stride,
                            fmin=0.0, fmax=sr / 2.0, representation="waveform")
        return fe, WAVEFORM_WINDOWING
    raise ConfigError(f"{folder}: model_type {kind!r} has no known preprocessing; supported: "
                      f"{SPECTROGRAM_MODEL_TYPES + WAVEFORM_MODEL_TYPES}")


class HFASTEncoder(AudioEncoder):
    """ASTModel behind the AudioEncoder interface; see the module docstring."""

    encoder_type = "hf-ast"
    supports_mae = False

    def __init__(self, model: Any, pad_value: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.frames = int(model.config.max_length)
        self.n_mels = int(model.config.num_mel_bins)
        self.pad_value = float(pad_value)  # a normalised all-zero fbank frame (ASTFeatureExtractor pads first)
        self.load_report: StateDictReport | None = None  # what from_pretrained loaded

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "HFASTEncoder":
        transformers = require("transformers", "train", "The Hugging Face AST encoder")
        folder = Path(folder)
        model, report = _from_pretrained(transformers.ASTModel, folder)
        enc = cls(model, ast_pad_value(_ast_extractor(folder, model.config.to_dict())))
        enc.load_report = report
        return enc

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> "HFASTEncoder":
        """Rebuild from ``{"hf_config": ASTConfig dict, "pad_value": float}`` (random weights; a checkpoint loads
        its own)."""
        transformers = require("transformers", "train", "The Hugging Face AST encoder")
        if "hf_config" not in d:
            raise ConfigError("HFASTEncoder config needs an 'hf_config' entry (the ASTConfig as a dict)")
        cfg = transformers.ASTConfig.from_dict(dict(d["hf_config"]))
        return cls(transformers.ASTModel(cfg), float(d.get("pad_value", 0.0)))

    def config_dict(self) -> dict[str, Any]:
        return {"hf_config": self.model.config.to_dict(), "pad_value": self.pad_value}

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.n_mels, "HFASTEncoder (n_mels = the AST's num_mel_bins)")
        values = fit_time_axis(x, self.frames, self.pad_value)[:, 0]
        return self.model(input_values=values).pooler_output


class HFWaveformEncoder(AudioEncoder):
    """Wav2Vec2 / HuBERT-style encoder; see the module docstring."""

    encoder_type = "hf-waveform"
    supports_mae = False

    def __init__(self, model: Any, sample_rate: int = 16000, do_normalize: bool = True) -> None:
        super().__init__()
        self.model = model
        self.sample_rate = int(sample_rate)  # Hz the model expects (16 kHz for every public checkpoint)
        self.do_normalize = bool(do_normalize)  # the folder's feature extractor normalises each input
        self.load_report: StateDictReport | None = None  # what from_pretrained loaded

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "HFWaveformEncoder":
        transformers = require("transformers", "train", "The Hugging Face waveform encoder")
        model, report = _from_pretrained(transformers.AutoModel, Path(folder))
        pre = _preprocessor(Path(folder))
        enc = cls(model, int(pre.get("sampling_rate", 16000)), bool(pre.get("do_normalize", True)))
        enc.load_report = report
        return enc

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> "HFWaveformEncoder":
        """Rebuild from ``{"hf_config": config dict with model_type, "sample_rate", "do_normalize"}``."""
        transformers = require("transformers", "train", "The Hugging Face waveform encoder")
        if "hf_config" not in d:
            raise ConfigError("HFWaveformEncoder config needs an 'hf_config' entry (the model config as a dict)")
        hf = dict(d["hf_config"])
        cfg = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
        return cls(transformers.AutoModel.from_config(cfg), int(d.get("sample_rate", 16000)),
                   bool(d.get("do_normalize", True)))

    def config_dict(self) -> dict[str, Any]:
        return {"hf_config": self.model.config.to_dict(), "sample_rate": self.sample_rate,
                "do_normalize": self.do_normalize}

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed_waveform(self, samples: torch.Tensor) -> torch.Tensor:
        """(B, N) float samples at ``sample_rate`` Hz -> (B, hidden): normalised per input when ``do_normalize``
        (as the feature extractor), then the time-mean of the last hidden state."""
        if samples.dim() != 2:
            raise ConfigError(f"embed_waveform expects (batch, samples), got {tuple(samples.shape)}")
        x = samples.float()
        if self.do_normalize:
            mean = x.mean(dim=1, keepdim=True)
            var = (x - mean).square().mean(dim=1, keepdim=True)
            x = (x - mean) / torch.sqrt(var + WAVEFORM_NORM_EPS)
        return self.model(input_values=x).last_hidden_state.mean(dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, frames, samples per frame) windows of the "waveform" front-end -> (B, hidden)."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ConfigError(f"HFWaveformEncoder expects waveform windows shaped (batch, 1, frames, samples per "
                              f"frame), got {tuple(x.shape)}")
        return self.embed_waveform(x.reshape(x.shape[0], -1))
