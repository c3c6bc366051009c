"""TFLite Micro: the full-int8 TFLite model, as a file and as C source, with its measured tensor arena.

The bundle holds ``model.tflite`` (the full-int8 conversion of the ``tflite`` target, with int8 input and outputs:
the ``tflite`` bundle wraps the same bytes in a float boundary), ``model_data.h`` /
``model_data.c`` (the model as a 16-byte aligned ``const uint8_t`` array plus the constants firmware needs: input
and output shapes and int8 scale / zero point, labels, threshold, and the ops to register in a
``MicroMutableOpResolver``) and, from :mod:`acula_edge.export.firmware.header`, ``frontend_params.h`` for the C
log-mel front-end.

The arena size is measured, not estimated: the smallest arena with which ``tflite_micro``'s Python interpreter
allocates the model (bisection to ``ARENA_GRANULARITY`` bytes; each probe in a child process, since the
interpreter can crash rather than fail on a far too small arena). The interpreter runs on a 64-bit host, whose
pointers and structs are larger than on a 32-bit MCU, so the figure is an upper bound for Cortex-M; the header adds
``ARENA_MARGIN_BYTES`` on top.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from acula_edge.atomic import write_text
from acula_edge.errors import ExportError
from acula_edge.export.registry import ExportJob, Target, TargetResult
from acula_edge.export.targets import tflite
from acula_edge.export.tolerances import INT8
from acula_edge.manifest import TensorSpec

MODEL_FILE = "model.tflite"
HEADER_FILE = "model_data.h"
SOURCE_FILE = "model_data.c"
FRONTEND_HEADER = "frontend_params.h"
ARENA_GRANULARITY = 16  # bytes; TFLM aligns arena allocations to 16
ARENA_START = 16 * 1024  # first size tried
ARENA_MAX = 256 * 1024 * 1024  # give up above this
ARENA_MARGIN_BYTES = 1024  # added to the measured size in the header (host vs MCU allocator differences)
# The reference MCU class (a Cortex-M4/M7 digital stethoscope): what a firmware student must fit, with
# flash = model + front-end tables and RAM = arena + front-end state + input window, as in extra["memory"].
MCU_FLASH_BYTES = 256 * 1024
MCU_RAM_BYTES = 128 * 1024
ALIGNMENT = 16  # bytes, of the model array (TFLM requires at least 4; 16 suits SIMD loads)
# MicroMutableOpResolver method names that do not follow the CamelCase rule of the builtin op name
_RESOLVER_EXCEPTIONS = {"BATCH_MATMUL": "BatchMatMul", "LOG_SOFTMAX": "LogSoftmax", "L2_POOL_2D": "L2Pool2D"}


def resolver_name(op: str) -> str:
    """TFLite builtin op name -> MicroMutableOpResolver method suffix (CONV_2D -> Conv2D)."""
    if op in _RESOLVER_EXCEPTIONS:
        return _RESOLVER_EXCEPTIONS[op]
    return "".join(part if part[0].isdigit() else part.capitalize() for part in op.split("_"))


def interpreter(path: Path, arena_size: int) -> Any:
    """A TFLite Micro Python interpreter for ``path`` with an arena of ``arena_size`` bytes (RuntimeError if the
    arena is too small or an op is missing)."""
    from acula_edge.errors import require

    runtime = require("tflite_micro.python.tflite_micro.runtime", "export", "measuring a TFLite Micro arena")
    return runtime.Interpreter.from_file(str(path), arena_size=int(arena_size))


# The arena search runs in a child process: TFLite Micro's Python interpreter can crash (SIGSEGV) instead of raising
# when the arena is far too small (seen: `small`'s all-int8 model at 16 KiB, "Failed to allocate tail memory" then
# SIGSEGV), and a crash must not take the exporter down with it. One child runs the whole search (a child per probe
# cost ~1 s each, mostly its imports); it prints "try N" before and "ok N" / "small N" after each probe, so after a
# crash the parent knows which size crashed, counts it as too small and starts a new child from the bounds so far.
_SEARCH = ("import sys\n"
           "from acula_edge.export.targets.tflm import search_arena\n"
           "search_arena(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))\n")


def _probe(path: str, arena: int) -> bool:
    print(f"try {arena}", flush=True)
    try:
        interpreter(Path(path), arena)
    except RuntimeError:
        print(f"small {arena}", flush=True)
        return False
    print(f"ok {arena}", flush=True)
    return True


def search_arena(path: str, lo: int, hi: int) -> None:
    """The search, in the child: ``lo`` is known too small (0: none yet), ``hi`` known to allocate (0: none yet).
    Doubles from ARENA_START until a size allocates, then bisects to ARENA_GRANULARITY."""
    if hi == 0:
        if lo == 0 and not _probe(path, ARENA_MAX):
            print(f"unsupported {ARENA_MAX}", flush=True)
            return
        size = max(ARENA_START, 2 * lo)
        while size < ARENA_MAX and not _probe(path, size):
            size *= 2
        hi = min(size, ARENA_MAX)
    while hi - lo > ARENA_GRANULARITY:
        mid = (lo + hi) // 2 // ARENA_GRANULARITY * ARENA_GRANULARITY
        if mid <= lo:
            break
        if _probe(path, mid):
            hi = mid
        else:
            lo = mid
    print(f"done {hi}", flush=True)


def measure_arena(path: Path) -> int:
    """Smallest arena (bytes, a multiple of ARENA_GRANULARITY) with which TFLM allocates the model at ``path``."""
    lo = hi = 0
    for _ in range(64):  # each restart follows a crash, which moves ``lo`` up: the search always ends
        proc = subprocess.run([sys.executable, "-c", _SEARCH, str(path), str(lo), str(hi)], capture_output=True,
                              text=True)
        tried = None
        for line in proc.stdout.splitlines():
            word, _, value = line.partition(" ")
            if word == "try":
                tried = int(value)
            elif word == "ok":
                hi, tried = int(value), None
            elif word == "small":
                lo, tried = max(lo, int(value)), None
            elif word == "done":
                return int(value)
            elif word == "unsupported":
                lines = [x for x in proc.stderr.splitlines() if x.strip()][-5:]
                raise ExportError(f"TFLite Micro cannot load the model even with a {ARENA_MAX}-byte arena (an op "
                                  f"TFLM does not implement?): " + " | ".join(lines))
        if proc.returncode < 0 and tried is not None:  # killed by a signal while probing ``tried``: too small
            lo = max(lo, tried)
            continue
        raise ExportError(f"the TFLite Micro arena search failed (exit {proc.returncode}): "
                          + " | ".join(proc.stderr.strip().splitlines()[-5:]))
    raise ExportError(f"the TFLite Micro arena search crashed 64 times on {path}; giving up")


def _c_string(text: str) -> str:
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        out.append(ch if 32 <= b < 127 and ch not in '"\\?' else f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _c_float(v: float) -> str:
    return f"{float(v)!r}f" if np.isfinite(v) else "0.0f"


def _macro(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def render_header(data_len: int, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                  labels: tuple[str, ...], threshold: float, ops: list[str], arena: int, measured: int) -> str:
    """``model_data.h``: sizes, I/O quantization, labels, op list and arena size for the firmware."""
    x = inputs[0]
    lines = [
        "/* Generated by `acula-edge export --target tflm`; do not edit. The int8 model as C data and the constants",
        " * firmware needs around TensorFlow Lite Micro:",
        " *   - register the ops:  #define ADD_OP(name) resolver.Add##name();  ACULA_MODEL_OPS(ADD_OP)",
        " *     with tflite::MicroMutableOpResolver<ACULA_MODEL_NUM_OPS> resolver;",
        " *   - arena: alignas(16) static uint8_t arena[ACULA_MODEL_ARENA_BYTES];",
        " *   - input: q = clamp(round(x / ACULA_MODEL_INPUT_SCALE) + ACULA_MODEL_INPUT_ZERO_POINT, -128, 127),",
        " *     x = one window of log-mel frames (frames x mels, row-major, as in frontend_params.h);",
        " *   - outputs: real = scale * (q - zero_point); output index k as below. */",
        "#ifndef ACULA_MODEL_DATA_H",
        "#define ACULA_MODEL_DATA_H",
        "",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define ACULA_MODEL_BYTES {data_len}u",
        f"#define ACULA_MODEL_ALIGNMENT {ALIGNMENT}",
        f"/* measured: smallest arena tflite_micro's Python interpreter (64-bit host) allocates = {measured} bytes,",
        f" * plus a {ARENA_MARGIN_BYTES}-byte margin */",
        f"#define ACULA_MODEL_ARENA_BYTES {arena}u",
        "",
        f"#define ACULA_MODEL_INPUT_RANK {len(x.shape)}",
        f"#define ACULA_MODEL_INPUT_SHAPE {{{', '.join(str(s) for s in x.shape)}}}",
        f"#define ACULA_MODEL_INPUT_FRAMES {x.shape[-2]}",
        f"#define ACULA_MODEL_INPUT_MELS {x.shape[-1]}",
        "/* 1: the input tensor is int8 (quantize as above); 0: it is float32 (copy the frames as they are; the",
        " * model quantizes inside, see the bundle manifest's findings) */",
        f"#define ACULA_MODEL_INPUT_INT8 {int(x.dtype == 'int8')}",
        f"#define ACULA_MODEL_INPUT_SCALE {_c_float(x.scale or 0.0)}",
        f"#define ACULA_MODEL_INPUT_ZERO_POINT ({int(x.zero_point or 0)})",
        "",
    ]
    for k, spec in enumerate(outputs):
        m = f"ACULA_MODEL_{_macro(spec.name)}"
        lines += [f"#define {m}_OUTPUT_INDEX {k}",
                  f"#define {m}_INT8 {int(spec.dtype == 'int8')}",
                  f"#define {m}_SIZE {int(np.prod(spec.shape))}",
                  f"#define {m}_SCALE {_c_float(spec.scale or 0.0)}",
                  f"#define {m}_ZERO_POINT ({int(spec.zero_point or 0)})", ""]
    names = sorted({resolver_name(op) for op in ops})
    lines += [
        f"#define ACULA_MODEL_NUM_LABELS {len(labels)}",
        "/* decision threshold on the probability (softmax of logits) of the last label */",
        f"#define ACULA_MODEL_THRESHOLD {_c_float(threshold)}",
        "",
        f"/* TFLite builtin ops used: {', '.join(sorted(set(ops)))} */",
        f"#define ACULA_MODEL_NUM_OPS {len(names)}",
        "#define ACULA_MODEL_OPS(X) " + " ".join(f"X({n})" for n in names),
        "",
        f"extern const uint8_t acula_model_data[{data_len}];",
        "extern const unsigned int acula_model_data_len;",
        "extern const char *const acula_model_labels[ACULA_MODEL_NUM_LABELS];",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        "#endif /* ACULA_MODEL_DATA_H */",
        "",
    ]
    return "\n".join(lines)


def render_source(data: bytes, labels: tuple[str, ...]) -> str:
    """``model_data.c``: the model bytes, aligned, and the label strings."""
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    return "\n".join([
        "/* Generated by `acula-edge export --target tflm`; do not edit. */",
        f'#include "{HEADER_FILE}"',
        "",
        "#if defined(__GNUC__) || defined(__clang__)",
        "#define ACULA_MODEL_ALIGNED __attribute__((aligned(ACULA_MODEL_ALIGNMENT)))",
        "#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L",
        "#define ACULA_MODEL_ALIGNED _Alignas(ACULA_MODEL_ALIGNMENT)",
        "#else",
        '#error "no way to align acula_model_data: use GCC, Clang or a C11 compiler"',
        "#endif",
        "",
        f"ACULA_MODEL_ALIGNED const uint8_t acula_model_data[{len(data)}] = {{",
        *[f"    {row}," for row in rows],
        "};",
        "const unsigned int acula_model_data_len = ACULA_MODEL_BYTES;",
        "",
        "const char *const acula_model_labels[ACULA_MODEL_NUM_LABELS] = {" + ", ".join(_c_string(s) for s in labels)
        + "};",
        "",
    ])


def _frontend_header(job: ExportJob, folder: Path) -> dict[str, Any] | None:
    try:
        from acula_edge.export.firmware.header import write_frontend_header
    except ImportError:  # the C front-end is optional; the model part still works without it
        return None
    return write_frontend_header(job.info.frontend, folder / FRONTEND_HEADER, job.info.windowing)


def export(job: ExportJob, folder: Path) -> TargetResult:
    """Write the int8 model, its C array/header and the front-end header into ``folder``; measure the arena."""
    if job.precision != "int8":
        raise ExportError(f"the tflm target is int8 only (got {job.precision}); use --quantize int8")
    path = folder / MODEL_FILE
    facts = tflite.convert(replace(job, precision="int8"), path)
    desc = tflite.describe(path)
    measured = measure_arena(path)
    arena = measured + ARENA_MARGIN_BYTES
    data = path.read_bytes()
    labels = tuple(job.info.labels)
    write_text(folder / HEADER_FILE, render_header(len(data), desc["inputs"], desc["outputs"], labels,
                                                   job.info.threshold, desc["ops"], arena, measured))
    write_text(folder / SOURCE_FILE, render_source(data, labels))
    files = [HEADER_FILE, SOURCE_FILE]
    extra: dict[str, Any] = {
        "arena_bytes": arena, "arena_bytes_measured": measured,
        "arena_note": "smallest arena tflite_micro's Python interpreter (64-bit host) allocates, + margin",
        "ops": sorted(set(desc["ops"])), "resolver_ops": sorted({resolver_name(o) for o in desc["ops"]}),
        "model_bytes": len(data), "c_files": [HEADER_FILE, SOURCE_FILE],
        "quantization": tflite.QUANTIZATION, **facts,
    }
    frontend = _frontend_header(job, folder)
    if frontend is not None:
        files.append(FRONTEND_HEADER)
        frontend = {k: v for k, v in frontend.items() if k != "path"}
        extra["frontend_memory"] = frontend
        extra["memory"] = {
            "flash_bytes": len(data) + int(frontend["flash_bytes"]),
            "ram_bytes": arena + int(frontend["ram_bytes"]) + int(frontend.get("window_bytes", 0)),
            "note": "flash = model + front-end tables; ram = arena + front-end state + one input window of "
                    "float log-mel frames (code size not included)",
        }
    from importlib.metadata import version

    versions = {**tflite.versions(), "tflite-micro": version("tflite-micro")}
    return TargetResult(MODEL_FILE, desc["inputs"], desc["outputs"], versions, extra,
                        tuple(tflite.findings(desc, "int8")), tuple(files))


_BYTE = re.compile(r"0x([0-9a-fA-F]{2})")


def c_array_bytes(source: str) -> bytes:
    """The bytes of ``acula_model_data`` in a generated ``model_data.c`` (what the firmware will flash)."""
    m = re.search(r"acula_model_data\[(\d+)\]\s*=\s*\{(.*?)\};", source, re.S)
    if m is None:
        raise ExportError(f"no 'acula_model_data[N] = {{...}};' array in {SOURCE_FILE}")
    data = bytes(int(b, 16) for b in _BYTE.findall(m.group(2)))
    if len(data) != int(m.group(1)):
        raise ExportError(f"{SOURCE_FILE}: acula_model_data is declared with {m.group(1)} bytes but lists "
                          f"{len(data)}")
    return data


def check_c_array(folder: Path, manifest: Any) -> list[str]:
    """Problems with the C array of a tflm bundle: it must hold ``model.tflite`` byte for byte (verify runs the
    .tflite file; the firmware flashes the array), and the header must declare its length."""
    source = folder / SOURCE_FILE
    if not source.is_file():
        return [f"{source}: missing"]
    model = (folder / manifest.model_file).read_bytes()
    try:
        data = c_array_bytes(source.read_text(encoding="utf-8"))
    except (ExportError, UnicodeDecodeError) as e:
        return [f"{source}: {e}"]
    problems = []
    if data != model:
        first = next((i for i, (a, b) in enumerate(zip(data, model)) if a != b), min(len(data), len(model)))
        problems.append(f"{source}: the C array differs from {manifest.model_file} (first at byte {first}; "
                        f"{len(data)} vs {len(model)} bytes): the firmware would run another model")
    header = folder / HEADER_FILE
    if header.is_file() and f"#define ACULA_MODEL_BYTES {len(model)}u" not in header.read_text(encoding="utf-8"):
        problems.append(f"{header}: ACULA_MODEL_BYTES is not {len(model)} (the size of {manifest.model_file})")
    return problems


TARGET = Target(name="tflm", precisions=("int8",), export=export, export_cost=1.5, reuses="tflite",
                backend="acula_edge.runtime.tflm_backend:TFLMBackend", extra="export", runtime="tflite_micro",
                model_file=MODEL_FILE, files=(HEADER_FILE, SOURCE_FILE, FRONTEND_HEADER),
                tolerances={"int8": INT8}, check=check_c_array)
