"""ExecuTorch: ``torch.export`` -> XNNPACK partitioner -> ``.pte``; int8 via PT2E static quantization.

int8 uses ``XNNPACKQuantizer`` with per-channel symmetric weights; inputs and outputs stay float32 (the quantize
and dequantize ops are delegated). Nodes left outside the XNNPACK delegate run on ExecuTorch's portable kernels;
they are listed in the manifest (``extra.non_delegated``) and as findings, since they are usually slow and fp32.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from acula_edge.errors import ExportError
from acula_edge.export.registry import INPUT_NAME, OUTPUT_NAMES, ExportJob, Target, TargetResult
from acula_edge.export.runners import run_executorch
from acula_edge.manifest import TensorSpec

MODEL_FILE = "model.pte"
DELEGATE_CALL = "executorch_call_delegate"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import torch

    return {"torch": torch.__version__, "executorch": version("executorch"), "torchao": version("torchao")}


def _quantized_module(job: ExportJob, example):
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, \
        get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(job.model, (example,)).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(job.calibration.shape[0]):
            prepared(torch.from_numpy(job.calibration[i:i + 1]))
    return convert_pt2e(prepared)


def export(job: ExportJob, folder: Path) -> TargetResult:
    """Write ``model.pte`` (XNNPACK-delegated, fp32 or int8) into ``folder``."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = torch.from_numpy(job.example)
    try:
        module = _quantized_module(job, example) if job.precision == "int8" else job.model
        program = torch.export.export(module, (example,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        graph = edge.exported_program().graph_module.graph
        calls = [n for n in graph.nodes if n.op == "call_function"]
        delegates = sum(1 for n in calls if getattr(n.target, "__name__", str(n.target)) == DELEGATE_CALL)
        outside = Counter(str(getattr(n.target, "__name__", n.target)) for n in calls
                          if getattr(n.target, "__name__", str(n.target)) not in (DELEGATE_CALL, "getitem"))
        (folder / MODEL_FILE).write_bytes(edge.to_executorch().buffer)
    except ExportError:
        raise
    except Exception as e:  # torch.export / exir raise many internal types; keep the cause
        raise ExportError(f"ExecuTorch export ({job.precision}) failed for {type(job.model).__name__}: {e}") from e
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in job.model(example)[:len(OUTPUT_NAMES)]]
    inputs = (TensorSpec(INPUT_NAME, tuple(job.example.shape), "float32"),)
    outputs = tuple(TensorSpec(n, s, "float32") for n, s in zip(OUTPUT_NAMES, shapes))
    findings = tuple(f"{count} x {op} not delegated to XNNPACK (runs on a portable kernel)"
                     for op, count in sorted(outside.items()))
    extra = {"backend": "xnnpack", "delegate_calls": delegates, "non_delegated": dict(sorted(outside.items()))}
    if job.precision == "int8":
        extra["quantization"] = "PT2E static, XNNPACKQuantizer per-channel symmetric int8"
    return TargetResult(MODEL_FILE, inputs, outputs, _versions(), extra, findings)


TARGET = Target(name="executorch", precisions=("fp32", "int8"), export=export, run=run_executorch,
                runtime="executorch.runtime")
