"""Bundle assembly: the manifest of an export, the reference set for later verification, version stamps.

A bundle folder holds the model file, any target files (C sources, headers), ``reference.npz`` (a few input windows
with the PyTorch outputs, so ``acula-edge verify`` can re-run the parity gate without the checkpoint; plain arrays,
loaded with ``allow_pickle=False``) and ``manifest.json``. The folder is written atomically by
:func:`acula_edge.export.api.export_model` with :func:`acula_edge.atomic.atomic_dir`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from acula_edge import atomic
from acula_edge.checkpoint import CheckpointInfo
from acula_edge.errors import BundleError
from acula_edge.export.registry import TargetResult
from acula_edge.manifest import Manifest
from acula_edge.runtime.site_shift import DESCRIPTION_KEY

REFERENCE_FILE = "reference.npz"
REFERENCE_WINDOWS = 8  # windows stored in reference.npz


def write_reference(path: Path, x: np.ndarray, outputs: dict[str, np.ndarray], recording: np.ndarray | None = None,
                    y: np.ndarray | None = None) -> None:
    """Store input windows ``x`` (N, 1, frames, n_mels), the PyTorch outputs for them and, when known, each window's
    recording id and label index (-1 unknown), for the recording-level figures of the gate (no pickles)."""
    buf = io.BytesIO()
    meta = {k: np.asarray(v, dtype=np.int64) for k, v in (("recording", recording), ("y", y)) if v is not None}
    np.savez(buf, input=np.ascontiguousarray(x, dtype=np.float32),
             **{f"output_{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in outputs.items()}, **meta)
    atomic.write_bytes(path, buf.getvalue())


def read_reference(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(input windows, {output name: PyTorch output}, {"recording"/"y": per-window ids, when stored}) from a
    bundle's reference.npz."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x = data["input"]
            outs = {k[len("output_"):]: data[k] for k in data.files if k.startswith("output_")}
            meta = {k: data[k] for k in ("recording", "y") if k in data.files}
    except (OSError, KeyError, ValueError) as e:
        raise BundleError(f"{path}: unreadable reference set ({e}); re-export the bundle") from e
    return x, outs, meta


def file_hashes(folder: Path, names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """{file name: sha256} of files inside ``folder``."""
    return {name: atomic.sha256_file(folder / name) for name in names}


# Checkpoint ``extra`` entries a bundle carries to the device: the description of the training audio (site-shift
# warning and adaptation, acula_edge.runtime.site_shift).
CHECKPOINT_EXTRA_KEYS = (DESCRIPTION_KEY,)


def build_manifest(info: CheckpointInfo, target: str, precision: str, result: TargetResult, model_sha256: str,
                   parity: dict[str, Any], source_sha256: str, versions: dict[str, str],
                   extra: dict[str, Any]) -> Manifest:
    """The bundle's manifest: the model's contract from ``info`` plus what the target wrote."""
    manifest = Manifest(
        target=target, precision=precision, model_file=result.model_file, model_sha256=model_sha256,
        frontend=info.frontend, windowing=info.windowing, inputs=result.inputs, outputs=result.outputs,
        labels=tuple(info.labels), threshold=info.threshold, prompts=info.prompts, parity=parity,
        source_checkpoint_sha256=source_sha256, versions=dict(versions),
        extra={**{k: info.extra[k] for k in CHECKPOINT_EXTRA_KEYS if k in info.extra}, **extra},
        operating_point=info.operating_point)
    manifest.validate()
    return manifest


def set_default_permissions(folder: Path) -> None:
    """Give the bundle folder and its files the usual umask permissions (temporary files are created 0600/0700),
    so a bundle copied to a device or shared folder is readable like any other export."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)


def package_versions() -> dict[str, str]:
    """Versions of acula-edge, numpy and torch (targets add their converter and runtime)."""
    import torch

    import acula_edge

    return {"acula-edge": acula_edge.__version__, "numpy": np.__version__, "torch": torch.__version__}
