"""Torch twin of the numpy log-mel front-end (training side; imports torch).

Built from the same window and filterbank arrays as :class:`acula_edge.features.LogMel`; tests prove the two agree.
Batched and device-agnostic (CPU or GPU tensors); training uses its window normalisation (distill/augment.py) and
the tests use the whole front-end as the numpy reference's twin.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from acula_edge.frontend import WINDOW_NORMALISATIONS, FrontendConfig, analysis_window, mel_filterbank


class TorchLogMel(torch.nn.Module):
    """(batch, samples) float audio -> (batch, frames, n_mels) log-mel, float32. See acula_edge.frontend."""

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.from_numpy(analysis_window(cfg)), persistent=False)  # float64
        bank = mel_filterbank(cfg) if cfg.representation == "logmel" else np.zeros((cfg.n_freqs, 0))
        self.register_buffer("filterbank", torch.from_numpy(bank).float(), persistent=False)
        self._pad_left = (cfg.n_fft - cfg.win_length) // 2

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if samples.dim() == 1:
            samples = samples[None]
        samples = samples.float()
        if cfg.center:
            samples = torch.nn.functional.pad(samples, (cfg.n_fft // 2, cfg.n_fft // 2))
        frames = samples.unfold(-1, cfg.win_length, cfg.hop_length)  # (B, n, win)
        if cfg.representation == "waveform":
            return frames.contiguous()
        frames = frames.double()
        if cfg.remove_dc:
            frames = frames - frames.mean(dim=-1, keepdim=True)
        if cfg.preemphasis:
            frames = torch.cat([frames[..., :1] * (1.0 - cfg.preemphasis),
                                frames[..., 1:] - cfg.preemphasis * frames[..., :-1]], dim=-1)
        right = cfg.n_fft - cfg.win_length - self._pad_left
        # float64 FFT, as in the numpy front-end (quiet bands near the log floor need it to agree)
        frames = torch.nn.functional.pad(frames, (self._pad_left, right)) * self.window
        spec = torch.fft.rfft(frames, dim=-1)
        power = (spec.real.square() + spec.imag.square()).float()
        if cfg.power == 1.0:
            power = power.sqrt()
        mel = power @ self.filterbank
        if cfg.log_offset:
            mel = mel + cfg.log_offset
        out = torch.log(torch.clamp(mel, min=cfg.log_floor))
        if cfg.normalisation == "global":
            out = (out - cfg.norm_mean) / cfg.norm_std
        return out


def normalise_window(window: torch.Tensor, cfg: FrontendConfig) -> torch.Tensor:
    """Torch twin of acula_edge.features.normalise_window: (..., frames, n_mels)."""
    if cfg.normalisation not in WINDOW_NORMALISATIONS:
        return window
    if cfg.normalisation == "per_window_db_minmax":
        db = window.double() * (10.0 / math.log(10.0))
        peak = db.amax(dim=(-2, -1), keepdim=True)
        db = torch.maximum(db, peak - cfg.top_db)
        low = db.amin(dim=(-2, -1), keepdim=True)
        span = peak - low
        return torch.where(span > 0, (db - low) / torch.where(span > 0, span, torch.ones_like(span)),
                           torch.zeros_like(db)).to(window.dtype)
    dims = (-2,) if cfg.normalisation == "per_window_band" else (-2, -1)
    centred = window - window.mean(dim=dims, keepdim=True)
    std = centred.square().mean(dim=(-2, -1), keepdim=True).sqrt()
    return centred / std.clamp_min(1e-5)
