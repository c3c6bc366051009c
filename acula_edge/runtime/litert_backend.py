"""LiteRT (TensorFlow Lite) backend: ``ai_edge_litert.interpreter``, falling back to ``tflite_runtime``."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from acula_edge.errors import BundleError, require
from acula_edge.manifest import RUNTIME_EXTRA, Manifest
from acula_edge.runtime.backends import Backend


def _interpreter_module():
    """``ai_edge_litert.interpreter`` or, on devices that only have it (Raspberry Pi), ``tflite_runtime``."""
    try:
        return importlib.import_module("ai_edge_litert.interpreter")
    except ImportError:
        pass
    return require("tflite_runtime.interpreter", RUNTIME_EXTRA["tflite"],
                   "running a TFLite bundle (ai_edge_litert, or tflite_runtime as a fallback)")


def _version(package: str) -> str:
    from importlib import metadata

    dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(package, package)
    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return dist


class LiteRTBackend(Backend):
    """A LiteRT ``Interpreter`` (default op resolver, XNNPACK on CPU); ``num_threads`` passed through.

    The interpreter is not re-entrant, so calls are serialised by the base class lock.
    """

    fresh_outputs = True  # get_tensor() returns a copy of the output tensor

    def __init__(self, path: Path, manifest: Manifest, num_threads: int | None = None,
                 data: bytes | None = None) -> None:
        super().__init__(path, manifest, num_threads, data)
        mod = _interpreter_module()
        self._version = _version(mod.__name__.split(".")[0])
        try:
            self._it = mod.Interpreter(model_content=self.data, num_threads=num_threads)
            self._it.allocate_tensors()
            ins = self._it.get_input_details()
            outs = self._it.get_output_details()
        except (ValueError, RuntimeError) as e:  # incl. UnicodeDecodeError: a corrupt tensor name
            raise BundleError(f"{path}: LiteRT cannot load the model file ({type(e).__name__}: {e}); it is corrupt "
                              f"or not a TFLite flatbuffer; re-export the bundle") from e
        e, lg = self.check_io([(i["shape"], np.dtype(i["dtype"]).name) for i in ins],
                              [(o["name"], o["shape"], np.dtype(o["dtype"]).name) for o in outs])
        self._in_idx, self._in_shape = ins[0]["index"], tuple(ins[0]["shape"])
        self._emb_idx, self._log_idx = outs[e]["index"], outs[lg]["index"]

    @property
    def name(self) -> str:
        return self._version

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._it.set_tensor(self._in_idx, x.reshape(self._in_shape))
        self._it.invoke()
        return self._it.get_tensor(self._emb_idx), self._it.get_tensor(self._log_idx)
