"""Loading foreign weights into an encoder, and saying what happened: :func:`load_pretrained` and its
:class:`StateDictReport`.

A model's parameters fall into module groups (:meth:`AudioEncoder.load_groups`: the MAE ViT's "encoder" and
"decoder"; one group otherwise). Each group loads whole or not at all: a group whose tensors in the file do not match
the model's names and shapes exactly is another architecture (OPERA-GT's Swin decoder against our ViT decoder) and
keeps its fresh initialisation; it is never filled with tensors of a different design. The report lists per group
what loaded, what was missing, unexpected or of another shape, and ``complete`` is true only when every group
loaded. Files are read with ``weights_only=True`` (never unpickled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acula_edge.errors import CheckpointError

# Key prefixes stripped from foreign state dicts (Lightning, DDP and wrapper modules add them).
FOREIGN_PREFIXES = ("state_dict.", "model.", "module.", "encoder.", "net.")


@dataclass(frozen=True)
class ModuleLoad:
    """What happened to one module group of the model (e.g. the MAE ViT's "encoder" and "decoder")."""

    name: str
    status: str  # "loaded", "absent" (no tensor of it in the file), "architecture differs" (the file's is another
    # design) or "partial" (a transformers model: the tensors the file lacks were freshly initialised by transformers)
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
        if self.status == "partial":
            return (f"  {self.name}: PARTLY loaded ({self.loaded} tensors); freshly initialised: "
                    f"{', '.join((self.missing + self.mismatched)[:5])}"
                    f"{' ...' if len(self.missing + self.mismatched) > 5 else ''}")
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
