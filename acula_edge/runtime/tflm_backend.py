"""TensorFlow Lite Micro backend (the ``tflite_micro`` Python interpreter), to verify firmware bundles on a host."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from acula_edge.errors import BundleError, require
from acula_edge.manifest import RUNTIME_EXTRA, Manifest
from acula_edge.runtime.backends import Backend

# Arena used when the manifest's extra has no "arena_bytes" (the exporter measures and records the real need).
DEFAULT_ARENA_BYTES = 256 * 1024


class TFLMBackend(Backend):
    """``Interpreter.from_bytes(data, arena_size=manifest.extra["arena_bytes"])``; calls serialised by a lock.

    TFLM neither verifies the flatbuffer nor fails cleanly on a far too small arena (SIGSEGV at 1 or 64 bytes), so
    the bundle is first loaded and run once in a child process (``needs_probe``): an arena below what the model
    needs, or a corrupt model, is a BundleError. Outputs are read in the manifest's order (TFLM keeps the
    flatbuffer's output order).
    """

    needs_probe = True

    def __init__(self, path: Path, manifest: Manifest, num_threads: int | None = None,
                 data: bytes | None = None) -> None:
        super().__init__(path, manifest, num_threads, data)
        rt = require("tflite_micro.python.tflite_micro.runtime", RUNTIME_EXTRA["tflm"],
                     "running a TFLite Micro bundle")
        self.arena_bytes = arena_bytes(manifest)
        try:
            self._it = rt.Interpreter.from_bytes(self.data, arena_size=self.arena_bytes)
            ins = [self._it.get_input_details(0)]
            outs = [self._it.get_output_details(i) for i in range(len(manifest.outputs))]
        except (RuntimeError, ValueError, IndexError, struct.error) as e:  # struct.error: a corrupt flatbuffer
            raise BundleError(f"{path}: TFLite Micro cannot load the model with a {self.arena_bytes}-byte arena "
                              f"({type(e).__name__}: {e}); the file is corrupt, or the arena is too small "
                              f"(manifest extra 'arena_bytes'); re-export the bundle") from e
        self._emb_i, self._log_i = self.check_io(
            [(i["shape"], np.dtype(i["dtype"]).name) for i in ins],
            [(f"output_{k}", o["shape"], np.dtype(o["dtype"]).name) for k, o in enumerate(outs)])

    @property
    def name(self) -> str:
        return "tflite-micro"

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._it.set_input(x, 0)
        self._it.invoke()
        return self._it.get_output(self._emb_i), self._it.get_output(self._log_i)


def arena_bytes(manifest: Manifest) -> int:
    """The arena the manifest asks for (an integer the schema checked), or DEFAULT_ARENA_BYTES."""
    return int(manifest.extra.get("arena_bytes") or DEFAULT_ARENA_BYTES)
