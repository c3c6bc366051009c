"""PT2E full-int8 quantization for the ``tflite`` and ``tflm`` targets (litert-torch 0.10's ``PT2EQuantizer``).

:func:`quantize` = ``torch.export`` -> annotate -> calibrate on real windows -> fit the embedding's range -> convert.
It fixes two defects of the stock flow, both measured on trained distill/ students (benchmarks/RESULTS_firmware.md):

1. **Missed annotations.** litert-torch finds residual adds and ``adaptive_avg_pool2d`` through
   ``get_source_partitions``, which needs the ``source_fn_stack`` node metadata; torch 2.13's (non-strict)
   ``torch.export`` leaves it empty, so no add and no pool is annotated. An add followed by a convolution still ends
   up int8 (the converter fuses DEQUANTIZE -> ADD -> QUANTIZE), but ``small``'s last residual add feeds the global
   pool: ADD and MEAN stayed float32, between DEQUANTIZE and QUANTIZE (4x the bytes in the TFLM arena).
   :class:`GraphQuantizer` annotates every tensor-tensor ``aten.add`` by its op target instead, with litert's own
   specs. The global pool then gets its own output observer rather than sharing its input's (litert's
   ``propagate_annotation`` default): a mean over a 13 x 4 map spans a much narrower range than the map's largest
   value, and on ``small`` (seed 2) the shared range cost 0.0006 of embedding cosine; TFLite's MEAN requantizes.
2. **The embedding output's range.** Every activation gets a ``HistogramObserver``, whose range search is greedy (it
   stops at the first step that does not lower its L2 estimate) and minimizes the element-wise error, while the
   parity gate scores the per-window cosine of the 384-wide embedding. On ``small-mcu`` (seed 1, 10 epochs) the
   observer kept nearly the whole calibration range (-5.0, 5.5) for an output of RMS 0.29, a 0.041 step; windows
   with small embeddings lost most of their cosine. :func:`fit_output_range` picks, from the observer's range
   shrunk by each of :data:`RANGE_FRACTIONS`, the int8 range that maximizes the gate's metric (mean per-window cosine,
   :func:`~acula_edge.export.parity.cosine_rows`) on the **calibration** windows (never the parity windows), and
   keeps the observer's own range unless a candidate beats it there.

Import this module lazily (it imports torch, torchao and litert-torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from litert_torch.quantize import pt2e_quantizer_utils as litert_utils
from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
from torchao.quantization.pt2e.observer import MinMaxObserver
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

from acula_edge.export.parity import cosine_rows
from acula_edge.export.registry import OUTPUT_NAMES

ADD_OPS = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
POOL_OPS = (torch.ops.aten.adaptive_avg_pool2d.default, torch.ops.aten.mean.dim)  # average pools: own output range
RANGE_FRACTIONS = tuple(float(f) for f in np.linspace(0.2, 1.0, 81))  # shrink factors of the observed range tried
FITTED_OUTPUT = "embedding"  # the output scored by cosine in the parity gate (the logits are judged by AUROC)


@dataclass(frozen=True)
class QuantizeOptions:
    """Which of this module's fixes :func:`quantize` applies (all by default; all off = the stock flow, for
    benchmarks/int8_output_range.py's before/after comparison)."""

    annotate_adds: bool = True  # residual adds annotated by op target (1. above)
    pool_own_range: bool = True  # average pools observe their own output range (1. above)
    fit_output_range: bool = True  # the embedding's range fitted for cosine (2. above)


STOCK = QuantizeOptions(annotate_adds=False, pool_own_range=False, fit_output_range=False)  # litert-torch as shipped


class GraphQuantizer(PT2EQuantizer):
    """litert-torch's PT2E quantizer plus, by op target, the adds its source-partition matcher misses, and average
    pools with their own output range."""

    options: QuantizeOptions

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = super().annotate(model)
        if self.options.annotate_adds and annotate_adds(model, self.global_config):
            litert_utils.propagate_annotation(model)  # pools/flattens after a newly annotated add get annotated
        if self.options.pool_own_range:
            own_pool_ranges(model, self.global_config)
        return model


def make_quantizer(options: QuantizeOptions | None = None) -> GraphQuantizer:
    """Per-channel symmetric int8 weights, static int8 activations (litert-torch's symmetric config)."""
    quantizer = GraphQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    quantizer.options = options or QuantizeOptions()
    return quantizer


def annotate_adds(model: torch.fx.GraphModule, config: Any) -> int:
    """Annotate each not yet annotated tensor + tensor ``aten.add`` like litert's "add" pattern; returns how many."""
    count = 0
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in ADD_OPS or "quantization_annotation" in node.meta:
            continue
        inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
        if len(inputs) != 2:  # x + constant: not a residual add
            continue
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={a: litert_utils.get_input_act_qspec(config) for a in inputs},
            output_qspec=litert_utils.get_output_act_qspec(config), _annotated=True)
        count += 1
    return count


