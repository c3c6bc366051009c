"""Device-sized students: depthwise-separable CNNs built only from int8-friendly operations.

Every operation runs (and quantizes well) on ExecuTorch/XNNPACK, ONNX Runtime, LiteRT and TFLite Micro: a
space-to-depth reshape/transpose in front of the stem, conv2d, depthwise conv2d, batch-norm (folded into the
preceding conv at export), ReLU/ReLU6/hard-swish, residual add, ``adaptive_avg_pool2d`` (delegated by XNNPACK,
unlike a plain ``mean(dim=(2, 3))``) and linear layers. No recurrent or attention layers, no data-dependent shapes.

``DSCNNStudent.forward(x)`` takes log-mel windows of shape (batch, 1, frames, n_mels) and returns
``(embedding (batch, embedding_dim), logits (batch, num_classes))``. The embedding is projected into the teacher's
shared (text-aligned) space; the logits are a linear head on that embedding, so a student trained without a
teacher still trains its embedding head (through the classification loss).

Sizes (:data:`PRESETS`): ``tiny`` (<= 30K parameters), ``small`` (<= 150K), ``small-mcu`` (<= 150K; ``small``
re-shaped so its int8 model fits a 128 KB-RAM microcontroller) and ``base`` (<= 1M), budgets that hold
for embeddings up to 384 wide (all-MiniLM-L6-v2's width) and 2 classes; :func:`model_report` gives parameters and
multiply-accumulates per window.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acula_edge.errors import ConfigError

ARCHITECTURE = "acula_edge.distill.students:DSCNNStudent"
ACTIVATIONS = ("relu", "relu6", "hardswish")
# How the stem reads the single-channel log-mel. "conv": one strided conv on 1 input channel (how students train).
# "space_to_depth": the same function computed as a (time stride x mel stride) space-to-depth (e.g. 4 x 2 blocks ->
# 8 channels) followed by a stride-1 conv on those channels; :meth:`DSCNNStudent.for_export` converts a "conv"
# student to it exactly. Why: a 1-input-channel conv is 2x slower in int8 than fp32 under XNNPACK and was 35-41 %
# of a student's int8 time; with the space-to-depth form `small` int8 ran 26-27 % faster on LiteRT and ExecuTorch
# (benchmarks/RESULTS_runtime.md). Trained from scratch in that form (its 27 extra taps free) `small` scored
# within seed noise of, but not above, the plain stem (RESULTS_runtime.md), so students train with "conv".
STEMS = ("conv", "space_to_depth")
# Parameter budget per named size (the device classes).
PARAM_BUDGETS = {"tiny": 30_000, "small": 150_000, "small-mcu": 150_000, "base": 1_000_000}


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of a :class:`DSCNNStudent`. Strides are (time, mel)."""

    channels: tuple[int, ...] = (48, 48, 48, 48)  # stem width, then the output width of each DS block
    strides: tuple[tuple[int, int], ...] = ((4, 2), (1, 1), (2, 2), (1, 1))  # stem stride, then one per DS block
    stem_kernel: tuple[int, int] = (9, 5)  # (time, mel) kernel of the first full convolution
    stem: str = "conv"  # one of STEMS: the training form; export converts "conv" to "space_to_depth" (exact)
    embedding_dim: int = 384  # width of the embedding output: the teacher's shared space
    num_classes: int = 2  # width of the logits output
    activation: str = "relu"  # one of ACTIVATIONS
    # batch-norm on the single input channel. Off by default: it cannot be folded into the padded stem conv, so it
    # stays a float op in full-int8 TFLite/TFLM models (export finding); the stem's own batch-norm absorbs the scale
    input_norm: bool = False
    dropout: float = 0.1  # before the embedding projection (training only)

    def __post_init__(self) -> None:
        problems = []
        if len(self.channels) < 1 or len(self.channels) != len(self.strides):
            problems.append(f"channels ({len(self.channels)}) and strides ({len(self.strides)}) need one entry per "
                            f"layer (stem first)")
        if any(int(c) <= 0 for c in self.channels):
            problems.append(f"channels must be positive, got {self.channels}")
        if any(len(s) != 2 or min(s) < 1 for s in self.strides):
            problems.append(f"strides must be (time, mel) pairs >= 1, got {self.strides}")
        if self.stem not in STEMS:
            problems.append(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.stem == "space_to_depth" and any(k % 2 == 0 for k in self.stem_kernel):
            problems.append(f"a space_to_depth stem needs an odd stem_kernel (padding k // 2 on both sides), got "
                            f"{self.stem_kernel}; use stem='conv'")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.embedding_dim <= 0 or self.num_classes <= 0:
            problems.append(f"embedding_dim and num_classes must be positive, got {self.embedding_dim}, "
                            f"{self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ConfigError("invalid student config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = [list(s) for s in self.strides]
        d["stem_kernel"] = list(self.stem_kernel)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudentConfig":
        """Strict (:func:`acula_edge.config.from_dict`): unknown keys and wrong types are refused by name."""
        from acula_edge.config import from_dict

        return from_dict(cls, d, "student config")


# Named trunks. Widths were chosen so the parameter budget holds with a 384-wide embedding projection (which alone
# costs 385 * width parameters): tiny is MLPerf-Tiny keyword-spotting class, base EfficientAT mn04 class.
PRESETS: dict[str, StudentConfig] = {
    "tiny": StudentConfig(channels=(40, 40, 40, 40, 40), strides=((4, 2), (1, 1), (2, 2), (1, 1), (2, 1))),
    "small": StudentConfig(channels=(64, 96, 96, 128, 128, 128),
                           strides=((4, 2), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1))),
    # small's depth and strides with a narrow start and no residual block at the end, sized for a 128 KB-RAM MCU
    # (TFLite Micro arena + C front-end + window buffer; benchmarks/RESULTS_firmware.md). The arena peak of an int8
    # student is set by (1) the explicit PAD TFLite inserts before every stride-2 depthwise conv (PyTorch's
    # symmetric padding is not TF "SAME" on even sizes), which copies the largest activation: 24/32 channels at
    # 49 x 16 instead of small's 64/96. The last block widens 128 -> 160 instead of being a residual (chosen when
    # the full-int8 conversion still left a final residual add and the pool in float32, 4x the bytes;
    # export/pt2e.py now quantizes them: benchmarks/RESULTS_firmware.md).
    "small-mcu": StudentConfig(channels=(24, 32, 96, 128, 128, 160),
                               strides=((4, 2), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1))),
    "base": StudentConfig(channels=(96, 128, 128, 256, 256, 256, 384, 384),
                          strides=((4, 2), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1), (2, 1), (1, 1))),
}


