"""The machine a benchmark ran on: CPU model, cores, OS, Python and runtime versions.

Read from /proc/cpuinfo (Linux, including Raspberry Pi OS), the ``platform`` module and installed package metadata;
nothing is imported to find a version, so a fingerprint never loads a runtime (or torch).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Distributions whose versions matter to a timing: numeric core and every device runtime we can load.
PACKAGES = ("acula-edge", "numpy", "onnxruntime", "ai-edge-litert", "tflite-runtime", "executorch", "tflite-micro",
            "torch")
CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: str | None = None) -> str:
    """A readable CPU name: x86 'model name', a board 'Model' line (Raspberry Pi), or ARM implementer/part ids."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if fields.get(key):
            return fields[key]
    if "CPU part" in fields:
        return f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """SIMD features that change kernel choice (AVX2/AVX-512/VNNI on x86; NEON/dot-product on ARM)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
            break
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd", "asimddp", "i8mm", "sve")
    return sorted(f for f in wanted if f in flags)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` (missing ones are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else every logical core)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fingerprint() -> dict[str, Any]:
    """The machine description stored in every benchmark JSON."""
    usable = usable_cpus()
    try:
        load = [round(v, 2) for v in os.getloadavg()]  # other work on the machine while measuring
    except (AttributeError, OSError):
        load = None
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average": load,  # 1, 5, 15 minutes, at the time of the fingerprint
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": package_versions(),
        "executable": sys.executable,
    }
