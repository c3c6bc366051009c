"""Quantization and export of checkpoints to device bundles (ExecuTorch, ONNX, TFLite, TFLite Micro).

- :func:`export_checkpoint` / :func:`export_model`: write a bundle folder atomically, gated by parity measured by
  loading the bundle with :func:`acula_edge.load`, as the device will (``acula-edge export``);
- :func:`verify_bundle`: re-check a bundle's integrity and the same parity gate (``acula-edge verify``);
- targets live one per file in ``acula_edge.export.targets``, each a :class:`~acula_edge.export.registry.Target`
  owning its export function, runtime backend, pip extra, files and tolerances.

Importing this package imports nothing else (the device runtime reads the target registry through it); torch and
the converters load when an export runs.
"""

from typing import Any

__all__ = ["export_checkpoint", "export_model", "verify_bundle"]


def __getattr__(name: str) -> Any:
    if name in ("export_checkpoint", "export_model"):
        from acula_edge.export import api

        return getattr(api, name)
    if name == "verify_bundle":
        from acula_edge.export.verify import verify_bundle

        return verify_bundle
    raise AttributeError(f"module 'acula_edge.export' has no attribute {name!r}")
