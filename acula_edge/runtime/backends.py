"""Backends: one small class per runtime, behind a registry keyed by ``manifest.target``.

A backend runs one log-mel window, float32 (1, 1, frames, n_mels), and returns float32 ``(embedding (D,),
logits (C,))``. Integer input/output tensors (full-int8 TFLite/TFLM) are quantized and dequantized here from the
manifest's :class:`~acula_edge.manifest.TensorSpec` (real = scale * (q - zero_point)), so callers always pass
float log-mel. Adding a target means adding one module with a :class:`Backend` subclass and one registry line.

Backends are safe to share between threads: runtimes whose interpreter is not re-entrant (LiteRT, ExecuTorch,
TFLM) serialise :meth:`Backend.run` with a lock; onnxruntime sessions are thread-safe and run concurrently.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from acula_edge.errors import BundleError
from acula_edge.manifest import Manifest, TensorSpec

# manifest.target -> "module:Class"; the module is imported only when a bundle of that target is loaded.
REGISTRY: dict[str, str] = {
    "onnx": "acula_edge.runtime.onnx_backend:OnnxBackend",
    "tflite": "acula_edge.runtime.litert_backend:LiteRTBackend",
    "executorch": "acula_edge.runtime.executorch_backend:ExecuTorchBackend",
    "tflm": "acula_edge.runtime.tflm_backend:TFLMBackend",
}

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
               "int32": (-2147483648, 2147483647)}


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float -> the integer dtype of ``spec`` (round half to even, saturate); float specs pass through."""
    if spec.dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32)
    lo, hi = _INT_RANGES[spec.dtype]
    q = np.rint(x / np.float32(spec.scale)) + np.float32(spec.zero_point)
    return np.clip(q, lo, hi).astype(spec.dtype)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The integer output ``q`` as float32 using ``spec``'s scale and zero point; float outputs pass through."""
    if spec.dtype == "float32":
        return np.asarray(q, dtype=np.float32)
    return ((q.astype(np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)).astype(np.float32)


def check_quantized(spec: TensorSpec, source: Path) -> None:
    if spec.dtype != "float32" and (spec.scale is None or spec.zero_point is None or spec.scale <= 0):
        raise BundleError(f"{source}: tensor {spec.name!r} is {spec.dtype} but the manifest gives no valid scale/"
                          f"zero_point ({spec.scale}, {spec.zero_point}); re-export the bundle")


class Backend:
    """Base class: subclasses load ``path`` in ``__init__`` and implement :meth:`_invoke`."""

    #: whether ``_invoke`` may run in several threads at once
    thread_safe = False

    def __init__(self, path: Path, manifest: Manifest, num_threads: int | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.num_threads = num_threads
        self.input_spec = manifest.inputs[0]
        self.embedding_spec = manifest.output("embedding")
        self.logits_spec = manifest.output("logits")
        for spec in (self.input_spec, self.embedding_spec, self.logits_spec):
            check_quantized(spec, path)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """Runtime name and version, e.g. 'onnxruntime 1.32.0'."""
        raise NotImplementedError

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on the input tensor (already in the input dtype); raw (embedding, logits) outputs."""
        raise NotImplementedError

    def run(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One float32 window (1, 1, frames, n_mels) -> float32 (embedding (D,), logits (C,))."""
        x = quantize(window, self.input_spec)
        if self.thread_safe:
            emb, logits = self._invoke(x)
        else:
            with self._lock:
                emb, logits = self._invoke(x)
        return (dequantize(np.asarray(emb), self.embedding_spec).reshape(-1),
                dequantize(np.asarray(logits), self.logits_spec).reshape(-1))


def output_order(manifest: Manifest, names: Sequence[str], shapes: Sequence[Sequence[int]],
                 source: Path) -> tuple[int, int]:
    """Indices of the runtime outputs holding (embedding, logits).

    By name when the runtime kept the manifest's names (ONNX); otherwise by position in the manifest's output list
    (TFLite renames outputs to output_0, output_1... in model order). Shapes are checked either way.
    """
    wanted = ("embedding", "logits")
    manifest_names = [o.name for o in manifest.outputs]
    if len(names) != len(manifest_names):
        raise BundleError(f"{source}: the model has {len(names)} outputs but the manifest lists "
                          f"{len(manifest_names)} ({manifest_names}); the bundle is inconsistent, re-export it")
    if all(w in names for w in wanted):
        idx = tuple(list(names).index(w) for w in wanted)
    else:
        idx = tuple(manifest_names.index(w) for w in wanted)
    for w, i in zip(wanted, idx):
        want = int(np.prod(manifest.output(w).shape))
        got = int(np.prod([int(s) for s in shapes[i]]))
        if want != got:
            raise BundleError(f"{source}: output {w!r} has {got} values in the model but {want} in the manifest; "
                              f"the bundle is inconsistent, re-export it")
    return idx  # type: ignore[return-value]


def backend_class(target: str) -> type[Backend]:
    """The Backend subclass for ``target`` (imports its module, not the runtime itself)."""
    try:
        module, attr = REGISTRY[target].split(":")
    except KeyError:
        raise BundleError(f"no runtime backend for target {target!r}; known: {sorted(REGISTRY)}") from None
    return getattr(importlib.import_module(module), attr)


def open_backend(path: Path, manifest: Manifest, num_threads: int | None = None) -> Backend:
    """Load the model file ``path`` (already checksum-verified) on the backend for ``manifest.target``."""
    if num_threads is not None and num_threads < 1:
        from acula_edge.errors import ConfigError

        raise ConfigError(f"num_threads must be a positive integer or None (runtime default), got {num_threads}")
    return backend_class(manifest.target)(path, manifest, num_threads)
