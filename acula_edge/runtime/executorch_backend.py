"""ExecuTorch backend: ``executorch.runtime`` (its Python runtime takes torch tensors, so torch is imported here,
in the loader, and nowhere else in the device runtime)."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from acula_edge.errors import BundleError, require
from acula_edge.manifest import RUNTIME_EXTRA, Manifest
from acula_edge.runtime.backends import Backend

# ExecuTorch ScalarType codes (c10 numbering) -> the manifest's dtype names.
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 6: "float32"}

# The ExecuTorch threadpool is one per process, shared by every loaded program, and may be sized only before the
# first program is loaded: resetting it afterwards crashed in libexecutorch_threadpool (SIGSEGV inside execute(),
# seen 2026-11-23 and again 2026-12-01 in the test suite, although a short script had survived it). So the first
# ExecuTorch load of a process that gives ``num_threads`` sizes the pool, and a later, different request is refused
# with a warning rather than risked.
_RUN_LOCK = threading.Lock()
_PROGRAM_LOADED = False  # set once any ExecuTorch program has been loaded in this process


def _size_threadpool(num_threads: int | None) -> int | None:
    """Size the process-wide threadpool to ``num_threads`` if no program is loaded yet (None: leave it as it is).
    Returns the pool's size afterwards (None when ``num_threads`` is None)."""
    if num_threads is None:
        return None
    pybind = require("executorch.extension.pybindings.portable_lib", RUNTIME_EXTRA["executorch"],
                     "the ExecuTorch threadpool")
    with _RUN_LOCK:
        current = int(pybind._threadpool_get_thread_count())
        if current == num_threads:
            return current
        if _PROGRAM_LOADED:
            warnings.warn(f"ExecuTorch's threadpool is shared by the whole process and already runs {current} "
                          f"thread(s) for a bundle loaded earlier; resizing it now can crash the runtime, so this "
                          f"bundle also runs on {current} (load bundles with the same num_threads, or set it on the "
                          f"first load)", RuntimeWarning, stacklevel=3)
            return current
        pybind._unsafe_reset_threadpool(int(num_threads))
        return int(num_threads)


class ExecuTorchBackend(Backend):
    """``Runtime.get().load_program(data, verification=InternalConsistency).load_method("forward")``; calls
    serialised by the base class lock.

    The program's internal-consistency verification checks the flatbuffer, but a flipped byte in a delegate's
    payload (XNNPACK) still aborts the process (SIGABRT, "terminate called ..."), so the bundle is first loaded
    and run once in a child process (``needs_probe``).

    ``num_threads`` sizes ExecuTorch's threadpool (XNNPACK runs on it). There is one pool per process and it can
    only be sized before the first program loads, so the first load that gives ``num_threads`` sets it for every
    ExecuTorch bundle of the process (a later, different value warns and is not applied; ``threads`` says what the
    pool runs); the calls of all ExecuTorch bundles are serialised by one lock (they share the pool anyway).
    """

    needs_probe = True
    fresh_outputs = True  # execute() returns new output tensors each call (tests/test_runtime_hot_path.py)

    def __init__(self, path: Path, manifest: Manifest, num_threads: int | None = None,
                 data: bytes | None = None) -> None:
        super().__init__(path, manifest, num_threads, data)
        rt = require("executorch.runtime", RUNTIME_EXTRA["executorch"], "running an ExecuTorch bundle")
        self._torch = require("torch", RUNTIME_EXTRA["executorch"], "the ExecuTorch Python runtime")
        self._lock = _RUN_LOCK
        self.threads = _size_threadpool(num_threads)
        global _PROGRAM_LOADED
        try:
            _PROGRAM_LOADED = True  # from here on the pool must not be resized (set before: a failed load counts)
            program = rt.Runtime.get().load_program(self.data, verification=rt.Verification.InternalConsistency)
            meta = program.metadata("forward")
            inputs = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
            outputs = [meta.output_tensor_meta(i) for i in range(meta.num_outputs())]
            self._method = program.load_method("forward")
        except (RuntimeError, ValueError) as e:
            raise BundleError(f"{path}: ExecuTorch cannot load the program ({e}); it is corrupt or not a .pte "
                              f"file; re-export the bundle") from e
        # torch.export keeps the model's output order, which the manifest lists: outputs match by position.
        self._emb_i, self._log_i = self.check_io(
            [(t.sizes(), _SCALAR_TYPES.get(t.dtype(), f"scalar type {t.dtype()}")) for t in inputs],
            [(f"output_{i}", t.sizes(), _SCALAR_TYPES.get(t.dtype(), f"scalar type {t.dtype()}"))
             for i, t in enumerate(outputs)])
        self._program = program
        self._shape = tuple(self.input_spec.shape)

    @property
    def name(self) -> str:
        return "executorch"

    def _invoke(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # x (contiguous, the input's dtype) wrapped as a tensor without a copy (it outlives the call); torch wraps
        # only writable arrays without a warning, so a read-only one (a view of a whole recording's windows) is copied
        if not x.flags.writeable:
            x = x.copy()
        out = self._method.execute([self._torch.from_numpy(x.reshape(self._shape))])
        return out[self._emb_i].numpy(), out[self._log_i].numpy()