def own_pool_ranges(model: torch.fx.GraphModule, config: Any) -> int:
    """Give each annotated average pool its own output observer (instead of sharing its input's); returns how
    many. Nodes that share the pool's output (flatten) follow it."""
    count = 0
    for node in model.graph.nodes:
        annotation = node.meta.get("quantization_annotation")
        if node.op == "call_function" and node.target in POOL_OPS and annotation is not None \
                and annotation.output_qspec is not None:
            annotation.output_qspec = litert_utils.get_output_act_qspec(config)
            count += 1
    return count


@dataclass(frozen=True)
class RangeFit:
    """The int8 range chosen for one model output, and what it scored on the calibration windows."""

    output: str
    observer_range: tuple[float, float]  # what the observer would have used
    chosen_range: tuple[float, float]
    observer_cosine: float  # mean per-window cosine, fake-quantized vs float, on the calibration windows
    chosen_cosine: float
    windows: int

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "observer_range": [round(v, 6) for v in self.observer_range],
                "chosen_range": [round(v, 6) for v in self.chosen_range],
                "calibration_cosine": {"observer": round(self.observer_cosine, 6),
                                       "chosen": round(self.chosen_cosine, 6)},
                "windows": self.windows, "method": "max mean cosine over the observer's range x "
                                                  f"{RANGE_FRACTIONS[0]:g}..{RANGE_FRACTIONS[-1]:g}"}


def _range(scale: float, zero_point: int, qmin: int, qmax: int) -> tuple[float, float]:
    return float((qmin - zero_point) * scale), float((qmax - zero_point) * scale)


def _fake_quant(values: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    return torch.fake_quantize_per_tensor_affine(values, scale, zero_point, qmin, qmax).numpy()


def fit_output_range(prepared: torch.fx.GraphModule, index: int, values: np.ndarray) -> RangeFit | None:
    """Replace the observer of graph output ``index`` by the range that maximizes the mean per-window cosine of
    ``values`` (that output on the calibration windows, float) against its int8 version. None when that output
    has no observer of its own (nothing to fit)."""
    out = next(n for n in prepared.graph.nodes if n.op == "output")
    node = out.args[0][index]
    is_module = isinstance(node, torch.fx.Node) and node.op == "call_module"
    observer = getattr(prepared, str(node.target), None) if is_module else None
    if observer is None or not hasattr(observer, "calculate_qparams") or observer.qscheme != torch.per_tensor_affine:
        return None
    qmin, qmax = int(observer.quant_min), int(observer.quant_max)
    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))

    def score(scale: float, zp: int) -> float:
        return float(cosine_rows(values, _fake_quant(x, scale, zp, qmin, qmax)).mean())

    scale, zp = (float(v) for v in observer.calculate_qparams())
    zp = int(zp)
    base = (score(scale, zp), _range(scale, zp, qmin, qmax), None)
    best = base
    lo, hi = float(observer.min_val), float(observer.max_val)
    for f in RANGE_FRACTIONS:
        candidate = MinMaxObserver(dtype=observer.dtype, qscheme=observer.qscheme, quant_min=qmin, quant_max=qmax,
                                   eps=float(observer.eps))
        candidate(torch.tensor([lo * f, hi * f]))
        s, z = (float(v) for v in candidate.calculate_qparams())
        cos = score(s, int(z))
        if cos > best[0]:
            best = (cos, _range(s, int(z), qmin, qmax), candidate)
    if best[2] is not None:
        setattr(prepared, str(node.target), best[2])
    return RangeFit(OUTPUT_NAMES[index], base[1], best[1], base[0], best[0], int(values.shape[0]))


def quantize(model: torch.nn.Module, example: np.ndarray, calibration: np.ndarray,
             options: QuantizeOptions = QuantizeOptions()) -> tuple[torch.fx.GraphModule, GraphQuantizer,
                                                                    list[RangeFit]]:
    """The PT2E-converted (quantize/dequantize) graph of ``model``, its quantizer (for ``litert_torch.convert``'s
    ``QuantConfig``), and the output ranges fitted. ``calibration``: (N, 1, frames, n_mels) real windows."""
    from acula_edge.export.targets.tflite import remove_dropout

    quantizer = make_quantizer(options)
    graph = torch.export.export(model.eval(), (torch.from_numpy(example),)).module()
    remove_dropout(graph)  # see remove_dropout: works around a mis-scaled FC bias
    prepared = prepare_pt2e(graph, quantizer)
    index = OUTPUT_NAMES.index(FITTED_OUTPUT)
    outputs = []
    with torch.no_grad():
        for i in range(calibration.shape[0]):
            got = prepared(torch.from_numpy(calibration[i:i + 1]))
            outputs.append(got[index].reshape(1, -1).numpy())
    fit = fit_output_range(prepared, index, np.concatenate(outputs)) if options.fit_output_range else None
    return convert_pt2e(prepared, fold_quantize=False), quantizer, [fit] if fit else []
