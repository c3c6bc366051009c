"""AcuLa post-training alignment of an audio encoder with a frozen language model (the teacher).

- :func:`train_alignment` with an :class:`AlignConfig` (presets ``tiny``, ``cpu``, ``vit-s``): reports from
  metadata -> frozen text-teacher embeddings -> audio encoder + projection heads trained with CKA (+ MAM) ->
  teacher checkpoint (``acula-edge align``; runs under ``torchrun`` too);
- :class:`AlignedTeacher`: the exported teacher model (embedding + zero-shot logits);
- encoders: :mod:`.cnn_encoder`, :mod:`.mae_vit` (OPERA-GT's ``forward_feature``), :mod:`.hf_audio` (AST,
  wav2vec2 / HuBERT with their feature extractors' preprocessing, :func:`hf_frontend`); :mod:`.pretrained`
  (:func:`load_pretrained` loads each module group whole or not at all and reports it);
- :class:`TextTeacher` / :class:`TextEmbeddingCache` (:mod:`.text_teacher`), reports (:mod:`.reports`),
  losses (:mod:`.losses`).

Importing the package is light; each name imports torch/transformers when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AlignConfig": "acula_edge.align.train",
    "AlignResult": "acula_edge.align.train",
    "PRESETS": "acula_edge.align.train",
    "preset_config": "acula_edge.align.train",
    "train_alignment": "acula_edge.align.train",
    "AlignedTeacher": "acula_edge.align.teacher",
    "TextTeacher": "acula_edge.align.text_teacher",
    "TextEmbeddingCache": "acula_edge.align.text_teacher",
    "TemplateReportGenerator": "acula_edge.align.reports",
    "CausalLMReportGenerator": "acula_edge.align.reports",
    "generate_reports": "acula_edge.align.reports",
    "build_encoder": "acula_edge.align.encoders",
    "load_pretrained": "acula_edge.align.pretrained",
    "hf_frontend": "acula_edge.align.hf_audio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'acula_edge.align' has no attribute {name!r}")
