"""ONNX Runtime backend (CPU execution provider)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from acula_edge.errors import BundleError, require
from acula_edge.manifest import RUNTIME_EXTRA, Manifest
from acula_edge.runtime.backends import Backend


class OnnxBackend(Backend):
    """``onnxruntime.InferenceSession``; ``num_threads`` sets ``intra_op_num_threads`` (inter-op stays 1)."""

    thread_safe = True  # InferenceSession.run may be called from several threads
    fresh_outputs = True  # run() returns new arrays

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

    @property
    def name(self) -> str:
        return f"onnxruntime {self._version}"

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._session.run(None, {self._input_name: x})
        return out[self._emb_i], out[self._log_i]


def _dtype(onnx_type: str) -> str:
    """'tensor(float)' -> 'float32' (the manifest's dtype names); other types are returned as given."""
    inner = onnx_type[len("tensor("):-1] if onnx_type.startswith("tensor(") else onnx_type
    return {"float": "float32", "int8": "int8", "uint8": "uint8", "int16": "int16", "int32": "int32"}.get(inner,
                                                                                                        onnx_type)
