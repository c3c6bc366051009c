"""Masked-autoencoder ViT audio encoder in the shape of OPERA-GT (the encoder AcuLa aligns).

Input (B, 1, frames, n_mels) log-mel; non-overlapping ``patch_t x patch_f`` patches (4 x 4 on 256 x 64 for
OPERA-GT: a 64 x 16 grid, 1024 patches), a class token, fixed 2-D sin-cos position embeddings, pre-norm transformer
blocks. As OPERA's ``forward_feature``: no padding — a window of T frames gives floor(T / patch_t) time patches
(frames past ``input_frames`` are cropped) and the position embedding is cropped to the tokens present; the
embedding is the mean of the patch tokens, then the final norm (``pooling="mean_then_norm"``). The decoder
(``decoder_depth`` pre-norm ViT blocks of ``decoder_dim``) reconstructs masked patches for the
masked-spectrogram-modelling (MAM) loss: whole time rows (``mask_t``) and frequency columns (``mask_f``) of the
patch grid are hidden, as OPERA's ``random_masking_2d``. OPERA-GT's own decoder is Swin window attention: its
tensors are never loaded into ours (the loader reports the decoder as not loaded).

Parameter names follow OPERA / AudioMAE (timm ``Block``: ``blocks.{i}.norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``; ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``norm``,
``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``), so
a published OPERA-GT / AcuLa state dict loads with :func:`acula_edge.align.pretrained.load_pretrained`, which
reports (never hides) what did not match.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from acula_edge.align.encoders import AudioEncoder, check_input
from acula_edge.config import from_dict
from acula_edge.errors import ConfigError

POOLINGS = ("mean_then_norm", "norm_then_mean")


@dataclass(frozen=True)
class MAEViTConfig:
    """Architecture of :class:`MAEViTEncoder`. Defaults are OPERA-GT / AcuLa ViT-S."""

    input_frames: int = 256  # time axis after pad/crop (frames)
    n_mels: int = 64  # frequency axis (mel bins)
    patch_t: int = 4  # patch height in frames
    patch_f: int = 4  # patch width in mel bins
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    decoder_dim: int = 256
    decoder_depth: int = 6  # 0 = no decoder (inference-only encoder)
    decoder_heads: int = 8
    norm_pix_loss: bool = False  # normalise each target patch to zero mean, unit variance (MAE option)
    pooling: str = "mean_then_norm"  # OPERA's forward_feature; "norm_then_mean" normalises each token first


    def __post_init__(self) -> None:
        problems = []
        if self.input_frames % self.patch_t or self.n_mels % self.patch_f:
            problems.append(f"input_frames ({self.input_frames}) and n_mels ({self.n_mels}) must be multiples of "
                            f"patch_t ({self.patch_t}) and patch_f ({self.patch_f})")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.decoder_depth and self.decoder_dim % self.decoder_heads:
            problems.append(f"decoder_dim {self.decoder_dim} must be divisible by decoder_heads {self.decoder_heads}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling {self.pooling!r} not in {POOLINGS}")
        if self.embed_dim % 4 or self.decoder_dim % 4:
            problems.append("embed_dim and decoder_dim must be multiples of 4 (2-D sin-cos position embedding)")
        if problems:
            raise ConfigError("invalid MAE ViT config: " + "; ".join(problems))

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (time patches, frequency patches)."""
        return self.input_frames // self.patch_t, self.n_mels // self.patch_f

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MAEViTConfig":
        return from_dict(cls, d)


