"""Quantization and export of checkpoints to device bundles (ExecuTorch, ONNX, TFLite, TFLite Micro).

- :func:`export_checkpoint` / :func:`export_model`: write a bundle folder atomically, gated by parity in the
  target's real runtime (``acula-edge export``);
- :func:`verify_bundle`: re-check a bundle's integrity and parity (``acula-edge verify``);
- targets live one per file in ``acula_edge.export.targets`` (see :mod:`acula_edge.export.registry`); tolerances
  in :mod:`acula_edge.export.tolerances`.

Importing this package does not import torch or any converter; they load when an export runs.
"""

from acula_edge.export.api import export_checkpoint, export_model
from acula_edge.export.verify import verify_bundle

__all__ = ["export_checkpoint", "export_model", "verify_bundle"]
