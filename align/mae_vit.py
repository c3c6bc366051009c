"""Masked-autoencoder ViT audio encoder in the shape of OPERA-GT (the encoder AcuLa aligns).

Input (B, 1, frames, n_mels) log-mel; non-overlapping ``patch_t x patch_f`` patches (4 x 4 on 256 x 64 for
OPERA-GT: a 64 x 16 grid, 1024 patches), a class token, fixed 2-D sin-cos position embeddings, pre-norm transformer
blocks. As OPERA's ``forward_feature``: no padding — a window of T frames gives floor(T / patch_t) time patches
(frames past ``input_frames`` are cropped) and the position embedding is cropped to the tokens present; the
embedding is the mean of the patch tokens, then the final norm (``pooling="mean_then_norm"``). The decoder
(``decoder_depth`` pre-norm ViT blocks of ``decoder_dim``) reconstructs masked patches for the
masked-spectrogram-modelling (MAM) loss: whole time rows (``mask_t``) and frequency columns (``mask_f``) of the
patch grid are hidden, as OPERA's ``random_masking_2d``. OPERA-GT's own decoder is Swin window attention: its
tensors are never loaded into ours (:func:`load_pretrained` reports the decoder as not loaded).

Parameter names follow OPERA / AudioMAE (timm ``Block``: ``blocks.{i}.norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``; ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``norm``,
``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``), so
a published OPERA-GT / AcuLa state dict loads with :func:`load_pretrained`, which reports (never hides) what did not
match.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from acula_edge.align.encoders import AudioEncoder, check_input, config_from_dict
from acula_edge.errors import CheckpointError, ConfigError

# Key prefixes stripped from foreign state dicts (Lightning, DDP and wrapper modules add them).
FOREIGN_PREFIXES = ("state_dict.", "model.", "module.", "encoder.", "net.")
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
        return config_from_dict(cls, d)


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


@dataclass(frozen=True)
class ModuleLoad:
    """What happened to one module group of the model (e.g. the MAE ViT's "encoder" and "decoder")."""

    name: str
    status: str  # "loaded", "absent" (no tensor of it in the file) or "architecture differs" (file's is another design)
    loaded: int = 0  # tensors copied
    missing: tuple[str, ...] = ()  # the model's tensors of this group that the file lacks
    unexpected: tuple[str, ...] = ()  # the file's tensors under this group's names that the model lacks
    mismatched: tuple[str, ...] = ()  # same name, other shape ("name: file (..) vs model (..)")

    @property
    def is_loaded(self) -> bool:
        return self.status == "loaded"

    def line(self) -> str:
        if self.is_loaded:
            return f"  {self.name}: loaded ({self.loaded} tensors)"
        why = ("no tensor of it in the file" if self.status == "absent" else
               f"the file's {self.name} is another architecture: "
               + "; ".join(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                           for what, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                                              ("other shape", self.mismatched)) if keys))
        return f"  {self.name}: NOT loaded, freshly initialised ({why})"


