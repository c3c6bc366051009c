"""TFLite (LiteRT): ``litert_torch.convert``; int8 as full-integer PT2E quantization behind a float32 boundary.

int8: :func:`acula_edge.export.pt2e.quantize` (litert-torch's ``PT2EQuantizer`` with per-channel symmetric weights
and static int8 activations calibrated on real windows, plus the residual adds it misses and a cosine-fitted range for
the embedding output) -> ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``, which gives a
model with int8 input and outputs (what the ``tflm`` target ships). The ``tflite`` bundle then gets a float32 input
feeding a QUANTIZE op and float32 outputs from DEQUANTIZE ops (:func:`float_boundary`), so the delegate quantizes
and the SDK passes float windows; the int8 tensors' scale / zero point behind that boundary go into
``extra["int8_io"]``, the fitted output range into ``extra["output_range"]``.

At export time the written model is inspected (without delegates) and these are reported as findings: float
tensors left inside a full-int8 model (the float input of the first QUANTIZE and the float outputs of the last
DEQUANTIZEs are the boundary, not findings), and TRANSPOSE ops (layout changes the converter inserted, e.g. NCHW ->
NHWC for inputs with more than one channel; they cost time and usually mean the model is not written
channels-last-friendly).
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
FLOAT_BOUNDARY = ("float32 input and outputs around the int8 graph: a QUANTIZE op first, DEQUANTIZE ops last, run "
                  "by the delegate")


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


def float_boundary(data: bytes) -> bytes:
    """The full-int8 flatbuffer ``data`` (one subgraph) with a float32 boundary: each int8 input gets a new float32
    input feeding a QUANTIZE op (to the old int8 tensor, same scale / zero point) placed first, each int8 output a
    DEQUANTIZE op to a new float32 output placed last; the subgraph's and the signature's inputs / outputs point to
    the new tensors (same signature keys, same tensor names; the int8 ones get ``_int8``). Float32 I/O tensors (a
    student whose input normalisation stayed float) are left as they are; a model with float I/O only comes back
    unchanged.

    Why: with int8 I/O the SDK quantizes the window and dequantizes the outputs in numpy (50-60 us a window
    measured, several array passes); the QUANTIZE / DEQUANTIZE ops run inside the XNNPACK partition with the rest of
    the graph. This is what TFLite's own converter emits for ``inference_input_type=float32``; a rewrite of the
    converted bytes (not a second conversion) keeps one conversion for both the ``tflite`` and the ``tflm`` (int8
    I/O) bundles.
    """
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    if len(model.subgraphs) != 1:
        raise ExportError(f"float_boundary: expected one subgraph, found {len(model.subgraphs)}")
    sg = model.subgraphs[0]

    def opcode(builtin: int, version: int) -> int:
        for i, code in enumerate(model.operatorCodes):
            if flatbuffer_utils.get_builtin_code_from_operator_code(code) == builtin:
                code.version = max(code.version, version)  # the op's kernel version must cover the new use too
                return i
        code = fb.OperatorCodeT()
        code.builtinCode = builtin
        # codes below PLACEHOLDER_FOR_GREATER_OP_CODES (127) are read from the deprecated int8 field
        code.deprecatedBuiltinCode = min(builtin, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
        code.version = version  # op_version.cc: QUANTIZE float -> per-tensor int8 is 1, DEQUANTIZE int8 is 2
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    def float_twin(index: int) -> int | None:
        """A new float32 tensor like the int8 I/O tensor ``index``; None when that tensor is float32 already."""
        q = sg.tensors[index]
        if q.type == fb.TensorType.FLOAT32:
            return None
        quant = q.quantization
        if q.type != fb.TensorType.INT8 or quant is None or quant.scale is None or len(quant.scale) != 1:
            raise ExportError(f"float_boundary: I/O tensor {q.name!r} is neither float32 nor per-tensor int8 "
                              f"(TensorType {q.type}); cannot put a float boundary around it")
        f = fb.TensorT()
        f.name, f.shape, f.shapeSignature = q.name, list(q.shape), q.shapeSignature
        f.type, f.buffer = fb.TensorType.FLOAT32, 0  # buffer 0: the empty one, as for any activation
        q.name = (q.name or b"") + b"_int8"
        sg.tensors.append(f)
        return len(sg.tensors) - 1

    def op(builtin: int, version: int, inputs: list[int], outputs: list[int], options_type: int,
           options: Any) -> Any:
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = opcode(builtin, version), inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    remap = {i: t for i in (*sg.inputs, *sg.outputs) if (t := float_twin(i)) is not None}
    if not remap:
        return data
    first = [op(fb.BuiltinOperator.QUANTIZE, 1, [remap[i]], [i], fb.BuiltinOptions.QuantizeOptions,
                fb.QuantizeOptionsT()) for i in sg.inputs if i in remap]
    last = [op(fb.BuiltinOperator.DEQUANTIZE, 2, [i], [remap[i]], fb.BuiltinOptions.DequantizeOptions,
               fb.DequantizeOptionsT()) for i in sg.outputs if i in remap]
    sg.operators = first + list(sg.operators) + last
    sg.inputs = [remap.get(i, i) for i in sg.inputs]
    sg.outputs = [remap.get(i, i) for i in sg.outputs]
    for sig in model.signatureDefs or ():
        for m in (*(sig.inputs or ()), *(sig.outputs or ())):
            m.tensorIndex = remap.get(m.tensorIndex, m.tensorIndex)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


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
    """Inspect a .tflite file without delegates: ops, I/O specs (in the file's output order), float tensors (but
    the float input of a QUANTIZE and float outputs of DEQUANTIZEs at the graph's boundary)."""
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
    details = interp._get_ops_details()
    ops = [o["op_name"] for o in details]
    # the float boundary (float_boundary): a graph input that a QUANTIZE reads, a graph output a DEQUANTIZE writes
    io = {int(d["index"]) for d in (*ins, *interp.get_output_details())}
    boundary = {int(t) for o in details for t in (o["inputs"] if o["op_name"] == "QUANTIZE" else
                                                   o["outputs"] if o["op_name"] == "DEQUANTIZE" else ())} & io
    floats = sorted({t["name"] or f"#{t['index']}" for t in interp.get_tensor_details()
                     if t["dtype"].__name__ in FLOAT_DTYPES and t["index"] not in boundary})
    return {"inputs": (spec(INPUT_NAME, ins[0]),),
            "outputs": tuple(spec(n, d) for n, d in zip(names, interp.get_output_details())),
            "ops": ops, "float_tensors": floats}


def findings(desc: dict[str, Any], precision: str) -> list[str]:
    """Problems to report at export time: float tensors inside a full-int8 model (``describe`` leaves the float
    boundary out), layout TRANSPOSEs."""
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
    """Write ``model.tflite`` (fp32, or full int8 behind a float32 input/output boundary) into ``folder``."""
    from acula_edge.atomic import write_bytes

    path = folder / MODEL_FILE
    facts = convert(job, path)
    int8_io = {}
    if job.precision == "int8":
        int8 = describe(path)  # the int8 tensors the boundary quantizes to / dequantizes from
        int8_io = {s.name: {"scale": s.scale, "zero_point": s.zero_point} for s in (*int8["inputs"],
                                                                                     *int8["outputs"])}
        write_bytes(path, float_boundary(path.read_bytes()))
    desc = describe(path)
    extra = {"ops": sorted(set(desc["ops"])), "op_count": len(desc["ops"]), "output_order": [o.name for o in
                                                                                             desc["outputs"]]}
    if job.precision == "int8":
        extra["quantization"] = f"{QUANTIZATION}; {FLOAT_BOUNDARY}"
        extra["int8_io"] = int8_io
        extra.update(facts)
    return TargetResult(MODEL_FILE, desc["inputs"], desc["outputs"], versions(), extra,
                        tuple(findings(desc, job.precision)))


TARGET = Target(name="tflite", precisions=("fp32", "int8"), export=export, export_cost=6.5,
                backend="acula_edge.runtime.litert_backend:LiteRTBackend", extra="tflite",
                runtime="ai_edge_litert (or tflite_runtime)", model_file=MODEL_FILE,
                tolerances={"fp32": FP32, "int8": INT8})
