"""The hand-built reference: a plain DS-CNN exported to each runtime the way that runtime's own docs show.

It is the "what a user would do by hand" row of the latency tables in benchmarks/RESULTS_runtime.md: a keyword-
spotting style depthwise-separable CNN (Zhang et al., "Hello Edge", 2017: a 10 x 4 strided stem conv, four
depthwise 3x3 + pointwise 1x1 blocks, average pool, linear), with the project's output contract (embedding,
logits) so it runs through the same timing code. Nothing from export/ is used: each ``export_*`` function follows
the documented recipe of its runtime, with the documented defaults.

- ONNX Runtime: ``torch.onnx.export(dynamo=True)``; int8: ``quant_pre_process`` then ``quantize_static`` (QDQ, its
  default signed int8 activations and weights, MinMax calibration).
- LiteRT: ``litert_torch.convert``; int8: PT2E with litert-torch's ``PT2EQuantizer`` and
  ``get_symmetric_quantization_config(is_per_channel=True)``, ``convert_pt2e(fold_quantize=False)``,
  ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``.
- ExecuTorch: ``torch.export`` -> ``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`` ->
  ``to_executorch()``; int8: PT2E with ``XNNPACKQuantizer`` and ``get_symmetric_quantization_config(
  is_per_channel=True)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

WIDTH = 128  # channels of the stem and of every block
STEM_KERNEL, STEM_STRIDE = (10, 4), (4, 2)  # (time, mel)
BLOCK_STRIDES = ((1, 1), (2, 2), (1, 1), (1, 1))


class ReferenceDSCNN(nn.Module):
    """(batch, 1, frames, n_mels) log-mel -> (embedding (batch, embedding_dim), logits (batch, num_classes))."""

    def __init__(self, embedding_dim: int = 128, num_classes: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, WIDTH, STEM_KERNEL, STEM_STRIDE, padding=(5, 1), bias=False),
                                   nn.BatchNorm2d(WIDTH), nn.ReLU()]
        for stride in BLOCK_STRIDES:
            layers += [nn.Conv2d(WIDTH, WIDTH, 3, stride, 1, groups=WIDTH, bias=False), nn.BatchNorm2d(WIDTH),
                       nn.ReLU(), nn.Conv2d(WIDTH, WIDTH, 1, bias=False), nn.BatchNorm2d(WIDTH), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(WIDTH, embedding_dim)
        self.head = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(self.pool(self.trunk(x)).flatten(1))
        return embedding, self.head(embedding)


def build(seed: int = 0) -> ReferenceDSCNN:
    """A reference network in eval mode with seeded weights and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    model = ReferenceDSCNN()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def export_onnx(model: nn.Module, calibration: np.ndarray, path: Path, int8: bool) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    example = torch.from_numpy(calibration[:1])
    fp32 = path.with_name(path.stem + "-fp32.onnx") if int8 else path
    torch.onnx.export(model, (example,), dynamo=True, input_names=["input"],
                      output_names=["embedding", "logits"]).save(str(fp32))
    if not int8:
        return path

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(calibration[i:i + 1] for i in range(calibration.shape[0]))

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self._rows, None)
            return None if row is None else {"input": row}

    pre = path.with_name(path.stem + "-pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ)
    return path


def export_litert(model: nn.Module, calibration: np.ndarray, path: Path, int8: bool) -> Path:
    import litert_torch

    example = (torch.from_numpy(calibration[:1]),)
    if not int8:
        litert_torch.convert(model, example).export(str(path))
        return path
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    with torch.no_grad():
        for i in range(calibration.shape[0]):
            prepared(torch.from_numpy(calibration[i:i + 1]))
    converted = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    return path


def export_executorch(model: nn.Module, calibration: np.ndarray, path: Path, int8: bool) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = (torch.from_numpy(calibration[:1]),)
    module: nn.Module = model
    if int8:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, \
            get_symmetric_quantization_config
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
        with torch.no_grad():
            for i in range(calibration.shape[0]):
                prepared(torch.from_numpy(calibration[i:i + 1]))
        module = convert_pt2e(prepared)
    program = to_edge_transform_and_lower(torch.export.export(module, example), partitioner=[XnnpackPartitioner()])
    path.write_bytes(program.to_executorch().buffer)
    return path


EXPORTERS = {"onnx": (export_onnx, ".onnx"), "tflite": (export_litert, ".tflite"),
             "executorch": (export_executorch, ".pte")}


def export_all(calibration: np.ndarray, folder: Path, targets: tuple[str, ...] = tuple(EXPORTERS)) -> dict:
    """Export the reference to every target x (fp32, int8) into ``folder`` (cached); {(target, precision): path}."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build()
    out = {}
    for target in targets:
        fn, suffix = EXPORTERS[target]
        for precision in ("fp32", "int8"):
            path = folder / f"reference-{target}-{precision}{suffix}"
            if not path.is_file():
                fn(model, calibration, path, precision == "int8")
            out[(target, precision)] = path
    return out
