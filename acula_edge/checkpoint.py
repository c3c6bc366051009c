"""Teacher and student checkpoints: a folder with ``config.json`` beside ``model.safetensors``.

The config names the model class (an import path inside ``acula_edge``) and its architecture config, so a folder
rebuilds its own model; it also carries the front-end, windowing, labels and text-prompt embeddings that every later
stage (distill, export, device) needs. Weights are safetensors: nothing is ever unpickled.

Model contract (every architecture class): ``Cls.from_config(dict) -> nn.Module``, ``module.config_dict() -> dict``,
and ``forward(x)`` with x of shape (batch, 1, frames, n_mels) returning ``(embedding (batch, D), logits (batch, C))``.
"""

from __future__ import annotations

import dataclasses
import importlib

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acula_edge import atomic, typed
from acula_edge.errors import AculaEdgeError, CheckpointError
from acula_edge.frontend import FrontendConfig, Windowing
from acula_edge.manifest import (MAX_EMBEDDING_DIM, Prompts, frontend_from_json, labels_from_json,
                                 threshold_from_json, windowing_from_json)
from acula_edge.operating_point import OperatingPoint
from acula_edge.typed import SchemaError

CHECKPOINT_FORMAT = "acula-edge-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
KINDS = ("teacher", "student")
MAX_CONFIG_BYTES = 32 * 1024 * 1024  # config.json: architecture, prompts and training provenance; read before parsing


@dataclass(frozen=True)
class CheckpointInfo:
    """The JSON half of a checkpoint folder."""

    kind: str  # "teacher" or "student"
    architecture: str  # "acula_edge.<module>:<Class>" of the model
    model_config: dict[str, Any]  # passed to Class.from_config
    frontend: FrontendConfig
    windowing: Windowing
    labels: tuple[str, ...]  # class names of the logits output, in order
    embedding_dim: int  # size of the embedding output (the text-aligned space)
    threshold: float = 0.5  # decision threshold on the last label's probability (binary)
    prompts: Prompts = field(default_factory=Prompts)
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: teacher hash, training config, metrics
    operating_point: OperatingPoint | None = None  # the decision rule chosen on validation data (threshold = its)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, frontend=self.frontend.to_dict(),
                 windowing=self.windowing.to_dict())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> "CheckpointInfo":
        """Parse untrusted config JSON strictly (types, finite numbers, ranges); CheckpointError naming ``source``
        and the field otherwise."""
        if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
            fmt = d.get("format") if isinstance(d, dict) else None
            raise CheckpointError(f"{source}: not an acula-edge checkpoint config (format={fmt!r})")
        try:
            version = typed.integer(d.get("version", 0), "version", 0)
            if version > CHECKPOINT_VERSION:
                raise CheckpointError(f"{source}: checkpoint version {version} is newer than this acula-edge reads "
                                      f"({CHECKPOINT_VERSION}); upgrade acula-edge")
            missing = [k for k in ("kind", "architecture", "model_config", "frontend", "windowing", "labels",
                                   "embedding_dim") if k not in d]
            if missing:
                raise SchemaError(f"missing {missing}")
            unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)} - {"format", "version"})
            if unknown:
                raise SchemaError(f"unknown keys {unknown}")
            fe = frontend_from_json(d["frontend"])
            info = cls(kind=typed.string(d["kind"], "kind", 32), architecture=typed.string(d["architecture"],
                                                                                         "architecture", 200),
                       model_config=dict(typed.mapping(d["model_config"], "model_config")), frontend=fe,
                       windowing=windowing_from_json(d["windowing"], fe), labels=labels_from_json(d["labels"]),
                       embedding_dim=typed.integer(d["embedding_dim"], "embedding_dim", 1, MAX_EMBEDDING_DIM),
                       threshold=threshold_from_json(d.get("threshold", 0.5)),
                       prompts=Prompts.from_dict(d.get("prompts", {})),
                       extra=dict(typed.mapping(d.get("extra", {}), "extra")),
                       operating_point=OperatingPoint.from_json(d.get("operating_point")))
        except SchemaError as e:
            raise CheckpointError(f"{source}: malformed checkpoint config: {e}") from e
        if info.kind not in KINDS:
            raise CheckpointError(f"{source}: kind {info.kind!r} not in {KINDS}")
        return info


def read_checkpoint_info(folder: str | Path) -> CheckpointInfo:
    """Read a checkpoint's config.json (no torch needed)."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME}; not a checkpoint folder (make one with "
                              f"'acula-edge align' or 'acula-edge distill')")
    try:
        _, data = typed.read_json_file(path, MAX_CONFIG_BYTES)
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
    except SchemaError as e:
        raise CheckpointError(f"{path}: unreadable: it {e}") from e
    return CheckpointInfo.from_dict(data, str(path))


def resolve_architecture(path: str) -> type:
    """Import ``acula_edge.<module>:<Class>``; other modules are refused (a config must not run foreign code)."""
    module, _, name = path.partition(":")
    if not module.startswith("acula_edge.") or not name:
        raise CheckpointError(f"architecture {path!r} must be 'acula_edge.<module>:<Class>'")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"architecture {path!r} cannot be imported ({e}); was the checkpoint made by a "
                              f"newer acula-edge?") from e
    return cls


def require_safetensors(folder: str | Path) -> None:
    """Refuse a Hugging Face model folder whose weights are only pickled (``pytorch_model*.bin``): unpickling can
    run code, so it is never done, and the remedy is a conversion, not a weaker loader. Call it before
    ``from_pretrained(..., use_safetensors=True)``."""
    folder = Path(folder)
    if not any(folder.glob("*.safetensors")) and any(folder.glob("pytorch_model*.bin")):
        raise CheckpointError(f"{folder}: the weights are only a pickled pytorch_model.bin, which acula-edge never "
                              f"unpickles (it can run code); convert them to safetensors where you trust the file "
                              f"(model.save_pretrained(folder, safe_serialization=True)) and try again")


def weights_sha256(folder: str | Path) -> str:
    """sha256 of the checkpoint's weights file (identifies the source of an export or a distillation)."""
    return atomic.sha256_file(Path(folder) / WEIGHTS_NAME)


def save_checkpoint(model: Any, info: CheckpointInfo, folder: str | Path) -> Path:
    """Write ``model`` (a torch module) and ``info`` atomically to ``folder``; returns the folder."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic.atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME))
        atomic.write_json(tmp / CONFIG_NAME, info.to_dict())
    return Path(folder)


def load_checkpoint(folder: str | Path, map_location: str = "cpu") -> tuple[Any, CheckpointInfo]:
    """Rebuild the model of a checkpoint folder and load its weights; (model in eval mode, info)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    info = read_checkpoint_info(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}")
    try:
        model = resolve_architecture(info.architecture).from_config(info.model_config)
    except CheckpointError:
        raise
    except (AculaEdgeError, TypeError, ValueError, KeyError) as e:  # a model_config value of the wrong type
        raise CheckpointError(f"{folder / CONFIG_NAME}: its model_config does not build a "
                              f"{info.architecture} ({type(e).__name__}: {e}); fix the value or re-create the "
                              f"checkpoint") from e
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable or corrupt safetensors file ({e})") from e
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state, strict=True)
    return model.eval(), info


def check_state_dict(model: Any, state: dict[str, Any], source: str) -> None:
    """Raise CheckpointError listing missing, unexpected and wrongly shaped keys (all of them at once)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[:3]})")
        raise CheckpointError(f"{source}: weights do not match the architecture: " + "; ".join(parts))
