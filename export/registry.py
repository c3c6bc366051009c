"""The export targets: one :class:`Target` per file in ``acula_edge.export.targets``, found by name.

A :class:`Target` owns everything about a target: the precisions it exports, the function that writes its files,
the device backend class that runs them (``acula_edge.runtime.<x>_backend``, imported only when a bundle of that
target is loaded), the pip extra that installs that runtime, the files it writes and the parity tolerance per
precision. :data:`acula_edge.manifest.TARGETS`, :data:`acula_edge.manifest.RUNTIME_EXTRA`,
:data:`acula_edge.runtime.backends.REGISTRY` and :func:`acula_edge.export.tolerances.tolerance_for` are views of
these objects, so adding a target is one file here (plus its backend).

The device path reads this registry too (to find a bundle's backend), so neither this module nor a target module
may import torch or a converter at import time: converters load inside the export functions.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from acula_edge.errors import ExportError
from acula_edge.export.tolerances import Tolerance
from acula_edge.manifest import TensorSpec

if TYPE_CHECKING:  # pragma: no cover
    from acula_edge.checkpoint import CheckpointInfo
    from acula_edge.manifest import Manifest

INPUT_NAME = "logmel"  # the single model input: one window of log-mel frames, NCHW (1, 1, frames, n_mels)
OUTPUT_NAMES = ("embedding", "logits")  # the model's outputs, in forward() order
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class ExportJob:
    """What a target needs to write one model file."""

    model: Any  # torch.nn.Module in eval mode: forward(x (1, 1, frames, n_mels)) -> (embedding, logits)
    info: "CheckpointInfo"  # front-end, windowing and labels of the model
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


@dataclass(frozen=True)
class Target:
    """One export target and everything that belongs to it."""

    name: str  # manifest.target of its bundles
    precisions: tuple[str, ...]  # subset of ("fp32", "int8")
    export: Callable[[ExportJob, Path], TargetResult]  # writes into an existing empty folder
    backend: str  # "module:Class" of the acula_edge.runtime Backend that runs its bundles (imported lazily)
    extra: str  # pip extra installing that runtime: pip install 'acula-edge[<extra>]'
    runtime: str  # human name of the runtime
    model_file: str  # the model file's name in the bundle
    tolerances: Mapping[str, Tolerance]  # precision -> the parity gate's bars
    files: tuple[str, ...] = ()  # other files the target writes beside the model
    calibration_methods: tuple[str, ...] = ("minmax",)  # int8 range methods it offers; the first is its default
    # what verify checks beyond checksums: (bundle folder, manifest) -> problems, e.g. that tflm's C array holds the
    # model file's bytes
    check: Callable[[Path, "Manifest"], list[str]] | None = None
    # relative export time (seconds for the `small` student on a 2-core machine, benchmarks/RESULTS_export.md): an
    # export of several targets balances them over processes by it (:func:`acula_edge.export.api.plan_lanes`)
    export_cost: float = 1.0
    # a target whose export reuses this one's work in the same process (tflm reuses tflite's conversion), so both
    # go to the same process
    reuses: str = ""

    def __post_init__(self) -> None:
        if set(self.tolerances) != set(self.precisions):
            raise ExportError(f"target {self.name!r} declares tolerances for {sorted(self.tolerances)} but exports "
                              f"{list(self.precisions)}: declare one Tolerance per precision")

    def tolerance(self, precision: str) -> Tolerance:
        """The declared bars at ``precision``; ExportError when the target does not export it."""
        if precision not in self.tolerances:
            raise ExportError(f"no parity tolerance declared for target {self.name!r} at precision {precision!r}; "
                              f"it exports {list(self.precisions)}")
        return self.tolerances[precision]


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
    return dict(sorted(found.items()))


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
