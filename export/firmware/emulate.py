"""Build a firmware project for a Cortex-M and run it under ``qemu-arm`` (user mode, semihosting).

    elf = build(project_dir, tflm_dir, arch="cortex-m4", kernels="cmsis_nn", frontend="float")
    run = run_windows(elf, windows_int8)            # the model alone: (N, frames, mels) int8 -> int8 outputs
    run = run_audio(elf, pcm_int16)                 # the app: audio -> per-window outputs, probabilities, decision
    n = count_instructions(elf, ["windows", ...])   # executed guest instructions of one run

Instructions are counted from QEMU's own logs, read as they are written (through a FIFO, never stored):
``-d in_asm,exec,nochain`` prints each translation block's guest instructions once, when it is translated, and one
line per executed block (no block chaining, so every execution passes through the logged main loop); the count is
the sum of instructions x executions per block (:class:`_TbCounter`). The slower per-instruction log
(``-one-insn-per-tb -d nochain,exec``, one line per executed instruction) is kept as its cross-check
(``per_instruction=True``): both give the same count to the instruction. The Debian QEMU is built without TCG
plugin support (no ``-plugin``), so libinsn is not available.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import threading
from collections import Counter
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
PIPE_BYTES = 1 << 20  # the instruction log's FIFO (Linux's default limit for a user)
# C library -> the Makefile's SPECS (gcc --specs=...): newlib as TFLM's cortex_m_qemu target links it, or
# newlib-nano, as firmware usually does; both with semihosting (rdimon) for the emulator's file I/O
LIBCS = {"newlib": "rdimon.specs", "nano": "nano.specs --specs=rdimon.specs"}
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
          reference_ops: Sequence[str] = (), libc: str = "newlib") -> Firmware:
    """``make`` the project in ``project`` against the TFLM tree ``tflm`` (library already built); returns the ELF.

    ``reference_ops``: TFLite ops (e.g. the model's) whose reference kernels replace the library's optimized ones
    (the Makefile's REFERENCE_KERNELS). ``libc``: one of LIBCS ("nano": newlib-nano's smaller stdio and malloc,
    whose printf has no floating point; the harness then prints probabilities as blanks, so use it for memory and
    the model alone). Builds into ``project/build/<arch>-<kernels>-<frontend>[-nano]/``. Raises ExportError with
    the compiler's message.
    """
    if frontend not in FRONTENDS:
        raise ExportError(f"unknown front-end build {frontend!r}; choose one of {FRONTENDS}")
    if libc not in LIBCS:
        raise ExportError(f"unknown C library {libc!r}; choose one of {tuple(LIBCS)}")
    tools = toolchain or find_toolchain()
    prefix = tools.gcc[:-len("gcc")]
    folder = Path(project)
    stems = reference_kernels(reference_ops)
    label = f"{kernels}+reference-ops" if stems else kernels
    build_dir = Path("build") / f"{arch}-{label}-{frontend}{'' if libc == 'newlib' else '-' + libc}"
    cmd = ["make", f"-j{jobs}", f"TFLM_DIR={Path(tflm).resolve()}", *make_args(arch, kernels), f"FRONTEND={frontend}",
           f"CROSS={prefix}", f"BUILD={build_dir}", f"REFERENCE_KERNELS={' '.join(stems)}", f"SPECS={LIBCS[libc]}"]
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
    _check_exit(fw, args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def _check_exit(fw: Firmware, args: Sequence[str], code: int, stdout: str, stderr: str) -> None:
    """ExportError unless the run exited 0 with no error line and nothing on stderr: TFLM reports kernel errors
    there (its DebugLog), some of which do not fail Invoke() (a kernel that returns without writing its output)."""
    if code != 0 or "error:" in stdout or stderr.strip():
        raise ExportError(f"{fw.elf} {' '.join(args)} failed under qemu-arm (exit {code}): "
                          f"{(stdout + stderr).strip()[-500:]}")


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


class _TbCounter:
    """Executed guest instructions from QEMU's ``-d in_asm,exec,nochain`` log, fed in chunks as it is written.

    The log has one ``in_asm`` block per translation (``----------------``, ``IN: sym``, one ``0x<pc>: ...`` line per
    guest instruction, a blank line) and one ``Trace <cpu>: <host code> [<cs_base>/<pc>/<flags>/<cflags>] sym``
    line per executed block (``nochain``: every block returns to QEMU's main loop, so every execution is logged). A
    block is executed right after it is translated, so the first ``Trace`` line after an ``IN`` block with the same
    guest pc names the host code of that translation: host code -> instructions. A re-translation into host code
    that held another block (after a code-buffer flush) replaces the entry; executions counted before are settled
    with the old one first. ``Stopped execution of TB chain before <host code>`` means that block was entered but
    exited before its first instruction (an exit request): its instructions are taken off again.

    Chunks made only of ``Trace`` lines (nearly all of a long run) are tallied by C code (``Counter``), not by Python
    line by line, and settled later with the host code -> instructions map of their time.
    """

    def __init__(self) -> None:
        self.sizes: dict[bytes, int] = {}  # host code address -> guest instructions of that block
        self.pending: tuple[int, int] | None = None  # (guest pc, instructions) of the last translation
        self.block: list[int] | None = None  # [guest pc, instructions] of the in_asm block being read
        self.tally: Counter[bytes] = Counter()  # Trace line -> executions, not yet settled
        self.total = 0
        self.blocks = 0  # executed blocks
        self.tail = b""

    def _size(self, host: bytes, line: bytes) -> int:
        if host not in self.sizes:
            raise ExportError(f"qemu-arm's log executes a block at {host.decode(errors='replace')} "
                              f"({line.strip()[-60:].decode(errors='replace')}) it never translated; the instruction "
                              "count would be wrong")
        return self.sizes[host]

    def _settle(self) -> None:
        for line, n in self.tally.items():
            self.total += n * self._size(line.split(b" ", 3)[2], line)
            self.blocks += n
        self.tally.clear()

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk
        end = data.rfind(b"\n") + 1
        self.tail, data = data[end:], data[:end]
        if not data:
            return
        if self.block is None and self.pending is None and data.count(b"Trace ") == data.count(b"\n"):
            self.tally.update(data.split(b"\n")[:-1])
            return
        for line in data.split(b"\n")[:-1]:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if line.startswith(b"Trace "):
            parts = line.split(b" ", 4)
            host, pc = parts[2], int(parts[3][1:].split(b"/")[1], 16)
            if self.pending is not None and self.pending[0] == pc:
                if self.sizes.get(host, self.pending[1]) != self.pending[1]:
                    self._settle()  # host code reused for another block: settle with the old size first
                self.sizes[host] = self.pending[1]
                self.pending = None
            self.total += self._size(host, line)
            self.blocks += 1
        elif self.block is not None:
            if line.startswith(b"0x"):
                if self.block[1] == 0:
                    self.block[0] = int(line.split(b":", 1)[0], 16)
                self.block[1] += 1
            elif not line.strip():
                self.pending, self.block = (self.block[0], self.block[1]), None
            elif not line.startswith(b"IN:"):
                raise ExportError(f"unexpected line in qemu-arm's in_asm log: {line[:120]!r}")
        elif line.startswith(b"----------------"):
            self.block = [0, 0]
        elif line.startswith(b"Stopped execution of TB chain before "):
            host = line.split(b" ", 7)[6]
            self._settle()
            self.total -= self._size(host, line)
            self.blocks -= 1
        elif line.strip():
            raise ExportError(f"unexpected line in qemu-arm's execution log: {line[:120]!r}")

    def finish(self) -> int:
        if self.tail.strip():
            self._line(self.tail)
        self._settle()
        return self.total


def count_instructions(fw: Firmware, args: Sequence[str], toolchain: Toolchain | None = None,
                       per_instruction: bool = False) -> int:
    """Guest instructions executed by one run of the firmware with ``args`` (the whole run, start-up included).

    Counted per translation block (``-d in_asm,exec,nochain``, see :class:`_TbCounter`). ``per_instruction=True``
    counts the slow, independent way instead: ``-one-insn-per-tb -d nochain,exec``, one log line per executed
    instruction (a cross-check; ~10x slower).
    """
    tools = toolchain or find_toolchain()
    with tempfile.TemporaryDirectory(prefix="acula-fw-insn-") as tmp:
        fifo = Path(tmp) / "exec.log"
        os.mkfifo(fifo)
        # QEMU names the function of every logged block by searching the ELF's symbols: 5x slower than the rest
        # of the run. A stripped copy (same code) has no symbols to search.
        stripped = Path(tmp) / "acula_fw.elf"
        subprocess.run([tools.gcc[:-len("gcc")] + "strip", "-o", str(stripped), str(fw.elf)], check=True)
        flags = ["-one-insn-per-tb", "-d", "nochain,exec"] if per_instruction else ["-d", "in_asm,exec,nochain"]
        cmd = [tools.qemu, "-cpu", fw.arch, *flags, "-D", str(fifo), str(stripped), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        counted: list[int] = []
        failed: list[BaseException] = []

        def count() -> None:
            try:
                tb, n, tail = _TbCounter(), 0, b""
                with open(fifo, "rb") as f:
                    try:  # a larger pipe: fewer context switches between QEMU's writes and this reader
                        fcntl.fcntl(f.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
                    except OSError:
                        pass
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        if per_instruction:  # one Trace line per executed instruction; whole lines only
                            data = tail + chunk
                            end = data.rfind(b"\n") + 1
                            tail, data = data[end:], data[:end]
                            # a Stopped line: that Trace's instruction did not run (an exit request)
                            n += data.count(b"\nTrace ") + data.startswith(b"Trace ") - data.count(b"\nStopped ") \
                                - data.startswith(b"Stopped ")
                        else:
                            tb.feed(chunk)
                counted.append(n if per_instruction else tb.finish())
            except BaseException as e:  # reported by the caller's thread
                failed.append(e)

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
            reader.join(timeout=600)
    _check_exit(fw, args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    if failed:
        raise failed[0]
    if not counted:
        raise ExportError(f"{fw.elf}: the instruction log could not be read")
    return counted[0]
