"""ONNX Runtime backend (CPU execution provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from acula_edge.errors import BundleError, require
from acula_edge.manifest import RUNTIME_EXTRA, Manifest
from acula_edge.runtime.backends import Backend, output_order


class OnnxBackend(Backend):
    """``onnxruntime.InferenceSession``; ``num_threads`` sets ``intra_op_num_threads`` (inter-op stays 1)."""

    thread_safe = True  # InferenceSession.run may be called from several threads

    def __init__(self, path: Path, manifest: Manifest, num_threads: int | None = None) -> None:
        super().__init__(path, manifest, num_threads)
        ort = require("onnxruntime", RUNTIME_EXTRA["onnx"], "running an ONNX bundle")
        self._version = ort.__version__
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        if num_threads is not None:
            opts.intra_op_num_threads = int(num_threads)
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise BundleError(f"{path}: onnxruntime cannot load the model file ({type(e).__name__}: {e}); it is "
                              f"corrupt or not an ONNX model; re-export the bundle") from e
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BundleError(f"{path}: the ONNX model has {len(inputs)} inputs, expected 1")
        self._input_name = inputs[0].name
        outs = self._session.get_outputs()
        self._names = [o.name for o in outs]
        shapes = [[s if isinstance(s, int) else 1 for s in o.shape] for o in outs]
        self._emb_i, self._log_i = output_order(manifest, self._names, shapes, path)

    @property
    def name(self) -> str:
        return f"onnxruntime {self._version}"

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._session.run(None, {self._input_name: x})
        return out[self._emb_i], out[self._log_i]
