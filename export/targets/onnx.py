"""ONNX: ``torch.onnx.export(dynamo=True)``; int8 as QDQ static quantization with onnxruntime.quantization.

int8 keeps float32 input and output tensors (QuantizeLinear/DequantizeLinear pairs inside the graph); activations are
unsigned 8-bit with ranges from the calibration windows (method selectable); weights are symmetric int8, per channel or per
tensor, whichever reproduces the fp32 model better on the first calibration windows (recorded in the manifest).
Why both: on a trained distill/ "small" student, onnxruntime 1.32's per-channel QDQ gave an embedding cosine of
0.98 against PyTorch where per-tensor gave 0.999 (measured 2026-11-23); on other models per-channel is better.
Why unsigned activations: with signed int8 ones, a tensor with two consumers (a residual skip) blocks onnxruntime's
signed-to-unsigned rewrite, so the convs around it ran as float Conv with their weights dequantized on every call;
uint8 activations let every conv fuse into an integer kernel (`small` -30 %, `tiny` -47 %, same embedding cosine;
measured 2026-11-30 on an AVX-512 VNNI Xeon; int8 vs fp32 now: benchmarks/RESULTS_runtime.md). onnxruntime's
docs warn that uint8 x int8 (U8S8) products can saturate on x86 CPUs without VNNI; the parity gate checks the
exporting machine only.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from acula_edge.errors import ExportError
from acula_edge.export.registry import CALIBRATION_METHODS, INPUT_NAME, OUTPUT_NAMES, ExportJob, Target, TargetResult
from acula_edge.export.tolerances import FP32, INT8
from acula_edge.manifest import TensorSpec

MODEL_FILE = "model.onnx"
OPSET = 18
SELECTION_WINDOWS = 32  # calibration windows used to choose per-channel vs per-tensor weights


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _export_fp32(job: ExportJob, path: Path) -> None:
    import torch

    try:
        program = torch.onnx.export(job.model, (torch.from_numpy(job.example),), dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), verbose=False)
        program.save(str(path))
    except Exception as e:  # the exporter raises many internal types; keep the cause
        raise ExportError(f"torch.onnx.export failed for {type(job.model).__name__}: {e}") from e


def _quantize(job: ExportJob, fp32: Path, out: Path, work: Path) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    windows = job.calibration

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= windows.shape[0]:
                return None
            self._i += 1
            return {INPUT_NAME: windows[self._i - 1:self._i]}

    pre = work / "preprocessed.onnx"
    quant_pre_process(str(fp32), str(pre))
    op_types = _op_types_to_quantize(pre)
    from acula_edge.export.parity import cosine_rows, torch_outputs
    from acula_edge.export.tolerances import FP32, INT8

    probe = windows[:SELECTION_WINDOWS]
    reference = torch_outputs(job.model, probe, OUTPUT_NAMES)["embedding"]
    scores: dict[str, float] = {}
    for granularity in ("per-channel", "per-tensor"):
        path = work / f"int8-{granularity}.onnx"
        quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=granularity == "per-channel", activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[job.calibration_method],
                        op_types_to_quantize=op_types)
        got = _embeddings(path, probe)
        scores[granularity] = float(cosine_rows(reference, got).mean())
    best = max(scores, key=lambda k: scores[k])
    shutil.copyfile(work / f"int8-{best}.onnx", out)
    return {"weights": best, "selection_cosine": scores, "selection_windows": int(probe.shape[0])}


def _embeddings(path: Path, x: np.ndarray) -> np.ndarray:
    """The ``embedding`` output of the ONNX model at ``path`` for windows ``x`` (N, 1, frames, n_mels), one at a
    time (the model is exported with batch 1)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["embedding"], {INPUT_NAME: x[i:i + 1]})[0] for i in range(x.shape[0])])


def _op_types_to_quantize(model_path: Path) -> list[str] | None:
    """The quantizer's default op list, less Relu when a graph output also feeds a Relu.

    ORT's QDQ quantizer gives a tensor feeding a Relu the Relu's [0, max] range; when that tensor is also a graph
    output (the embedding, say), its negative values come out as 0 (seen: embedding cosine 0.89). Leaving Relu
    unquantized keeps the output's own range. None = the quantizer's default (nothing to avoid)."""
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    graph = onnx.load(str(model_path)).graph
    outputs = {o.name for o in graph.output}
    if not any(node.op_type == "Relu" and outputs & set(node.input) for node in graph.node):
        return None
    return sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - {"Relu"})


def export(job: ExportJob, folder: Path) -> TargetResult:
    """Write ``model.onnx`` (fp32 or int8 QDQ) into ``folder``."""
    path = folder / MODEL_FILE
    chosen: dict = {}
    with tempfile.TemporaryDirectory(prefix="acula-onnx-") as tmp:
        work = Path(tmp)
        if job.precision == "fp32":
            _export_fp32(job, path)
        else:
            _export_fp32(job, work / "fp32.onnx")
            chosen = _quantize(job, work / "fp32.onnx", path, work)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out_shapes = {o.name: o.shape for o in sess.get_outputs()}
    missing = [n for n in OUTPUT_NAMES if n not in out_shapes]
    if missing:
        raise ExportError(f"the exported ONNX model lacks outputs {missing}; it has {sorted(out_shapes)}")
    inputs = (TensorSpec(INPUT_NAME, tuple(job.example.shape), "float32"),)
    outputs = tuple(TensorSpec(n, tuple(int(s) for s in out_shapes[n]), "float32") for n in OUTPUT_NAMES)
    extra = {"opset": OPSET}
    if job.precision == "int8":
        extra.update(quantization=f"QDQ static, {chosen['weights']} symmetric int8 weights, uint8 activations",
                     calibration_method=job.calibration_method, weight_selection=chosen)
    return TargetResult(MODEL_FILE, inputs, outputs, _versions(), extra)


TARGET = Target(name="onnx", precisions=("fp32", "int8"), export=export, export_cost=3.0,
                backend="acula_edge.runtime.onnx_backend:OnnxBackend", extra="onnx", runtime="onnxruntime",
                model_file=MODEL_FILE, tolerances={"fp32": FP32, "int8": INT8},
                calibration_methods=CALIBRATION_METHODS)
