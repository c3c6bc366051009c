"""Build the C front-end on the host with gcc, and call it from Python through ctypes.

Used by the parity tests and the benchmarks; firmware projects compile ``acula_frontend.c`` with their own
toolchain instead. Builds go into a folder named by a hash of the config, the C sources and the flags, so a
changed source or config never reuses a stale library.

    fe = CFrontend(cfg, build_dir)      # generates frontend_params.h, compiles, loads
    frames = fe.push(samples)           # (k, n_mels) float32, same as acula_edge.features.LogMelStream
    fe.reset()
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from acula_edge.errors import ExportError
from acula_edge.frontend import FrontendConfig, Windowing

from .header import write_frontend_header

FIRMWARE_DIR = Path(__file__).resolve().parent
SOURCES = ("acula_frontend.c", "acula_frontend.h")
# The flags the front-end must stay clean under (the firmware's strictest plausible setting).
C_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2")
HEADER_NAME = "frontend_params.h"


def find_compiler(cc: str = "gcc") -> str:
    """Absolute path of the C compiler ``cc``; ExportError if it is not on PATH."""
    path = shutil.which(cc)
    if path is None:
        raise ExportError(f"C compiler {cc!r} not found on PATH; the host build of the C front-end needs it "
                          f"(Debian/Ubuntu: apt-get install gcc; macOS: xcode-select --install)")
    return path


def _run(cmd: Sequence[str], what: str) -> None:
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    except OSError as e:
        raise ExportError(f"could not run the C compiler for {what}: {e}") from e
    if res.returncode != 0:
        raise ExportError(f"compiling {what} failed (exit {res.returncode}):\n  {' '.join(cmd)}\n"
                          f"{res.stderr.strip() or res.stdout.strip()}")


def _build_folder(cfg: FrontendConfig, build_dir: str | os.PathLike, kind: str, extra: Iterable[str]) -> Path:
    h = hashlib.sha256()
    h.update(cfg.to_json().encode())
    for name in SOURCES:
        h.update((FIRMWARE_DIR / name).read_bytes())
    for item in extra:
        h.update(item.encode() + b"\0")
    folder = Path(build_dir) / f"{kind}-{h.hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def compile_frontend(cfg: FrontendConfig, build_dir: str | os.PathLike, cc: str = "gcc",
                     extra_flags: Sequence[str] = ()) -> Path:
    """Compile the C front-end for ``cfg`` into a shared library under ``build_dir``; returns its path.

    Writes ``frontend_params.h`` next to it. Reuses an existing library built from the same config, sources and
    flags. Raises ExportError if gcc is missing or the build fails (warnings are errors).
    """
    compiler = find_compiler(cc)
    flags = [*C_FLAGS, *extra_flags]
    folder = _build_folder(cfg, build_dir, "frontend", [compiler, *flags])
    lib = folder / ("acula_frontend.dll" if sys.platform == "win32" else "libacula_frontend.so")
    if lib.exists():
        return lib
    write_frontend_header(cfg, folder / HEADER_NAME)
    fd, tmp = tempfile.mkstemp(prefix=".lib", suffix=".so", dir=folder)
    os.close(fd)
    try:
        _run([compiler, *flags, "-fPIC", "-shared", f"-I{folder}", f"-I{FIRMWARE_DIR}",
              str(FIRMWARE_DIR / "acula_frontend.c"), "-o", tmp, "-lm"], "the C front-end")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def compile_program(cfg: FrontendConfig, sources: Sequence[str | os.PathLike], output: str | os.PathLike,
                    windowing: Windowing | None = None, cc: str = "gcc",
                    extra_flags: Sequence[str] = ()) -> Path:
    """Compile ``sources`` together with the C front-end for ``cfg`` into the executable ``output``.

    The generated ``frontend_params.h`` (with the model-window constants when ``windowing`` is given) is written
    next to ``output``. Used to check that programs such as ``examples/firmware/main.c`` build with C_FLAGS.
    """
    compiler = find_compiler(cc)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_frontend_header(cfg, out.parent / HEADER_NAME, windowing)
    _run([compiler, *C_FLAGS, *extra_flags, f"-I{out.parent}", f"-I{FIRMWARE_DIR}",
          *[str(s) for s in sources], str(FIRMWARE_DIR / "acula_frontend.c"), "-o", str(out), "-lm"],
         f"{', '.join(Path(s).name for s in sources)}")
    return out


class CFrontend:
    """The C front-end for one config, loaded through ctypes; one stream (state) per instance.

    ``push(samples)`` takes float samples at ``cfg.sample_rate`` (any length) and returns the new frames, shape
    (k, n_mels) float32; ``push_int16`` does the same for int16 PCM; ``reset()`` starts a new recording.
    ``fft_double`` builds with ``-DACULA_FFT_DOUBLE=1`` (window, FFT and power in double), ``q15`` with
    ``-DACULA_Q15=1`` (samples, window and FFT in fixed point).
    """

    def __init__(self, cfg: FrontendConfig, build_dir: str | os.PathLike, cc: str = "gcc",
                 fft_double: bool = False, q15: bool = False) -> None:
        if fft_double and q15:
            raise ExportError("the C front-end builds with ACULA_FFT_DOUBLE or ACULA_Q15, not both")
        self.cfg = cfg
        self.fft_double = fft_double
        self.q15 = q15
        flags = ["-DACULA_FFT_DOUBLE=1"] if fft_double else ["-DACULA_Q15=1"] if q15 else []
        self.library_path = compile_frontend(cfg, build_dir, cc=cc, extra_flags=flags)
        lib = ctypes.CDLL(str(self.library_path))
        f32p = ctypes.POINTER(ctypes.c_float)
        lib.acula_frontend_init.argtypes = [ctypes.c_void_p]
        lib.acula_frontend_init.restype = None
        lib.acula_frontend_reset.argtypes = [ctypes.c_void_p]
        lib.acula_frontend_reset.restype = None
        lib.acula_frontend_frames_for.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.acula_frontend_frames_for.restype = ctypes.c_int
        lib.acula_frontend_push.argtypes = [ctypes.c_void_p, f32p, ctypes.c_int, f32p, ctypes.c_int]
        lib.acula_frontend_push.restype = ctypes.c_int
        lib.acula_frontend_push_i16.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16), ctypes.c_int,
                                                f32p, ctypes.c_int]
        lib.acula_frontend_push_i16.restype = ctypes.c_int
        lib.acula_frontend_state_bytes.argtypes = []
        lib.acula_frontend_state_bytes.restype = ctypes.c_size_t
        self._lib = lib
        self.state_bytes = int(lib.acula_frontend_state_bytes())
        self._state = ctypes.create_string_buffer(self.state_bytes)
        lib.acula_frontend_init(self._state)

    def reset(self) -> None:
        """Drop buffered samples; the next push starts a new recording."""
        self._lib.acula_frontend_reset(self._state)

    def frames_for(self, n: int) -> int:
        """Frames a push of ``n`` samples would return now."""
        return int(self._lib.acula_frontend_frames_for(self._state, int(n)))

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append float samples; return the frames they complete, shape (k, n_mels) float32."""
        x = np.ascontiguousarray(np.asarray(samples, dtype=np.float32).reshape(-1))
        return self._push(self._lib.acula_frontend_push, x, ctypes.c_float)

    def push_int16(self, samples: np.ndarray) -> np.ndarray:
        """Append int16 PCM (scaled by 1/32768 in C); return the new frames, shape (k, n_mels) float32."""
        x = np.ascontiguousarray(np.asarray(samples).reshape(-1))
        if x.dtype != np.int16:
            raise ValueError(f"push_int16 expects int16 samples, got {x.dtype}")
        return self._push(self._lib.acula_frontend_push_i16, x, ctypes.c_int16)

    def _push(self, fn, x: np.ndarray, ctype) -> np.ndarray:
        if x.shape[0] > 2**31 - 1:
            raise ValueError(f"push at most 2**31 - 1 samples at a time, got {x.shape[0]}")
        k = self.frames_for(x.shape[0])
        out = np.empty((k, self.cfg.n_mels), dtype=np.float32)
        got = fn(self._state, x.ctypes.data_as(ctypes.POINTER(ctype)), x.shape[0],
                 out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), k)
        if got != k:
            raise RuntimeError(f"acula_frontend push returned {got}, expected {k} frames")
        return out
