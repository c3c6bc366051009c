"""Backends: one small class per runtime, behind a registry keyed by ``manifest.target``.

A backend runs one log-mel window, float32 (1, 1, frames, n_mels), and returns float32 ``(embedding (D,),
logits (C,))``. Integer input/output tensors (TFLM, and tflite int8 bundles exported before their float boundary)
are quantized and dequantized here from the manifest's :class:`~acula_edge.manifest.TensorSpec` (real = scale *
(q - zero_point)), so callers always pass float log-mel. Adding a target means adding one module with a
:class:`Backend` subclass, named by its export :class:`~acula_edge.export.registry.Target`.

Backends are safe to share between threads: runtimes whose interpreter is not re-entrant (LiteRT, ExecuTorch,
TFLM) serialise :meth:`Backend.run` with a lock; onnxruntime sessions are thread-safe and run concurrently.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from acula_edge.errors import BundleError
from acula_edge.manifest import Manifest, TargetTable, TensorSpec

# manifest.target -> "module:Class", declared by each export Target (acula_edge.export.registry); the module is
# imported only when a bundle of that target is loaded.
REGISTRY = TargetTable("backend")

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
               "int32": (-2147483648, 2147483647)}


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float -> the integer dtype of ``spec`` (round half to even, saturate); float specs pass through."""
    if spec.dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32)
    lo, hi = _INT_RANGES[spec.dtype]
    q = np.rint(x / np.float32(spec.scale)) + np.float32(spec.zero_point)
    return np.clip(q, lo, hi).astype(spec.dtype)


def dequantize(q: np.ndarray, spec: TensorSpec, fresh: bool = False) -> np.ndarray:
    """The output ``q`` as a float32 array of its own, using ``spec``'s scale and zero point for integer outputs.
    ``fresh``: ``q`` is already an array nobody else holds (a float one is then returned as it is)."""
    if spec.dtype == "float32":
        return np.asarray(q, dtype=np.float32) if fresh else np.array(q, dtype=np.float32)
    out = np.subtract(q, spec.zero_point, dtype=np.float32)  # an int zero point: exact in float32
    out *= np.float32(spec.scale)
    return out


