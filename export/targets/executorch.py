"""ExecuTorch: ``torch.export`` -> XNNPACK partitioner -> ``.pte``; int8 via PT2E static quantization.

int8 uses ``XNNPACKQuantizer`` with per-channel symmetric weights; inputs and outputs stay float32 (the quantize
and dequantize ops are delegated). Nodes left outside the XNNPACK delegate run on ExecuTorch's portable kernels;
they are listed in the manifest (``extra.non_delegated``) and as findings, since they are usually slow and fp32.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Iterator

from acula_edge.errors import ExportError
from acula_edge.export.registry import INPUT_NAME, OUTPUT_NAMES, ExportJob, Target, TargetResult
from acula_edge.export.tolerances import FP32, INT8
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


# ops whose decomposed patterns two XNNPACK passes search for (ConvertToUpsampleBilinear2d, ConvertToSDPAPass)
PATTERN_SOURCES = ("upsample", "scaled_dot_product")


@contextlib.contextmanager
def _skip_absent_patterns(program) -> Iterator[bool]:
    """Lower without building XNNPACK's bilinear-upsample and SDPA pattern graphs when the program has neither op.

    Why: executorch 1.5 builds those pattern graphs (by tracing reference modules) the first time its passes run in
    a process, ~3 s of CPU per export on 2 cores, and a graph without the op cannot contain its decomposition. The
    written program is byte-identical (measured on the distill/ students; benchmarks/RESULTS_export.md). Yields
    whether the patterns were skipped.
    """
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    used = {str(getattr(n.target, "__name__", n.target)) for n in program.graph.nodes if n.op == "call_function"}
    if any(src in op for op in used for src in PATTERN_SOURCES):
        yield False
        return
    saved = bilinear_2d.get_graphs_dict, sdpa.get_graphs
    bilinear_2d.get_graphs_dict, sdpa.get_graphs = dict, list  # no patterns to search for
    try:
        yield True
    finally:
        bilinear_2d.get_graphs_dict, sdpa.get_graphs = saved


def export(job: ExportJob, folder: Path) -> TargetResult:
    """Write ``model.pte`` (XNNPACK-delegated, fp32 or int8) into ``folder``."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = torch.from_numpy(job.example)
    try:
        module = _quantized_module(job, example) if job.precision == "int8" else job.model
        program = torch.export.export(module, (example,))
        with _skip_absent_patterns(program):
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


TARGET = Target(name="executorch", precisions=("fp32", "int8"), export=export, export_cost=11.0,
                backend="acula_edge.runtime.executorch_backend:ExecuTorchBackend", extra="executorch",
                runtime="executorch.runtime", model_file=MODEL_FILE, tolerances={"fp32": FP32, "int8": INT8})
