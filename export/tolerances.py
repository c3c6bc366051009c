"""Parity tolerances, declared once per target and precision.

The parity gate (:mod:`acula_edge.export.parity`) compares the exported model, run in its real runtime, with the
PyTorch model on held-out windows. A bar that is ``None`` is measured and reported but does not fail the export.

- ``min_cosine``: per output, the lowest allowed mean cosine similarity between runtime and PyTorch outputs
  (one cosine per window, averaged over the windows).
- ``max_auroc_delta``: the largest allowed |AUROC(runtime) - AUROC(PyTorch fp32)|, recording level (mean over a
  recording's windows of the probability of the last label). Only computed when the held-out data has labels of
  both classes of a binary model, and only gated when each class has at least ``MIN_RECORDINGS_PER_CLASS``
  held-out recordings (with 5 + 5 recordings one swapped pair moves AUROC by 0.04: a bar of 0.01 would be noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from acula_edge.errors import ExportError

# fp32: every runtime must reproduce PyTorch up to float rounding.
FP32_MIN_COSINE = 0.9999
# int8: the embedding keeps its direction; the logits are judged by the task metric (AUROC), not by cosine, since
# two-class logits near zero make a per-window cosine meaningless.
INT8_MIN_EMBEDDING_COSINE = 0.99
INT8_MAX_AUROC_DELTA = 0.01
MIN_RECORDINGS_PER_CLASS = 10  # AUROC deltas on fewer recordings per class are reported, not gated


@dataclass(frozen=True)
class Tolerance:
    """Bars one export must clear."""

    min_cosine: dict[str, float] = field(default_factory=dict)  # output name -> lowest mean cosine similarity
    max_auroc_delta: float | None = None  # largest |AUROC change| vs PyTorch fp32, recording level

    def to_dict(self) -> dict:
        return {"min_cosine": dict(self.min_cosine), "max_auroc_delta": self.max_auroc_delta}

    def scaled(self, min_cosine: float) -> "Tolerance":
        """The same tolerance with every cosine bar set to ``min_cosine`` (used to force failures in tests)."""
        return replace(self, min_cosine={k: min_cosine for k in self.min_cosine})


_FP32 = Tolerance(min_cosine={"embedding": FP32_MIN_COSINE, "logits": FP32_MIN_COSINE})
_INT8 = Tolerance(min_cosine={"embedding": INT8_MIN_EMBEDDING_COSINE}, max_auroc_delta=INT8_MAX_AUROC_DELTA)

# (target, precision) -> bars. Every registered target x precision must appear here (checked by the tests).
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("executorch", "fp32"): _FP32,
    ("executorch", "int8"): _INT8,
    ("onnx", "fp32"): _FP32,
    ("onnx", "int8"): _INT8,
    ("tflite", "fp32"): _FP32,
    ("tflite", "int8"): _INT8,
    ("tflm", "int8"): _INT8,
}


def tolerance_for(target: str, precision: str) -> Tolerance:
    """The declared tolerance of ``target`` at ``precision``; ExportError if none is declared."""
    try:
        return TOLERANCES[(target, precision)]
    except KeyError:
        raise ExportError(f"no parity tolerance declared for target {target!r} at precision {precision!r}; "
                          f"declared: {sorted(TOLERANCES)} (add one in acula_edge/export/tolerances.py)") from None
