"""Build a firmware project for a Cortex-M and run it under ``qemu-arm`` (user mode, semihosting).

    elf = build(project_dir, tflm_dir, arch="cortex-m4", kernels="cmsis_nn", frontend="float")
    run = run_windows(elf, windows_int8)            # the model alone: (N, frames, mels) int8 -> int8 outputs
    run = run_audio(elf, pcm_int16)                 # the app: audio -> per-window outputs, probabilities, decision
    n = count_instructions(elf, ["windows", ...])   # executed guest instructions of one run

Instructions are counted by QEMU's own execution log: ``-one-insn-per-tb -d nochain,exec`` logs one line per
executed guest instruction (one instruction per translation block, no block chaining), which is counted as it is
written (through a FIFO, never stored). The Debian QEMU is built without TCG plugin support (no ``-plugin``), so
libinsn is not available; the log gives the same count, slower.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from acula_edge.errors import ExportError
from acula_edge.manifest import Manifest

from .toolchain import Toolchain, find_toolchain, make_args

FRONTENDS = ("float", "q15")
# TFLite ops with a CMSIS-NN kernel in TFLM (tensorflow/lite/micro/kernels/cmsis_nn/) -> the kernel file's stem,
# shared by the reference kernel (tensorflow/lite/micro/kernels/<stem>.cc)
CMSIS_NN_KERNEL_FILES = {
    "ADD": "add", "BATCH_MATMUL": "batch_matmul", "CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise_conv",
    "FULLY_CONNECTED": "fully_connected", "MAXIMUM": "maximum_minimum", "MINIMUM": "maximum_minimum", "MUL": "mul",
    "PAD": "pad", "AVERAGE_POOL_2D": "pooling", "MAX_POOL_2D": "pooling", "SOFTMAX": "softmax", "SVDF": "svdf",
    "TRANSPOSE": "transpose", "TRANSPOSE_CONV": "transpose_conv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional_sequence_lstm",
}
QEMU_TIMEOUT_S = 1800  # one emulated run; the reference kernels under the instruction log are the slowest


@dataclass(frozen=True)
class Firmware:
    """A linked firmware ELF, its link map and what it was built with."""

    elf: Path
    map: Path
    arch: str
    kernels: str  # the library's kernels; "cmsis_nn+reference-ops": the model's ops from reference sources
    frontend: str


@dataclass(frozen=True)
class RunStats:
    """What the harness reports after a run on the target: arena size and use, stack depth, windows."""

    arena_bytes: int
    arena_used: int
    stack_used: int
    windows: int


@dataclass(frozen=True)
class WindowsRun:
    embedding: np.ndarray  # (N, D) int8
    logits: np.ndarray  # (N, C) int8
    stats: RunStats


@dataclass(frozen=True)
class AudioRun:
    embedding: np.ndarray  # (N, D) int8
    logits: np.ndarray  # (N, C) int8
    probabilities: np.ndarray  # (N, C) float32, softmax of the dequantized logits
    decision: int  # 1 / 0, or -1 without a window
    mean_probabilities: np.ndarray  # (C,) float32, the recording's (mean over windows)
    stats: RunStats


def reference_kernels(ops: Sequence[str]) -> list[str]:
    """Stems of the TFLM kernel files that have a CMSIS-NN version, for the TFLite ops ``ops`` (CONV_2D, ...)."""
    return sorted({CMSIS_NN_KERNEL_FILES[op] for op in ops if op in CMSIS_NN_KERNEL_FILES})


def build(project: str | Path, tflm: str | Path, arch: str = "cortex-m4", kernels: str = "cmsis_nn",
          frontend: str = "float", toolchain: Toolchain | None = None, jobs: int = 2,
          reference_ops: Sequence[str] = ()) -> Firmware:
    """``make`` the project in ``project`` against the TFLM tree ``tflm`` (library already built); returns the ELF.

    ``reference_ops``: TFLite ops (e.g. the model's) whose reference kernels replace the library's optimized ones
    (the Makefile's REFERENCE_KERNELS). Builds into ``project/build/<arch>-<kernels>-<frontend>/``. Raises
    ExportError with the compiler's message.
    """
    if frontend not in FRONTENDS:
        raise ExportError(f"unknown front-end build {frontend!r}; choose one of {FRONTENDS}")
    tools = toolchain or find_toolchain()
    prefix = tools.gcc[:-len("gcc")]
    folder = Path(project)
    stems = reference_kernels(reference_ops)
    label = f"{kernels}+reference-ops" if stems else kernels
    build_dir = Path("build") / f"{arch}-{label}-{frontend}"
    cmd = ["make", f"-j{jobs}", f"TFLM_DIR={Path(tflm).resolve()}", *make_args(arch, kernels), f"FRONTEND={frontend}",
           f"CROSS={prefix}", f"BUILD={build_dir}", f"REFERENCE_KERNELS={' '.join(stems)}"]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-15:]
        raise ExportError(f"building the firmware in {folder} failed (exit {proc.returncode}):\n  {' '.join(cmd)}\n  "
                          + "\n  ".join(tail))
    out = folder / build_dir
    return Firmware(out / "acula_fw.elf", out / "acula_fw.map", arch, label, frontend)


def _qemu_cmd(fw: Firmware, args: Sequence[str], tools: Toolchain, log: str | None = None,
              elf: Path | None = None) -> list[str]:
    cmd = [tools.qemu, "-cpu", fw.arch]
    if log is not None:
        cmd += ["-one-insn-per-tb", "-d", "nochain,exec", "-D", log]
    return [*cmd, str(elf or fw.elf), *args]


def _run(fw: Firmware, args: Sequence[str], tools: Toolchain) -> str:
    try:
        proc = subprocess.run(_qemu_cmd(fw, args, tools), capture_output=True, text=True, timeout=QEMU_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ExportError(f"{fw.elf} did not finish under qemu-arm within {QEMU_TIMEOUT_S} s") from e
    if proc.returncode != 0 or "error:" in proc.stdout:
        raise ExportError(f"{fw.elf} {' '.join(args)} failed under qemu-arm (exit {proc.returncode}): "
                          f"{(proc.stdout + proc.stderr).strip()[-500:]}")
    return proc.stdout


def _stats(stdout: str) -> RunStats:
    for line in stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["arena_bytes"]:
            kv = dict(zip(parts[::2], parts[1::2]))
            return RunStats(int(kv["arena_bytes"]), int(kv["arena_used"]), int(kv["stack_used"]), int(kv["windows"]))
    raise ExportError(f"the firmware printed no arena/stack report: {stdout.strip()[-300:]!r}")


def _sizes(manifest: Manifest) -> tuple[int, int, int]:
    inp = int(np.prod(manifest.inputs[0].shape))
    emb = int(np.prod(manifest.output("embedding").shape))
    return inp, emb, int(np.prod(manifest.output("logits").shape))


def run_windows(fw: Firmware, manifest: Manifest, windows: np.ndarray,
                toolchain: Toolchain | None = None) -> WindowsRun:
    """Run the model alone on int8 windows ``(N, frames, mels)`` (already quantized) under qemu-arm."""
    tools = toolchain or find_toolchain()
    inp, emb, n_log = _sizes(manifest)
    x = np.ascontiguousarray(windows, dtype=np.int8).reshape(-1, inp)
    with tempfile.TemporaryDirectory(prefix="acula-fw-") as tmp:
        src, dst = Path(tmp) / "in.i8", Path(tmp) / "out.i8"
        x.tofile(src)
        stats = _stats(_run(fw, ["windows", str(src), str(dst)], tools))
        out = np.fromfile(dst, dtype=np.int8).reshape(-1, emb + n_log)
    if out.shape[0] != x.shape[0]:
        raise ExportError(f"the firmware returned {out.shape[0]} windows for {x.shape[0]}")
    return WindowsRun(out[:, :emb].copy(), out[:, emb:].copy(), stats)


def run_audio(fw: Firmware, manifest: Manifest, pcm: np.ndarray, block: int | None = None,
              toolchain: Toolchain | None = None) -> AudioRun:
    """Run the app on 16-bit PCM at the model's rate (``block`` samples per push; default one model hop)."""
    tools = toolchain or find_toolchain()
    _, emb, n_log = _sizes(manifest)
    n_lab = len(manifest.labels)
    x = np.ascontiguousarray(pcm)
    if x.dtype != np.int16 or x.ndim != 1:
        raise ExportError(f"run_audio takes mono int16 PCM, got {x.dtype} of shape {x.shape}")
    record = np.dtype([("embedding", np.int8, (emb,)), ("logits", np.int8, (n_log,)), ("p", "<f4", (n_lab,))])
    with tempfile.TemporaryDirectory(prefix="acula-fw-") as tmp:
        src, dst = Path(tmp) / "in.s16", Path(tmp) / "out.bin"
        x.astype("<i2").tofile(src)
        stdout = _run(fw, ["audio", str(src), str(dst), *([str(block)] if block else [])], tools)
        rows = np.fromfile(dst, dtype=record)
    decision_line = next((ln.split() for ln in stdout.splitlines() if ln.startswith("decision")), None)
    if decision_line is None:
        raise ExportError(f"the firmware printed no decision: {stdout.strip()[-300:]!r}")
    decision = int(decision_line[1])
    mean = np.asarray([float(v) for v in decision_line[2:]], dtype=np.float32)
    return AudioRun(rows["embedding"].copy(), rows["logits"].copy(), rows["p"].astype(np.float32), decision, mean,
                    _stats(stdout))


def count_instructions(fw: Firmware, args: Sequence[str], toolchain: Toolchain | None = None) -> int:
    """Guest instructions executed by one run of the firmware with ``args`` (the whole run, start-up included)."""
    tools = toolchain or find_toolchain()
    with tempfile.TemporaryDirectory(prefix="acula-fw-insn-") as tmp:
        fifo = Path(tmp) / "exec.log"
        os.mkfifo(fifo)
        # QEMU names the function of every logged block by searching the ELF's symbols: 5x slower than the rest
        # of the run. A stripped copy (same code) has no symbols to search.
        stripped = Path(tmp) / "acula_fw.elf"
        subprocess.run([tools.gcc[:-len("gcc")] + "strip", "-o", str(stripped), str(fw.elf)], check=True)
        proc = subprocess.Popen(_qemu_cmd(fw, args, tools, log=str(fifo), elf=stripped), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        counted: list[int] = []

        def count() -> None:
            n = 0
            with open(fifo, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    n += chunk.count(b"\n")  # every line of this log is one "Trace ..." line
            counted.append(n)

        reader = threading.Thread(target=count, daemon=True)
        reader.start()
        try:
            out, err = proc.communicate(timeout=QEMU_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            proc.kill()
            raise ExportError(f"{fw.elf}: the instruction count run took longer than {QEMU_TIMEOUT_S} s") from e
        finally:
            if reader.is_alive() and proc.poll() is not None:  # qemu never opened the log: unblock the reader
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass
            reader.join(timeout=60)
    if proc.returncode != 0 or b"error:" in out:
        raise ExportError(f"{fw.elf} {' '.join(args)} failed under qemu-arm (exit {proc.returncode}): "
                          f"{(out + err).decode(errors='replace').strip()[-500:]}")
    if not counted:
        raise ExportError(f"{fw.elf}: the instruction log could not be read")
    return counted[0]
