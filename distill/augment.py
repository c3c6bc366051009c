"""Augmentation of log-mel windows for body sounds (torch, batched, on (B, 1, frames, n_mels) model inputs).

All operations work in the log-power domain of the front-end (undoing its global normalisation where needed, and
re-normalising per window when the front-end does that), so they mean the same thing whatever the front-end:

- gain: a random level change in dB (a no-op under per-window normalisation; kept for global normalisation);
- time shift: a random circular shift along time;
- noise mixing: another window of the batch (a different recording: its noise, breath, handling sounds) added in
  the power domain at a random signal-to-noise ratio — the label stays that of the main window;
- device/channel: a random smooth frequency response added in dB over the mel axis (a tilt plus a few random
  cosine components), imitating another stethoscope, microphone or skin contact — for cross-site generalisation;
- SpecAugment masks: random time and mel bands replaced by the window mean.

The teacher always sees the clean window; only the student's input is augmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from acula_edge.errors import ConfigError
from acula_edge.frontend import FrontendConfig
from acula_edge.torch_frontend import normalise_window


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per window) and ranges. Units: dB for levels, frames and mel bins for masks."""

    gain_db: float = 6.0  # level change drawn from [-gain_db, +gain_db]
    p_gain: float = 0.5
    max_shift_frames: int = 50  # circular time shift drawn from [-max, +max] frames
    p_shift: float = 0.5
    noise_snr_db: tuple[float, float] = (5.0, 20.0)  # SNR range of the mixed-in window
    p_noise: float = 0.3
    eq_tilt_db: float = 6.0  # response slope drawn from [-tilt, +tilt] dB from the lowest to the highest mel bin
    eq_ripple_db: float = 3.0  # amplitude of the smooth random part of the response, dB
    eq_components: int = 3  # cosine components of the smooth random response
    p_eq: float = 0.5
    time_masks: int = 2  # SpecAugment time masks per window
    max_time_mask: int = 20  # frames
    freq_masks: int = 1  # SpecAugment frequency masks per window
    max_freq_mask: int = 4  # mel bins
    p_mask: float = 0.5

    def __post_init__(self) -> None:
        probs = [self.p_gain, self.p_shift, self.p_noise, self.p_eq, self.p_mask]
        if any(not 0 <= p <= 1 for p in probs):
            raise ConfigError(f"augmentation probabilities must be in [0, 1], got {probs}")
        if self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ConfigError(f"noise_snr_db must be (low, high), got {self.noise_snr_db}")
        if min(self.max_shift_frames, self.time_masks, self.max_time_mask, self.freq_masks, self.max_freq_mask,
               self.eq_components) < 0:
            raise ConfigError("augmentation counts and sizes must be >= 0")

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No augmentation at all."""
        return cls(p_gain=0.0, p_shift=0.0, p_noise=0.0, p_eq=0.0, p_mask=0.0)


class Augmenter:
    """Callable ``(x (B, 1, T, F), generator) -> augmented x``; x is left untouched (a new tensor is returned)."""

    def __init__(self, config: AugmentConfig, frontend: FrontendConfig) -> None:
        self.config = config
        self.frontend = frontend
        # log-mel units per dB of power: ln(10)/10 for power spectra, ln(10)/20 for magnitude
        per_db = math.log(10.0) / (10.0 if frontend.power == 2.0 else 20.0)
        self.units_per_db = per_db / (frontend.norm_std if frontend.normalisation == "global" else 1.0)

    def _mask(self, b: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
        return (torch.rand(b, generator=g) < p).to(device)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c, g = self.config, generator
        b, _, t, f = x.shape
        dev = x.device
        x = x.clone()
        if c.p_shift and c.max_shift_frames:
            shifts = torch.randint(-c.max_shift_frames, c.max_shift_frames + 1, (b,), generator=g)
            on = self._mask(b, c.p_shift, g, torch.device("cpu"))
            idx = (torch.arange(t)[None, :] - (shifts * on)[:, None]) % t  # (B, T)
            x = torch.gather(x, 2, idx.to(dev)[:, None, :, None].expand(b, 1, t, f))
        if c.p_noise and b > 1:
            # another window of the batch (rotate by a random offset, so never the window itself)
            other = torch.roll(x, shifts=int(torch.randint(1, b, (1,), generator=g)), dims=0)
            lo, hi = c.noise_snr_db
            snr = lo + (hi - lo) * torch.rand(b, generator=g)
            # match levels: the other window's mean log-power is moved to (this mean - snr)
            offset = (x.mean(dim=(1, 2, 3)) - other.mean(dim=(1, 2, 3))).cpu() - snr * self.units_per_db
            # add powers: logaddexp in log-power units (feature units times the global norm_std)
            s = self.frontend.norm_std if self.frontend.normalisation == "global" else 1.0
            mixed = torch.logaddexp(x * s, (other + offset.to(dev)[:, None, None, None]) * s) / s
            on = self._mask(b, c.p_noise, g, dev)[:, None, None, None]
            x = torch.where(on, mixed, x)
        if c.p_gain and c.gain_db:
            gain = (2 * torch.rand(b, generator=g) - 1) * c.gain_db * self._mask(b, c.p_gain, g, torch.device("cpu"))
            x = x + (gain * self.units_per_db).to(dev)[:, None, None, None]
        if c.p_eq:
            x = x + self.eq_response(b, f, g).to(dev)[:, None, None, :] * self._mask(b, c.p_eq, g, dev)[:, None,
                                                                                                         None, None]
        if c.p_mask:
            fill = x.mean(dim=(2, 3), keepdim=True)
            keep = torch.ones(b, 1, t, f, dtype=torch.bool)
            on = (torch.rand(b, generator=g) < c.p_mask)
            for _ in range(c.time_masks):
                keep &= ~_band_mask(b, t, c.max_time_mask, on, g)[:, None, :, None]
            for _ in range(c.freq_masks):
                keep &= ~_band_mask(b, f, c.max_freq_mask, on, g)[:, None, None, :]
            x = torch.where(keep.to(dev), x, fill)
        return normalise_window(x, self.frontend)  # the front-end's window normalisation, if it has one

    def eq_response(self, b: int, n_bins: int, g: torch.Generator) -> torch.Tensor:
        """(B, n_bins) random smooth responses in model-input units: tilt plus low-order cosines."""
        c = self.config
        pos = torch.linspace(0.0, 1.0, n_bins)
        tilt = (2 * torch.rand(b, 1, generator=g) - 1) * c.eq_tilt_db * (pos[None, :] - 0.5)
        resp = tilt
        if c.eq_components and c.eq_ripple_db:
            k = torch.arange(1, c.eq_components + 1, dtype=torch.float32)
            amp = torch.randn(b, c.eq_components, generator=g) / k  # smoother: higher orders weaker
            phase = 2 * math.pi * torch.rand(b, c.eq_components, generator=g)
            waves = torch.cos(math.pi * k[None, :, None] * pos[None, None, :] + phase[:, :, None])  # (B, K, F)
            ripple = (amp[:, :, None] * waves).sum(1)
            ripple = ripple / ripple.abs().amax(dim=1, keepdim=True).clamp_min(1e-6) * c.eq_ripple_db
            resp = resp + ripple * torch.rand(b, 1, generator=g)
        return resp * self.units_per_db


def _band_mask(b: int, n: int, max_width: int, on: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(B, n) bool: a random band of width in [0, max_width] per row where ``on``."""
    width = torch.randint(0, max(1, min(max_width, n)) + 1, (b,), generator=g) * on
    start = (torch.rand(b, generator=g) * (n - width + 1).clamp_min(1)).long()
    pos = torch.arange(n)[None, :]
    return (pos >= start[:, None]) & (pos < (start + width)[:, None])
