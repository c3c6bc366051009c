"""ExecuTorch backend: ``executorch.runtime`` (its Python runtime takes torch tensors, so torch is imported here,
in the loader, and nowhere else in the device runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from acula_edge.errors import BundleError, require
from acula_edge.manifest import RUNTIME_EXTRA, Manifest
from acula_edge.runtime.backends import Backend


class ExecuTorchBackend(Backend):
    """``Runtime.get().load_program(path).load_method("forward")``; calls serialised by the base class lock.

    ``num_threads`` is not configurable from Python in ExecuTorch 1.5 (XNNPACK uses its own threadpool); it is
    accepted and ignored.
    """

    def __init__(self, path: Path, manifest: Manifest, num_threads: int | None = None) -> None:
        super().__init__(path, manifest, num_threads)
        rt = require("executorch.runtime", RUNTIME_EXTRA["executorch"], "running an ExecuTorch bundle")
        self._torch = require("torch", RUNTIME_EXTRA["executorch"], "the ExecuTorch Python runtime")
        try:
            program = rt.Runtime.get().load_program(str(path))
            self._method = program.load_method("forward")
        except (RuntimeError, ValueError) as e:
            raise BundleError(f"{path}: ExecuTorch cannot load the program ({e}); it is corrupt or not a .pte "
                              f"file; re-export the bundle") from e
        self._program = program

    @property
    def name(self) -> str:
        return "executorch"

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._method.execute([self._torch.from_numpy(np.array(x))])  # a writable copy for torch
        if len(out) < 2:
            raise BundleError(f"{self.path}: the program returned {len(out)} outputs, expected (embedding, logits)")
        # torch.export keeps the model's output order, which the manifest lists
        names = [o.name for o in self.manifest.outputs]
        return out[names.index("embedding")].numpy(), out[names.index("logits")].numpy()