@dataclass(frozen=True)
class StateDictReport:
    """What happened when a foreign state dict was loaded into a model (non-fatal; print it). Each module group
    (:meth:`AudioEncoder.load_groups`) loads whole or not at all: a group whose tensors in the file do not match the
    model's names and shapes exactly is another architecture, left freshly initialised rather than filled with
    tensors of a different design."""

    source: str
    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # in the model, not loaded from the file: left at their initial values
    unexpected: tuple[str, ...] = ()  # in the file, not loaded into the model: ignored
    mismatched: tuple[str, ...] = ()  # same name, other shape: ignored ("name: file (..) vs model (..)")
    stripped_prefix: str = ""
    modules: tuple[ModuleLoad, ...] = ()
    unused: tuple[str, ...] = ()  # in the file, outside every module group of the model (e.g. a task head)

    @property
    def complete(self) -> bool:
        """True when every module group of the model was loaded from the file."""
        return all(m.is_loaded for m in self.modules) and not (self.missing or self.mismatched)

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"
                 + (f" (after stripping prefix {self.stripped_prefix!r})" if self.stripped_prefix else "")
                 + ("" if self.complete else "; INCOMPLETE")]
        lines += [m.line() for m in self.modules]
        if self.unused:
            lines.append(f"  {len(self.unused)} tensors of the file not used by this model: "
                         f"{', '.join(self.unused[:8])}{' ...' if len(self.unused) > 8 else ''}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored with the teacher checkpoint)."""
        return {"source": self.source, "complete": self.complete, "stripped_prefix": self.stripped_prefix,
                "loaded": len(self.loaded), "missing": list(self.missing), "unexpected": list(self.unexpected),
                "mismatched": list(self.mismatched), "unused": list(self.unused),
                "modules": [{"name": m.name, "status": m.status, "loaded": m.loaded, "missing": list(m.missing),
                             "unexpected": list(m.unexpected), "mismatched": list(m.mismatched)}
                            for m in self.modules]}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint (loaded with weights_only=True; a nested
    ``state_dict`` / ``model`` entry is used when present)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unsafe or corrupt files
        raise CheckpointError(f"{path}: cannot be read safely with weights_only=True ({type(e).__name__}: {e}); "
                              f"convert it to safetensors with the code that wrote it") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _in_group(key: str, names: tuple[str, ...]) -> bool:
    return any(not n or key == n or key.startswith(n + ".") for n in names)


def load_pretrained(module: nn.Module, state: dict[str, torch.Tensor] | str | Path,
                    source: str = "state dict") -> StateDictReport:
    """Copy ``state`` into ``module`` one module group at a time and report what happened.

    Groups come from ``module.load_groups()`` when it has one (the MAE ViT: "encoder", "decoder"), else the whole
    module is one group. A group loads only when the file holds exactly its tensor names with the same shapes;
    otherwise it keeps its initial values and the report says why (another architecture, or absent). Common
    wrapper prefixes (FOREIGN_PREFIXES) are stripped when that matches more names.
    """
    if not isinstance(state, dict):
        source = str(state)
        state = read_state_dict(state)
    own = module.state_dict()
    best, best_prefix = state, ""
    best_hits = len(set(state) & set(own))
    for prefix in FOREIGN_PREFIXES:
        cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(set(cand) & set(own))
        if hits > best_hits:
            best, best_prefix, best_hits = cand, prefix, hits
    state = best
    groups = module.load_groups() if hasattr(module, "load_groups") else {"model": ("",)}
    ok: dict[str, torch.Tensor] = {}
    reports, missing, mismatched, claimed, active = [], [], [], set(), []
    for name, names in groups.items():
        mine = sorted(k for k in own if _in_group(k, names) and k not in claimed)
        if not mine:
            continue
        active.append(names)
        claimed.update(mine)
        theirs = sorted(k for k in state if _in_group(k, names))
        miss = tuple(k for k in mine if k not in state)
        extra = tuple(k for k in theirs if k not in own)
        shape = tuple(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mine
                      if k in state and tuple(state[k].shape) != tuple(own[k].shape))
        if not theirs:
            status = "absent"
        elif miss or extra or shape:
            status = "architecture differs"
        else:
            status = "loaded"
            ok.update({k: state[k].to(own[k].dtype) for k in mine})
        if status != "loaded":
            missing.extend(mine)
            mismatched.extend(shape)
        reports.append(ModuleLoad(name, status, len(mine) if status == "loaded" else 0, miss, extra, shape))
    module.load_state_dict(ok, strict=False)
    unused = tuple(sorted(k for k in state if not any(_in_group(k, names) for names in active)))
    return StateDictReport(source=source, loaded=tuple(sorted(ok)), missing=tuple(sorted(missing)),
                           unexpected=tuple(sorted(set(state) - set(ok))), mismatched=tuple(mismatched),
                           stripped_prefix=best_prefix, modules=tuple(reports), unused=unused)


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
