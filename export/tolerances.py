"""Parity tolerances: the bars of the gate (:mod:`acula_edge.export.parity`), declared with each target.

Every :class:`~acula_edge.export.registry.Target` names one :class:`Tolerance` per precision (usually :data:`FP32`
or :data:`INT8` below); :func:`tolerance_for` looks it up. The bars judge what the device uses: the embedding
(zero-shot, retrieval), the class probabilities and the decision at the bundle's threshold, and the ranking of
recordings (what AUROC summarises). A bar that is ``None`` is measured and reported but does not fail the export.

How the int8 bars were chosen (benchmarks/RESULTS_export.md): correct int8 exports of distill/ students across
seeds pass with margin, and an export whose one logit is shifted by +1 fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Tolerance:
    """Bars one export must clear."""

    min_cosine: dict[str, float] = field(default_factory=dict)  # output name -> lowest mean per-window cosine
    max_prob_error: float | None = None  # largest |p_runtime - p_pytorch| over windows and classes
    max_logit_error: float | None = None  # largest |Δlogit| over windows and classes / spread of reference logits
    # the spread never counts as less than this: near-constant logits (an untrained head) would otherwise make
    # rounding look large. Chosen so max_logit_error x floor moves no binary probability by more than decision_margin
    # (|dp| <= |d(logit difference)| / 4 <= 2 |dlogit| / 4)
    logit_spread_floor: float = 0.0
    decision_margin: float = 0.0  # windows whose reference P(last label) is within this of the threshold are excused
    min_decision_agreement: float | None = None  # share of the other windows whose decision must not change
    min_rank_agreement: float | None = None  # lowest Spearman correlation of recording scores, gated when the
    # reference scores' standard deviation exceeds decision_margin (below it, their order is rounding noise)
    max_auroc_loss: float | None = None  # fail when the 95% bootstrap interval of ΔAUROC lies below -this

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scaled(self, min_cosine: float) -> "Tolerance":
        """The same tolerance with every cosine bar set to ``min_cosine`` (used to force failures in tests)."""
        return replace(self, min_cosine={k: min_cosine for k in self.min_cosine})


# fp32: every runtime must reproduce PyTorch up to float rounding.
FP32 = Tolerance(min_cosine={"embedding": 0.9999, "logits": 0.9999}, max_prob_error=1e-3, max_logit_error=1e-3,
                 logit_spread_floor=2.0, decision_margin=1e-3, min_decision_agreement=1.0, min_rank_agreement=0.99,
                 max_auroc_loss=0.005)
# int8: quantization noise is allowed, a change of what the device reports is not.
INT8 = Tolerance(min_cosine={"embedding": 0.99}, max_prob_error=0.1, max_logit_error=0.5, logit_spread_floor=0.2,
                 decision_margin=0.05, min_decision_agreement=1.0, min_rank_agreement=0.9, max_auroc_loss=0.02)


def tolerance_for(target: str, precision: str) -> Tolerance:
    """The tolerance ``target`` declares at ``precision``; ExportError if it declares none."""
    from acula_edge.export.registry import get_target

    return get_target(target).tolerance(precision)