class _Quantizer:
    """Float32 -> ``spec``'s integer dtype into preallocated buffers (same values as :func:`quantize`)."""

    def __init__(self, spec: TensorSpec) -> None:
        self._lo, self._hi = _INT_RANGES[spec.dtype]
        self._scale = np.float32(spec.scale)
        self._zp = np.float32(spec.zero_point)
        self._work = np.zeros(spec.shape, dtype=np.float32)
        self._out = np.zeros(spec.shape, dtype=spec.dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        w = self._work
        np.divide(x.reshape(w.shape), self._scale, out=w)  # a division, as quantize(): same rounding
        np.rint(w, out=w)
        w += self._zp
        # Saturate only when needed: two reductions cost less than numpy's clip, and windows rarely leave the range.
        if w.max() > self._hi or w.min() < self._lo:
            np.clip(w, self._lo, self._hi, out=w)
        np.copyto(self._out, w, casting="unsafe")  # whole numbers in range: the cast is exact
        return self._out


def check_quantized(spec: TensorSpec, source: Path) -> None:
    if spec.dtype != "float32" and (spec.scale is None or spec.zero_point is None or spec.scale <= 0):
        raise BundleError(f"{source}: tensor {spec.name!r} is {spec.dtype} but the manifest gives no valid scale/"
                          f"zero_point ({spec.scale}, {spec.zero_point}); re-export the bundle")


class Backend:
    """Base class: subclasses load the model from ``data`` (its bytes, already checked against the bundle digest)
    in ``__init__``, call :meth:`check_io` with the model's real inputs and outputs, and implement :meth:`_invoke`.
    """

    #: whether ``_invoke`` may run in several threads at once
    thread_safe = False
    #: whether ``_invoke`` returns new arrays each call (not views of the runtime's buffers, which the next call
    #: overwrites): float outputs then need no copy
    fresh_outputs = False
    #: whether the runtime can crash the process (abort, segfault) on a bad model or setting instead of raising:
    #: such bundles are first loaded and run once in a child process (:mod:`acula_edge.runtime.probe`)
    needs_probe = False

    def __init__(self, path: Path, manifest: Manifest, num_threads: int | None = None,
                 data: bytes | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.num_threads = num_threads
        self.data = data if data is not None else read_model_bytes(path)
        self.input_spec = manifest.inputs[0]
        self.embedding_spec = manifest.output("embedding")
        self.logits_spec = manifest.output("logits")
        for spec in (self.input_spec, self.embedding_spec, self.logits_spec):
            check_quantized(spec, path)
        self._lock = threading.Lock()
        # Integer inputs are quantized into these buffers (under the lock), so a call allocates no window-sized array.
        self._quantizer = _Quantizer(self.input_spec) if self.input_spec.dtype != "float32" else None
        self._float_outputs = self.embedding_spec.dtype == self.logits_spec.dtype == "float32"

    def check_io(self, inputs: Sequence[tuple[Sequence[Any], str]],
                 outputs: Sequence[tuple[str, Sequence[Any], str]]) -> tuple[int, int]:
        """Compare the model's real I/O with the manifest before the first call; (embedding, logits) output indices.

        ``inputs``: (shape, dtype name) per model input; ``outputs``: (name, shape, dtype name) per output, in
        the runtime's order. A dimension that is not an int (a symbolic batch) matches anything. Outputs are
        matched by name when the runtime kept the manifest's names (ONNX), else by position (TFLite renames them).
        """
        src, m = self.path, self.manifest
        if len(inputs) != 1:
            raise BundleError(f"{src}: the model has {len(inputs)} inputs, the manifest 1; the bundle is "
                              f"inconsistent, re-export it")
        _check_tensor(src, "input", inputs[0][0], inputs[0][1], self.input_spec)
        manifest_names = [o.name for o in m.outputs]
        names = [o[0] for o in outputs]
        if len(outputs) != len(manifest_names):
            raise BundleError(f"{src}: the model has {len(outputs)} outputs but the manifest lists "
                              f"{len(manifest_names)} ({manifest_names}); the bundle is inconsistent, re-export it")
        by_name = set(names) == set(manifest_names) and len(set(names)) == len(names)
        for i, spec in enumerate(m.outputs):
            j = names.index(spec.name) if by_name else i
            _check_tensor(src, f"output {spec.name!r}", outputs[j][1], outputs[j][2], spec)
        pick = (lambda w: names.index(w)) if by_name else manifest_names.index
        return pick("embedding"), pick("logits")

    @property
    def name(self) -> str:
        """Runtime name and version, e.g. 'onnxruntime 1.32.0'."""
        raise NotImplementedError

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on the input tensor (already in the input dtype); raw (embedding, logits) outputs."""
        raise NotImplementedError

    def run(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One float32 window (1, 1, frames, n_mels) -> float32 (embedding (D,), logits (C,)), new arrays."""
        if self._quantizer is None and self.thread_safe:
            emb, logits = self._invoke(np.ascontiguousarray(window, dtype=np.float32))
            return self._outputs(emb, logits)
        with self._lock:
            x = np.ascontiguousarray(window, dtype=np.float32) if self._quantizer is None else self._quantizer(window)
            emb, logits = self._invoke(x)
            # copied before the lock is released: a runtime may hand out views of its own output buffers
            return self._outputs(emb, logits)

    def _outputs(self, emb: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fresh = self.fresh_outputs
        if fresh and self._float_outputs:  # new float32 arrays already: nothing to convert or copy
            return emb.reshape(-1), logits.reshape(-1)
        return (dequantize(emb, self.embedding_spec, fresh).reshape(-1),
                dequantize(logits, self.logits_spec, fresh).reshape(-1))


def _check_tensor(source: Path, what: str, shape: Sequence[Any], dtype: str, spec: TensorSpec) -> None:
    got = tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in shape)
    if len(got) != len(spec.shape) or any(g is not None and g != w for g, w in zip(got, spec.shape)):
        raise BundleError(f"{source}: the model's {what} has shape {tuple(shape)} but the manifest says "
                          f"{spec.shape}; the bundle is inconsistent, re-export it")
    if dtype != spec.dtype:
        raise BundleError(f"{source}: the model's {what} is {dtype} but the manifest says {spec.dtype}; the bundle "
                          f"is inconsistent, re-export it")


def read_model_bytes(path: Path) -> bytes:
    """A model file's bytes (for callers that hold only a path; :func:`acula_edge.manifest.read_bundle` gives
    the digest-checked bytes)."""
    from acula_edge.manifest import _read_file

    return _read_file(path)


def backend_class(target: str) -> type[Backend]:
    """The Backend subclass for ``target`` (imports its module, not the runtime itself)."""
    try:
        module, attr = REGISTRY[target].split(":")
    except KeyError:
        raise BundleError(f"no runtime backend for target {target!r}; known: {sorted(REGISTRY)}") from None
    return getattr(importlib.import_module(module), attr)


def open_backend(path: Path, manifest: Manifest, num_threads: int | None = None, data: bytes | None = None,
                 probe: bool = True) -> Backend:
    """Load the model ``data`` (the bytes of ``path``, already checked against the bundle digest; read from
    ``path`` when None) on the backend for ``manifest.target``. Runtimes that can crash on a bad model are first
    tried in a child process (``probe``), so a bad bundle is a BundleError, never a dead process."""
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        from acula_edge.errors import ConfigError

        raise ConfigError(f"num_threads must be a positive integer or None (runtime default), got {num_threads!r}")
    cls = backend_class(manifest.target)
    if data is None:
        data = read_model_bytes(path)
    if probe and cls.needs_probe:
        from acula_edge.runtime.probe import probe_in_child

        probe_in_child(path, manifest, data)
    return cls(path, manifest, num_threads, data)
