"""A small depthwise-separable CNN audio encoder: fast on CPU, channels-last friendly, exportable as is.

Input (B, 1, frames, n_mels) log-mel; a strided 3x3 stem, then depthwise-separable blocks (3x3 depthwise + 1x1
pointwise, batch norm, ReLU), global average pooling (``adaptive_avg_pool2d``, which XNNPACK delegates) and an
optional linear layer to ``dim``. Any input size works (no fixed time axis).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acula_edge.align.encoders import AudioEncoder, check_input
from acula_edge.config import from_dict
from acula_edge.errors import ConfigError


@dataclass(frozen=True)
class CNNConfig:
    """Architecture of :class:`CNNEncoder`."""

    n_mels: int = 32  # frequency bins of the input (the front-end's n_mels)
    channels: tuple[int, ...] = (32, 64, 128)  # output channels of the stem and of each separable block
    strides: tuple[int, ...] = (2, 2, 2)  # stride of the stem and of each block (same length as channels)
    dim: int = 128  # embedding size; a linear layer maps channels[-1] to it unless equal

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ConfigError(f"CNN channels {self.channels} and strides {self.strides} must be non-empty and "
                              f"of equal length")
        if min(self.channels) <= 0 or min(self.strides) <= 0 or self.dim <= 0 or self.n_mels <= 0:
            raise ConfigError("CNN channels, strides, dim and n_mels must be positive")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CNNConfig":
        return from_dict(cls, d)


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CNNEncoder(AudioEncoder):
    """Depthwise-separable CNN; see the module docstring."""

    encoder_type = "cnn"
    supports_mae = False

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers = [_conv_bn(1, cfg.channels[0], 3, cfg.strides[0])]
        for cin, cout, s in zip(cfg.channels[:-1], cfg.channels[1:], cfg.strides[1:]):
            layers.append(nn.Sequential(_conv_bn(cin, cin, 3, s, groups=cin), _conv_bn(cin, cout, 1, 1)))
        self.features = nn.Sequential(*layers)
        self.out = nn.Identity() if cfg.dim == cfg.channels[-1] else nn.Linear(cfg.channels[-1], cfg.dim)

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> "CNNEncoder":
        return cls(CNNConfig.from_dict(d))

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.cfg.n_mels, "CNNEncoder")
        h = self.features(x)
        h = nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.out(h)
