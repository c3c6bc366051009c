"""The export targets: one module per target in ``acula_edge.export.targets``, found by name.

A target module defines ``TARGET = Target(...)``: what precisions it exports, a function that writes the model
file(s) into a folder, and the function that runs the written model in the target's real runtime (in
:mod:`acula_edge.export.runners`) for the parity gate. Adding a target means adding one file there (and its name to
``acula_edge.manifest.TARGETS`` and its bars to :mod:`acula_edge.export.tolerances`).

Target modules must import their converter lazily (inside functions) so listing targets stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from acula_edge.checkpoint import CheckpointInfo
from acula_edge.errors import ExportError
from acula_edge.manifest import TensorSpec

INPUT_NAME = "logmel"  # the single model input: one window of log-mel frames, NCHW (1, 1, frames, n_mels)
OUTPUT_NAMES = ("embedding", "logits")  # the model's outputs, in forward() order
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class ExportJob:
    """What a target needs to write one model file."""

    model: Any  # torch.nn.Module in eval mode: forward(x (1, 1, frames, n_mels)) -> (embedding, logits)
    info: CheckpointInfo  # front-end, windowing and labels of the model
    precision: str  # "fp32" or "int8"
    example: np.ndarray  # (1, 1, frames, n_mels) float32: the shape the model is exported with
    calibration: np.ndarray | None = None  # (N, 1, frames, n_mels) float32 real windows, required for int8
    calibration_method: str = "minmax"  # one of CALIBRATION_METHODS (targets without a choice use their default)


@dataclass(frozen=True)
class TargetResult:
    """What a target wrote into the bundle folder."""

    model_file: str  # file name of the model inside the folder
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]  # in the model file's output order
    versions: dict[str, str] = field(default_factory=dict)  # converter / runtime package versions
    extra: dict[str, Any] = field(default_factory=dict)  # target specific facts for the manifest
    findings: tuple[str, ...] = ()  # problems found at export time that do not stop it (reported in the manifest)
    files: tuple[str, ...] = ()  # other files written beside the model (their sha256 goes into the manifest)


# (model file, x (N, 1, frames, n_mels) float32, inputs, outputs, options) -> {output name: (N, ...) float32}
Runner = Callable[[Path, np.ndarray, tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict[str, Any]],
                  dict[str, np.ndarray]]


@dataclass(frozen=True)
class Target:
    """One export target."""

    name: str
    precisions: tuple[str, ...]  # subset of ("fp32", "int8")
    export: Callable[[ExportJob, Path], TargetResult]  # writes into an existing empty folder
    run: Runner  # runs the written model in the target's runtime
    runtime: str  # human name of the runtime used by ``run``
    calibration_methods: tuple[str, ...] = ("minmax",)  # int8 range methods it offers; the first is its default


def _discover() -> dict[str, Target]:
    from acula_edge.export import targets as package

    found: dict[str, Target] = {}
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{mod.name}")
        target = getattr(module, "TARGET", None)
        if not isinstance(target, Target):
            raise ExportError(f"target module {module.__name__} defines no TARGET = Target(...)")
        found[target.name] = target
    return found


_TARGETS: dict[str, Target] | None = None


def targets() -> dict[str, Target]:
    """Every registered target by name (sorted)."""
    global _TARGETS
    if _TARGETS is None:
        _TARGETS = _discover()
    return dict(_TARGETS)


def get_target(name: str) -> Target:
    """The target called ``name``; ExportError listing the registered ones otherwise."""
    all_targets = targets()
    if name not in all_targets:
        raise ExportError(f"unknown export target {name!r}; registered targets: {sorted(all_targets)}")
    return all_targets[name]


def target_precisions() -> list[tuple[str, str]]:
    """Every registered (target, precision) pair."""
    return [(t.name, p) for t in targets().values() for p in t.precisions]
