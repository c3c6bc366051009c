"""ONNX Runtime backend (CPU execution provider)."""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np

from acula_edge.errors import BundleError, require
from acula_edge.manifest import RUNTIME_EXTRA, Manifest
from acula_edge.runtime.backends import Backend


class OnnxBackend(Backend):
    """``onnxruntime.InferenceSession``; ``num_threads`` sets ``intra_op_num_threads`` (inter-op stays 1)."""

    thread_safe = True  # InferenceSession.run may be called from several threads (each has its own binding)
    fresh_outputs = False  # the outputs are the calling thread's bound buffers, overwritten by its next call

    def __init__(self, path: Path, manifest: Manifest, num_threads: int | None = None,
                 data: bytes | None = None) -> None:
        super().__init__(path, manifest, num_threads, data)
        ort = require("onnxruntime", RUNTIME_EXTRA["onnx"], "running an ONNX bundle")
        self._version = ort.__version__
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        if num_threads is not None:
            opts.intra_op_num_threads = int(num_threads)
        opts.log_severity_level = 4  # fatal only: a load failure is reported once, as our BundleError
        try:
            # On a bad model onnxruntime's Python wrapper prints an "EP Error ... falling back" banner to stdout and
            # retries with the same CPU provider; the failure is reported once, as the BundleError below.
            with contextlib.redirect_stdout(io.StringIO()):
                self._session = ort.InferenceSession(self.data, sess_options=opts,
                                                     providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise BundleError(f"{path}: onnxruntime cannot load the model file ({type(e).__name__}: {e}); it is "
                              f"corrupt or not an ONNX model; re-export the bundle") from e
        inputs = self._session.get_inputs()
        outs = self._session.get_outputs()
        self._input_name = inputs[0].name if inputs else ""
        self._names = [o.name for o in outs]
        self._emb_i, self._log_i = self.check_io([(i.shape, _dtype(i.type)) for i in inputs],
                                                 [(o.name, o.shape, _dtype(o.type)) for o in outs])
        self._bound = threading.local()  # per thread: an I/O binding to preallocated input and output buffers

    def _binding(self) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        """This thread's I/O binding, made on its first call: the input and both outputs bound to buffers of the
        manifest's shapes, so a call allocates nothing and skips run()'s per-call conversions (~7 µs a window)."""
        spec = self.input_spec
        x = np.zeros(spec.shape, dtype=spec.dtype)
        emb = np.zeros(self.embedding_spec.shape, dtype=self.embedding_spec.dtype)
        logits = np.zeros(self.logits_spec.shape, dtype=self.logits_spec.dtype)
        binding = self._session.io_binding()
        binding.bind_cpu_input(self._input_name, x)
        for i, out in ((self._emb_i, emb), (self._log_i, logits)):
            binding.bind_output(self._names[i], "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        bound = self._bound.io = (binding, x, emb, logits)
        return bound

    @property
    def name(self) -> str:
        return f"onnxruntime {self._version}"

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bound = getattr(self._bound, "io", None) or self._binding()
        binding, into, emb, logits = bound
        into[...] = x.reshape(into.shape)
        self._session.run_with_iobinding(binding)
        return emb, logits


def _dtype(onnx_type: str) -> str:
    """'tensor(float)' -> 'float32' (the manifest's dtype names); other types are returned as given."""
    inner = onnx_type[len("tensor("):-1] if onnx_type.startswith("tensor(") else onnx_type
    return {"float": "float32", "int8": "int8", "uint8": "uint8", "int16": "int16", "int32": "int32"}.get(inner,
                                                                                                        onnx_type)
