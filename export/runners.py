"""Thin runners: one function per runtime, running a model file on float windows (for the parity gate).

Each takes the model file, windows ``x`` (N, 1, frames, n_mels) float32, the bundle's input/output TensorSpecs (the
outputs in the model file's output order) and target options, and returns ``{output name: (N, ...) float32}``.
Integer tensors are quantized / dequantized with their spec's scale and zero point (real = scale * (q - zp)).
The device runtime (acula_edge.runtime) does the same without torch; these stay here so export does not depend on it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from acula_edge.errors import ExportError, require
from acula_edge.manifest import TensorSpec

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float -> the integer dtype of ``spec`` (round half to even, clipped to the dtype's range)."""
    if spec.dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if spec.scale is None or spec.zero_point is None:
        raise ExportError(f"tensor {spec.name!r} is {spec.dtype} but has no scale/zero_point")
    lo, hi = _INT_RANGES[spec.dtype]
    q = np.round(x / spec.scale) + spec.zero_point
    return np.clip(q, lo, hi).astype(spec.dtype)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The integer tensor ``q`` of ``spec`` back to float32."""
    if spec.dtype == "float32":
        return np.asarray(q, dtype=np.float32)
    return ((q.astype(np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)).astype(np.float32)


def _stack(outputs: tuple[TensorSpec, ...], rows: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {spec.name: np.concatenate(col).astype(np.float32) for spec, col in zip(outputs, rows)}


def run_onnx(path: Path, x: np.ndarray, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
             options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """ONNX Runtime (CPU, one thread)."""
    ort = require("onnxruntime", "onnx", "running an ONNX bundle")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in outputs]
    rows: list[list[np.ndarray]] = [[] for _ in outputs]
    for i in range(x.shape[0]):
        got = sess.run(names, {inputs[0].name: quantize(x[i:i + 1], inputs[0])})
        for k, (spec, value) in enumerate(zip(outputs, got)):
            rows[k].append(dequantize(value, spec))
    return _stack(outputs, rows)


def run_executorch(path: Path, x: np.ndarray, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                   options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """ExecuTorch runtime (the Python bindings take and return torch tensors)."""
    runtime = require("executorch.runtime", "executorch", "running an ExecuTorch bundle")
    import torch

    method = runtime.Runtime.get().load_program(str(path)).load_method("forward")
    rows: list[list[np.ndarray]] = [[] for _ in outputs]
    for i in range(x.shape[0]):
        got = method.execute([torch.from_numpy(quantize(x[i:i + 1], inputs[0]))])
        for k, spec in enumerate(outputs):
            rows[k].append(dequantize(got[k].detach().numpy(), spec))
    return _stack(outputs, rows)


def run_tflite(path: Path, x: np.ndarray, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
               options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """LiteRT (ai_edge_litert) interpreter with its default (XNNPACK) delegate, one thread."""
    mod = require("ai_edge_litert.interpreter", "tflite", "running a TFLite bundle")
    interp = mod.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    in_index = interp.get_input_details()[0]["index"]
    out_index = [d["index"] for d in interp.get_output_details()]
    if len(out_index) != len(outputs):
        raise ExportError(f"{path}: the model has {len(out_index)} outputs, the bundle declares {len(outputs)}")
    rows: list[list[np.ndarray]] = [[] for _ in outputs]
    for i in range(x.shape[0]):
        interp.set_tensor(in_index, quantize(x[i:i + 1], inputs[0]))
        interp.invoke()
        for k, spec in enumerate(outputs):
            rows[k].append(dequantize(interp.get_tensor(out_index[k]), spec))
    return _stack(outputs, rows)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (TFLM prints every failed allocation) for the duration of the block."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def tflm_interpreter(path: Path, arena_size: int) -> Any:
    """A TFLite Micro Python interpreter for ``path`` with an arena of ``arena_size`` bytes (RuntimeError if the
    arena is too small or an op is missing)."""
    runtime = require("tflite_micro.python.tflite_micro.runtime", "export", "running a TFLite Micro bundle")
    return runtime.Interpreter.from_file(str(path), arena_size=int(arena_size))


def run_tflm(path: Path, x: np.ndarray, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
             options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """TFLite Micro's Python interpreter with the bundle's measured arena (``options['arena_bytes']``)."""
    arena = int((options or {}).get("arena_bytes", 0)) or 4 << 20
    try:
        interp = tflm_interpreter(path, arena)
    except RuntimeError as e:
        raise ExportError(f"{path}: TFLite Micro cannot load the model with a {arena}-byte arena ({e})") from e
    rows: list[list[np.ndarray]] = [[] for _ in outputs]
    for i in range(x.shape[0]):
        interp.set_input(quantize(x[i:i + 1], inputs[0]), 0)
        interp.invoke()
        for k, spec in enumerate(outputs):
            rows[k].append(dequantize(np.array(interp.get_output(k)), spec))
    return _stack(outputs, rows)
