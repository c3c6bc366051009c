"""TensorFlow Lite Micro backend (the ``tflite_micro`` Python interpreter), to verify firmware bundles on a host."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from acula_edge.errors import BundleError, require
from acula_edge.manifest import RUNTIME_EXTRA, Manifest
from acula_edge.runtime.backends import Backend

# Arena used when the manifest's extra has no "arena_bytes" (the exporter measures and records the real need).
DEFAULT_ARENA_BYTES = 256 * 1024


class TFLMBackend(Backend):
    """``Interpreter.from_file(path, arena_size=manifest.extra["arena_bytes"])``; calls serialised by a lock.

    Outputs are read in the manifest's order (TFLM keeps the flatbuffer's output order).
    """

    def __init__(self, path: Path, manifest: Manifest, num_threads: int | None = None) -> None:
        super().__init__(path, manifest, num_threads)
        rt = require("tflite_micro.python.tflite_micro.runtime", RUNTIME_EXTRA["tflm"],
                     "running a TFLite Micro bundle")
        self.arena_bytes = int(manifest.extra.get("arena_bytes") or DEFAULT_ARENA_BYTES)
        try:
            self._it = rt.Interpreter.from_file(str(path), arena_size=self.arena_bytes)
        except (RuntimeError, ValueError) as e:
            raise BundleError(f"{path}: TFLite Micro cannot load the model with a {self.arena_bytes}-byte arena "
                              f"({e}); the file is corrupt, or the arena is too small (manifest extra "
                              f"'arena_bytes')") from e
        names = [o.name for o in manifest.outputs]
        self._emb_i, self._log_i = names.index("embedding"), names.index("logits")

    @property
    def name(self) -> str:
        return "tflite-micro"

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._it.set_input(x, 0)
        self._it.invoke()
        return self._it.get_output(self._emb_i), self._it.get_output(self._log_i)