# Sizes by name. "vit-s" is OPERA-GT / AcuLa's; "tiny" is for tests; "small-cpu" trains on a CPU.
SIZES: dict[str, dict[str, Any]] = {
    "vit-s": dict(embed_dim=384, depth=12, num_heads=6, decoder_dim=256, decoder_depth=6, decoder_heads=8),
    "small-cpu": dict(embed_dim=128, depth=4, num_heads=4, decoder_dim=64, decoder_depth=2, decoder_heads=4),
    "tiny": dict(embed_dim=32, depth=1, num_heads=2, decoder_dim=16, decoder_depth=1, decoder_heads=2),
}


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding (MAE's ``get_2d_sincos_pos_embed_flexible``): (gh*gw [+1], dim)."""
    gh, gw = grid

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw_mesh, gh_mesh = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    emb = np.concatenate([one_d(dim // 2, gh_mesh), one_d(dim // 2, gw_mesh)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with timm's parameter names."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: MAEViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, (cfg.patch_t, cfg.patch_f), stride=(cfg.patch_t, cfg.patch_f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, gh*gw, D), index = t * gw + f


class MAEViTEncoder(AudioEncoder):
    """OPERA-GT-shaped MAE ViT; see the module docstring."""

    encoder_type = "mae-vit"

    def __init__(self, cfg: MAEViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed(d, cfg.grid))[None], requires_grad=False)
        self.blocks = nn.ModuleList([Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        if cfg.decoder_depth:
            dd = cfg.decoder_dim
            self.decoder_embed = nn.Linear(d, dd)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
            self.decoder_pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed(dd, cfg.grid))[None],
                                                  requires_grad=False)
            self.decoder_blocks = nn.ModuleList([Block(dd, cfg.decoder_heads, cfg.mlp_ratio)
                                                 for _ in range(cfg.decoder_depth)])
            self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
            self.decoder_pred = nn.Linear(dd, cfg.patch_t * cfg.patch_f)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        if self.cfg.decoder_depth:
            nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def supports_mae(self) -> bool:  # type: ignore[override]
        return self.cfg.decoder_depth > 0

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> "MAEViTEncoder":
        return cls(MAEViTConfig.from_dict(d))

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    def inference_config(self) -> dict[str, Any]:
        return dataclasses.asdict(dataclasses.replace(self.cfg, decoder_depth=0))

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not (k.startswith("decoder") or k == "mask_token")}

    def load_groups(self) -> dict[str, tuple[str, ...]]:
        """Module groups that :func:`load_pretrained` loads whole or not at all: the encoder, and the decoder
        (OPERA-GT's decoder is Swin window attention, ours ViT blocks: never mixed)."""
        return {"encoder": ("patch_embed", "cls_token", "pos_embed", "blocks", "norm"),
                "decoder": ("decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks", "decoder_norm",
                            "decoder_pred")}

    @property
    def dim(self) -> int:
        return self.cfg.embed_dim

    def time_patches(self, frames: int) -> int:
        """Time patches of a window of ``frames`` frames: no padding, frames beyond ``input_frames`` cropped."""
        gh = min(frames, self.cfg.input_frames) // self.cfg.patch_t
        if gh < 1:
            raise ConfigError(f"MAEViTEncoder needs windows of at least patch_t = {self.cfg.patch_t} frames, got "
                              f"{frames}")
        return gh

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.cfg.n_mels, "MAEViTEncoder")
        return x[..., :self.time_patches(x.shape[-2]) * self.cfg.patch_t, :]

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens of a cropped window plus the first len(tokens) position embeddings (OPERA's cropping)."""
        tokens = self.patch_embed(x)
        return tokens + self.pos_embed[:, 1:tokens.shape[1] + 1, :]

    def _encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class token + tokens through the blocks; NOT normed (the caller applies ``norm``)."""
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1)
        for blk in self.blocks:
            h = blk(h)
        return h

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self._encode(self._tokens(self._crop(x)))[:, 1:, :]
        if self.cfg.pooling == "mean_then_norm":
            return self.norm(h.mean(dim=1))
        return self.norm(h).mean(dim=1)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, gh * patch_t, n_mels) -> (B, gh * gw, patch_t * patch_f), in patch-embedding order."""
        c = self.cfg
        gh, gw = x.shape[-2] // c.patch_t, c.grid[1]
        p = x.reshape(x.shape[0], gh, c.patch_t, gw, c.patch_f).permute(0, 1, 3, 2, 4)
        return p.reshape(x.shape[0], gh * gw, c.patch_t * c.patch_f)

    def random_mask_2d(self, batch: int, mask_t: float, mask_f: float, device: torch.device,
                       time_patches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_keep (B, K) patch indices kept, mask (B, L) 1 = hidden) hiding whole time rows and frequency
        columns of a grid of ``time_patches`` (default: the full grid) x frequency patches; uses the torch global
        RNG (reproducible under seed_everything)."""
        gh, gw = time_patches or self.cfg.grid[0], self.cfg.grid[1]
        keep_t = max(1, int(gh * (1.0 - mask_t)))
        keep_f = max(1, int(gw * (1.0 - mask_f)))
        t_ids = torch.rand(batch, gh, device=device).argsort(dim=1)[:, :keep_t].sort(dim=1).values
        f_ids = torch.rand(batch, gw, device=device).argsort(dim=1)[:, :keep_f].sort(dim=1).values
        ids_keep = (t_ids[:, :, None] * gw + f_ids[:, None, :]).reshape(batch, keep_t * keep_f)
        mask = torch.ones(batch, gh * gw, device=device)
        mask.scatter_(1, ids_keep, 0.0)
        return ids_keep, mask

    def mae_loss(self, x: torch.Tensor, mask_t: float = 0.7, mask_f: float = 0.3) -> torch.Tensor:
        if not self.supports_mae:
            return super().mae_loss(x, mask_t, mask_f)
        x = self._crop(x)
        tokens = self._tokens(x)
        b, L, d = tokens.shape
        ids_keep, mask = self.random_mask_2d(b, mask_t, mask_f, x.device, L // self.cfg.grid[1])
        kept = torch.gather(tokens, 1, ids_keep[:, :, None].expand(-1, -1, d))
        h = self.decoder_embed(self.norm(self._encode(kept)))
        dd = h.shape[-1]
        full = self.mask_token.to(h.dtype).expand(b, L, dd).clone()
        full = full.scatter(1, ids_keep[:, :, None].expand(-1, -1, dd), h[:, 1:, :])
        h = torch.cat([h[:, :1, :], full], dim=1) + self.decoder_pos_embed[:, :L + 1, :]
        for blk in self.decoder_blocks:
            h = blk(h)
        pred = self.decoder_pred(self.decoder_norm(h))[:, 1:, :].float()
        target = self.patchify(x).float()
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred - target).square().mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def vit_config_for(size: str, frames: int, n_mels: int, patch: tuple[int, int] = (4, 4)) -> MAEViTConfig:
    """MAE ViT config of a named size (SIZES) for windows of ``frames`` x ``n_mels`` (frames rounded up to a
    whole number of patches)."""
    if size not in SIZES:
        raise ConfigError(f"unknown MAE ViT size {size!r}; choose one of {sorted(SIZES)}")
    pt, pf = patch
    if n_mels % pf:
        raise ConfigError(f"n_mels {n_mels} is not a multiple of the frequency patch size {pf}")
    return MAEViTConfig(input_frames=int(math.ceil(frames / pt) * pt), n_mels=n_mels, patch_t=pt, patch_f=pf,
                        **SIZES[size])
