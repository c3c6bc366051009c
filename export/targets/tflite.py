"""TFLite (LiteRT): ``litert_torch.convert``; int8 as full-integer PT2E quantization with int8 input and output.

int8: :func:`acula_edge.export.pt2e.quantize` (litert-torch's ``PT2EQuantizer`` with per-channel symmetric weights
and static int8 activations calibrated on real windows, plus the residual adds it misses and a cosine-fitted range for
the embedding output) -> ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``.
The input and outputs are int8 tensors; their scale / zero point go into the manifest's TensorSpecs, the fitted
output range into ``extra["output_range"]``.

At export time the written model is inspected (without delegates) and these are reported as findings: float
tensors left in a full-int8 model, and TRANSPOSE ops (layout changes the converter inserted, e.g. NCHW -> NHWC for
inputs with more than one channel; they cost time and usually mean the model is not written channels-last-friendly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from acula_edge.errors import ExportError
from acula_edge.export.registry import INPUT_NAME, OUTPUT_NAMES, ExportJob, Target, TargetResult
from acula_edge.export.tolerances import FP32, INT8
from acula_edge.manifest import TensorSpec

MODEL_FILE = "model.tflite"
FLOAT_DTYPES = ("float32", "float16", "float64")
QUANTIZATION = ("full-integer PT2E, per-channel symmetric int8 weights, int8 input and outputs, embedding range "
                "fitted for cosine on the calibration windows")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import torch

    return {"torch": torch.__version__, "litert-torch": version("litert-torch"),
            "ai-edge-litert": version("ai-edge-litert"), "torchao": version("torchao")}


# The last conversion, keyed by what determines it: the tflm target converts exactly the tflite target's int8 model
# (same job), so an ``export --target all`` reuses those bytes instead of converting a second time.
_LAST: dict[str, tuple[bytes, dict[str, Any]]] = {}


def job_key(job: ExportJob) -> str:
    """sha256 of everything a conversion depends on: model class and weights, precision, example and calibration
    windows, calibration method."""
    import hashlib

    h = hashlib.sha256()
    h.update(f"{type(job.model).__module__}:{type(job.model).__qualname__}|{job.precision}|"
             f"{job.calibration_method}".encode())
    for name, value in job.model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    for arr in (job.example, job.calibration):
        if arr is not None:
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def convert(job: ExportJob, path: Path) -> dict[str, Any]:
    """Write the TFLite flatbuffer of ``job`` (fp32, or full int8 when ``job.precision == 'int8'``) to ``path``.

    Returns the quantization facts for the manifest's extra (int8: the fitted output range; fp32: nothing). The same
    job converted again (the tflm target after the tflite one) writes the bytes of the previous conversion."""
    key = job_key(job)
    if key in _LAST:
        data, facts = _LAST[key]
        path.write_bytes(data)
        return dict(facts)
    facts = _convert(job, path)
    _LAST.clear()
    _LAST[key] = (path.read_bytes(), dict(facts))
    return facts


def _convert(job: ExportJob, path: Path) -> dict[str, Any]:
    import litert_torch
    import torch

    example = torch.from_numpy(job.example)
    facts: dict[str, Any] = {}
    try:
        if job.precision == "fp32":
            edge = litert_torch.convert(job.model.eval(), (example,))
        else:
            from litert_torch.quantize.quant_config import QuantConfig

            from acula_edge.export import pt2e

            converted, quantizer, fits = pt2e.quantize(job.model, job.example, job.calibration)
            facts = {"output_range": [f.to_dict() for f in fits]}
            edge = litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        edge.export(str(path))
    except Exception as e:  # the converter raises many internal types; keep the cause
        raise ExportError(f"litert_torch conversion ({job.precision}) failed for {type(job.model).__name__}: "
                          f"{e}") from e
    return facts


def remove_dropout(graph: Any) -> int:
    """Drop the (eval-mode, identity) dropout nodes of an exported graph module, in place; returns how many.

    Why: with litert-torch 0.10's PT2E flow, an int8 FULLY_CONNECTED fed through a dropout node gets a bias scale
    that does not match its input scale, so the bias is mis-scaled (a distill/ student's embedding cosine fell to
    0.77-0.84 vs PyTorch; 0.999 once the dropout node is gone; measured 2026-11-23). In eval mode dropout is the
    identity, so removing it changes no value.
    """
    import torch

    dropouts = {torch.ops.aten.dropout.default, torch.ops.aten.dropout_.default}
    count = 0
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target in dropouts:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
            count += 1
    if count:
        graph.graph.lint()
        graph.recompile()
    return count


def describe(path: Path) -> dict[str, Any]:
    """Inspect a .tflite file without delegates: ops, I/O specs (in the file's output order), float tensors."""
    from ai_edge_litert import interpreter as litert

    interp = litert.Interpreter(model_path=str(path),
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    signature = interp._get_full_signature_list()
    by_index = {}
    for sig in signature.values():
        for key, index in sig["outputs"].items():
            by_index[index] = key
    names = []
    for d in interp.get_output_details():
        key = by_index.get(d["index"], "")
        # litert_torch names a tuple's outputs output_0, output_1, ... in forward() order
        if not key.startswith("output_") or not key[len("output_"):].isdigit():
            raise ExportError(f"{path}: cannot tell which output tensor {d['name']!r} is (signature key {key!r})")
        names.append(OUTPUT_NAMES[int(key[len("output_"):])])

    def spec(name: str, d: dict[str, Any]) -> TensorSpec:
        dtype = d["dtype"].__name__
        scale, zp = d["quantization"]
        quantized = dtype != "float32"
        return TensorSpec(name, tuple(int(s) for s in d["shape"]), dtype,
                          float(scale) if quantized else None, int(zp) if quantized else None)

    ins = interp.get_input_details()
    if len(ins) != 1:
        raise ExportError(f"{path}: expected one input tensor, found {len(ins)}")
    ops = [o["op_name"] for o in interp._get_ops_details()]
    floats = sorted({t["name"] or f"#{t['index']}" for t in interp.get_tensor_details()
                     if t["dtype"].__name__ in FLOAT_DTYPES})
    return {"inputs": (spec(INPUT_NAME, ins[0]),),
            "outputs": tuple(spec(n, d) for n, d in zip(names, interp.get_output_details())),
            "ops": ops, "float_tensors": floats}


def findings(desc: dict[str, Any], precision: str) -> list[str]:
    """Problems to report at export time: float tensors in a full-int8 model, layout TRANSPOSEs."""
    found = []
    if precision == "int8" and desc["float_tensors"]:
        shown = [n[-60:] for n in desc["float_tensors"][:5]]
        found.append(f"{len(desc['float_tensors'])} float tensor(s) left in the full-int8 model (e.g. {shown}): "
                     f"those ops run in float or need (de)quantize steps")
    n_t = desc["ops"].count("TRANSPOSE")
    if n_t:
        found.append(f"{n_t} TRANSPOSE op(s) in the graph (layout conversion inserted by the converter)")
    return found


def export(job: ExportJob, folder: Path) -> TargetResult:
    """Write ``model.tflite`` (fp32, or full int8 with int8 input/output) into ``folder``."""
    path = folder / MODEL_FILE
    facts = convert(job, path)
    desc = describe(path)
    extra = {"ops": sorted(set(desc["ops"])), "op_count": len(desc["ops"]), "output_order": [o.name for o in
                                                                                             desc["outputs"]]}
    if job.precision == "int8":
        extra["quantization"] = QUANTIZATION
        extra.update(facts)
    return TargetResult(MODEL_FILE, desc["inputs"], desc["outputs"], versions(), extra,
                        tuple(findings(desc, job.precision)))


TARGET = Target(name="tflite", precisions=("fp32", "int8"), export=export, export_cost=6.5,
                backend="acula_edge.runtime.litert_backend:LiteRTBackend", extra="tflite",
                runtime="ai_edge_litert (or tflite_runtime)", model_file=MODEL_FILE,
                tolerances={"fp32": FP32, "int8": INT8})