def student_config(size: str, embedding_dim: int, num_classes: int, **overrides: Any) -> StudentConfig:
    """The preset ``size`` ("tiny", "small", "small-mcu", "base") sized for the given embedding and class count."""
    if size not in PRESETS:
        raise ConfigError(f"unknown student size {size!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[size], embedding_dim=int(embedding_dim), num_classes=int(num_classes),
                               **overrides)


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish}[name]()


class ConvBN(nn.Sequential):
    """conv2d (no bias; the batch-norm after it folds into it at export) + batch-norm + activation."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], stride: tuple[int, int], groups: int,
                 activation: str | None) -> None:
        pad = (kernel[0] // 2, kernel[1] // 2)
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, pad, groups=groups, bias=False),
                                   nn.BatchNorm2d(c_out)]
        if activation:
            layers.append(_activation(activation))
        super().__init__(*layers)


def _block_taps(kernel: int, stride: int) -> int:
    """Blocks of ``stride`` input rows a stride-``stride`` conv of ``kernel`` taps (padding kernel // 2) reaches on
    either side of its own block: the stride-1 conv on the space-to-depth blocks has 2 * this + 1 taps."""
    pad = kernel // 2
    return max(-(-pad // stride), (kernel - 1 - pad) // stride)


def space_to_depth_weight(weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """A (C, 1, kh, kw) stem-conv weight (stride ``stride``, padding k // 2) as the (C, sh * sw, Kh, Kw) weight of
    the stride-1 conv on space-to-depth blocks that computes the same outputs; taps outside the original kernel
    are zero. Channel ``a * sw + b`` of the blocks holds input row ``a`` and column ``b`` of each block."""
    c, one, kh, kw = weight.shape
    if one != 1:
        raise ConfigError(f"a space-to-depth stem converts a 1-input-channel conv, got weight shape "
                          f"{tuple(weight.shape)}")
    sh, sw = stride
    rh, rw = _block_taps(kh, sh), _block_taps(kw, sw)
    out = weight.new_zeros(c, sh * sw, 2 * rh + 1, 2 * rw + 1)
    for a in range(sh):
        for u in range(2 * rh + 1):
            i = (u - rh) * sh + a + kh // 2  # the original kernel row this tap reads
            if not 0 <= i < kh:
                continue
            for b in range(sw):
                for v in range(2 * rw + 1):
                    j = (v - rw) * sw + b + kw // 2
                    if 0 <= j < kw:
                        out[:, a * sw + b, u, v] = weight[:, 0, i, j]
    return out


class SpaceToDepthStem(ConvBN):
    """The stem conv (1 input channel, ``kernel``, ``stride``, padding kernel // 2) computed as a space-to-depth of
    the input into ``stride`` blocks followed by a stride-1 conv over the block grid (same outputs, see
    :func:`space_to_depth_weight`). Loads the plain stem's (C, 1, kh, kw) weights too, converting them."""

    def __init__(self, c_out: int, kernel: tuple[int, int], stride: tuple[int, int], activation: str) -> None:
        rh, rw = _block_taps(kernel[0], stride[0]), _block_taps(kernel[1], stride[1])
        super().__init__(stride[0] * stride[1], c_out, (2 * rh + 1, 2 * rw + 1), (1, 1), groups=1,
                         activation=activation)
        self.block = (int(stride[0]), int(stride[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, m = x.shape
        sh, sw = self.block
        pad_t, pad_m = -t % sh, -m % sw
        if pad_t or pad_m:  # the strided conv's zero padding at the end, made explicit
            x = nn.functional.pad(x, (0, pad_m, 0, pad_t))
        tb, mb = (t + pad_t) // sh, (m + pad_m) // sw
        x = x.reshape(b, tb, sh, mb, sw).permute(0, 2, 4, 1, 3).reshape(b, sh * sw, tb, mb)
        return super().forward(x)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "0.weight"  # a plain stem's (C, 1, kh, kw) weight converts on load
        w = state_dict.get(key)
        if w is not None and w.shape[1] == 1 and self[0].weight.shape[1] != 1:
            state_dict[key] = space_to_depth_weight(w, self.block)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DSBlock(nn.Module):
    """Depthwise 3x3 conv + pointwise 1x1 conv, each with batch-norm and activation; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int], activation: str) -> None:
        super().__init__()
        self.depthwise = ConvBN(c_in, c_in, (3, 3), stride, groups=c_in, activation=activation)
        self.pointwise = ConvBN(c_in, c_out, (1, 1), (1, 1), groups=1, activation=activation)
        self.residual = c_in == c_out and tuple(stride) == (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return x + y if self.residual else y


class DSCNNStudent(nn.Module):
    """Depthwise-separable CNN student; see the module docstring for the contract."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.input_norm = nn.BatchNorm2d(1) if config.input_norm else nn.Identity()
        if config.stem == "space_to_depth":
            self.stem: nn.Module = SpaceToDepthStem(c[0], config.stem_kernel, config.strides[0], config.activation)
        else:
            self.stem = ConvBN(1, c[0], config.stem_kernel, config.strides[0], groups=1, activation=config.activation)
        self.blocks = nn.Sequential(*[DSBlock(c[i - 1], c[i], config.strides[i], config.activation)
                                      for i in range(1, len(c))])
        self.dropout = nn.Dropout(config.dropout)
        self.embed = nn.Linear(c[-1], config.embedding_dim)
        self.head = nn.Linear(config.embedding_dim, config.num_classes)

    @classmethod
    def from_config(cls, config: dict[str, Any] | StudentConfig) -> "DSCNNStudent":
        return cls(config if isinstance(config, StudentConfig) else StudentConfig.from_dict(config))

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def for_export(self) -> "DSCNNStudent":
        """The same function in the form that runs fastest in int8 runtimes: a copy with the space-to-depth stem,
        weights converted exactly (:func:`space_to_depth_weight`), in eval mode. Export calls this."""
        model = DSCNNStudent(dataclasses.replace(self.config, stem="space_to_depth"))
        model.load_state_dict(self.state_dict())
        return model.to(next(self.parameters()).dtype).eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 1, frames, n_mels) -> pooled trunk features (batch, channels[-1])."""
        h = self.blocks(self.stem(self.input_norm(x)))
        # adaptive_avg_pool2d (not mean(dim=(2, 3))) so XNNPACK delegates the global pooling.
        return torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(self.dropout(self.features(x)))
        return embedding, self.head(embedding)


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters (batch-norm statistics excluded: they fold away at export)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one input of ``input_shape`` (1, 1, frames, n_mels), counted
    analytically for every Conv2d and Linear layer via forward hooks (batch-norm, activations, pooling excluded)."""
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += (out[0].numel() // mod.out_features) * mod.in_features * mod.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *tuple(input_shape)[1:]))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)


def model_report(model: nn.Module, frames: int, n_mels: int) -> dict[str, int]:
    """{"parameters": ..., "macs_per_window": ...} for one (1, 1, frames, n_mels) window."""
    return {"parameters": count_parameters(model), "macs_per_window": count_macs(model, (1, 1, frames, n_mels))}


def build_student(size: str, embedding_dim: int, num_classes: int, **overrides: Any) -> DSCNNStudent:
    """A freshly initialised student of the named size."""
    return DSCNNStudent(student_config(size, embedding_dim, num_classes, **overrides))
