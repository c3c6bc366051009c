"""The Cortex-M toolchain and TensorFlow Lite Micro tree that firmware projects build against.

- :func:`find_toolchain`: ``arm-none-eabi-gcc`` / ``-size`` and a ``qemu-arm`` that runs Cortex-M binaries
  (QEMU >= 8: Debian 12's own 7.2 aborts on any Cortex-M binary; Debian's bookworm-backports has 10.0).
- :func:`extract_kit`: an offline TFLM kit tarball (TFLM + CMSIS-NN + dependencies laid out for TFLM's Makefile),
  extracted once into a cache folder named by the tarball's sha256, outside any checkout.
- :func:`build_library`: TFLM's ``microlite`` library for ``TARGET=cortex_m_qemu``, one per architecture and kernel
  set, built once and then reused (a stamp file records the flags and the compiler).

The cache is ``$ACULA_CACHE_DIR`` or ``~/.cache/acula-edge``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from acula_edge.errors import ExportError

KERNELS = ("cmsis_nn", "reference")  # OPTIMIZED_KERNEL_DIR=cmsis_nn, or TFLM's reference kernels
ARCHS = ("cortex-m4", "cortex-m7", "cortex-m55")  # what the kit's cortex_m_qemu target was checked for
MIN_QEMU = (8, 0)  # 7.2 aborts at load time on Cortex-M ("page_set_flags: Assertion ... GUEST_ADDR_MAX")
KIT_TOP = "tflm-cortex-m-kit"  # top folder inside the kit tarball
TFLM_MAKEFILE = "tensorflow/lite/micro/tools/make/Makefile"
# The kit's documented links to the system's arm-none-eabi tools: TFLM's makefile puts this folder first on PATH and
# skips its own toolchain download when it exists (the kit README). The only absolute links a kit may hold.
TOOLCHAIN_LINK_DIR = "/tensorflow/lite/micro/tools/make/downloads/gcc_embedded/bin/"
TOOLCHAIN_LINK_TARGET = re.compile(r"/usr/bin/arm-none-eabi-[\w.+-]+")
INSTALL_HINT = ("on Debian 12: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
                "libstdc++-arm-none-eabi-newlib, and qemu-user from bookworm-backports "
                "(apt-get install -t bookworm-backports qemu-user)")


@dataclass(frozen=True)
class Toolchain:
    """Absolute paths of the cross tools and the emulator, and the emulator's version."""

    gcc: str
    size: str
    qemu: str
    qemu_version: tuple[int, ...]


def cache_dir() -> Path:
    """Where kits and built libraries are kept: ``$ACULA_CACHE_DIR`` or ``~/.cache/acula-edge``."""
    return Path(os.environ.get("ACULA_CACHE_DIR") or Path.home() / ".cache" / "acula-edge")


def qemu_version(qemu: str) -> tuple[int, ...]:
    """``qemu-arm --version`` as a tuple of ints, e.g. (10, 0, 2)."""
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ExportError(f"cannot run {qemu} --version: {e}") from e
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    if m is None:
        raise ExportError(f"cannot read the QEMU version from `{qemu} --version`: {out.strip()[:200]!r}")
    return tuple(int(g) for g in m.groups() if g is not None)


def find_toolchain(prefix: str = "arm-none-eabi-", qemu: str = "qemu-arm") -> Toolchain:
    """The cross compiler, ``size`` and a Cortex-M capable ``qemu-arm``; ExportError naming what is missing."""
    found = {name: shutil.which(name) for name in (f"{prefix}gcc", f"{prefix}g++", f"{prefix}size", qemu)}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise ExportError(f"{', '.join(missing)} not found on PATH; {INSTALL_HINT}")
    version = qemu_version(found[qemu])
    if version[:2] < MIN_QEMU:
        raise ExportError(f"{found[qemu]} is QEMU {'.'.join(map(str, version))}, which aborts on Cortex-M binaries; "
                          f"QEMU >= {MIN_QEMU[0]} is needed: {INSTALL_HINT}")
    return Toolchain(found[f"{prefix}gcc"], found[f"{prefix}size"], found[qemu], version)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def kit_member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter (no absolute or escaping paths, no device files, safe modes), which lets through only
    one kind of absolute link: the kit's links from ``gcc_embedded/bin/`` to the system's ``/usr/bin/arm-none-eabi-*``
    tools. The member itself is still checked by the data filter (its name must stay inside ``dest``)."""
    if (member.issym() and TOOLCHAIN_LINK_DIR in f"/{member.name}"
            and TOOLCHAIN_LINK_TARGET.fullmatch(member.linkname)):
        checked = tarfile.data_filter(member.replace(linkname=os.path.basename(member.linkname), deep=False), dest)
        return checked.replace(linkname=member.linkname, deep=False)
    return tarfile.data_filter(member, dest)


def extract_kit(tarball: str | Path) -> Path:
    """The ``tflite-micro`` folder of the kit ``tarball``, extracted (once) into the cache; returns its path.

    Extraction goes to a temporary folder beside the final one and is renamed into place, so an interrupted run
    never leaves a half kit behind. Raises ExportError if the tarball is missing or not a TFLM kit.
    """
    tar = Path(tarball)
    if not tar.is_file():
        raise ExportError(f"TFLM kit {tar} not found; pass the path of tflm-cortex-m-kit.tar.xz")
    digest = file_sha256(tar)
    root = cache_dir() / f"tflm-kit-{digest[:12]}"
    tflm = root / KIT_TOP / "tflite-micro"
    if (tflm / TFLM_MAKEFILE).is_file():
        return tflm
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter=kit_member_filter)
        if not (tmp / KIT_TOP / "tflite-micro" / TFLM_MAKEFILE).is_file():
            raise ExportError(f"{tar} is not a TFLM kit: {KIT_TOP}/tflite-micro/{TFLM_MAKEFILE} is not inside")
        if root.exists():  # a half-extracted folder from an older version of this function
            raise ExportError(f"{root} exists but holds no {KIT_TOP}/tflite-micro; remove it and retry")
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tflm


def gen_dir(tflm: Path, arch: str, kernels: str) -> Path:
    """TFLM's output folder for ``TARGET=cortex_m_qemu`` with this architecture and kernel set."""
    suffix = "" if kernels == "reference" else f"_{kernels}"
    return Path(tflm) / "gen" / f"cortex_m_qemu_{arch}_default{suffix}_gcc"


def library_path(tflm: Path, arch: str, kernels: str) -> Path:
    return gen_dir(tflm, arch, kernels) / "lib" / "libtensorflow-microlite.a"


def make_args(arch: str, kernels: str) -> list[str]:
    """The TFLM make variables of a build (also what the firmware Makefile takes)."""
    if arch not in ARCHS:
        raise ExportError(f"unknown Cortex-M architecture {arch!r}; choose one of {ARCHS}")
    if kernels not in KERNELS:
        raise ExportError(f"unknown kernel set {kernels!r}; choose one of {KERNELS}")
    return [f"TARGET_ARCH={arch}", f"OPTIMIZED_KERNEL_DIR={'' if kernels == 'reference' else kernels}"]


def build_library(tflm: str | Path, arch: str = "cortex-m4", kernels: str = "cmsis_nn", jobs: int = 2,
                  toolchain: Toolchain | None = None, log: str | Path | None = None) -> Path:
    """TFLM's ``libtensorflow-microlite.a`` for ``arch`` / ``kernels``, built now unless a matching build exists.

    A stamp beside the library records the make variables and the compiler version; a build with the same stamp is
    reused. Builds hold a lock, so concurrent callers wait instead of building twice. TFLM's Makefile runs Python
    scripts that import numpy and PIL: this interpreter's folder is put first on PATH. ``log`` receives make's
    output (default: a file next to the library). Raises ExportError with the log's tail if make fails.
    """
    tflm = Path(tflm)
    tools = toolchain or find_toolchain()
    args = ["TARGET=cortex_m_qemu", *make_args(arch, kernels)]
    lib = library_path(tflm, arch, kernels)
    gcc_version = subprocess.run([tools.gcc, "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    stamp_text = " ".join(args) + f" gcc {gcc_version}\n"
    stamp = lib.parent / ".acula-built"
    lib.parent.mkdir(parents=True, exist_ok=True)
    with open(lib.parent / ".acula-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.is_file() and stamp.is_file() and stamp.read_text() == stamp_text:
            return lib
        log_path = Path(log) if log else lib.parent / "build.log"
        env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        with open(log_path, "w") as out:
            proc = subprocess.run(["make", "-f", TFLM_MAKEFILE, *args, f"-j{jobs}", "microlite"], cwd=tflm, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not lib.is_file():
            tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
            raise ExportError(f"building TFLM's microlite library ({' '.join(args)}) failed (exit {proc.returncode});"
                              f" log {log_path}:\n  " + "\n  ".join(tail))
        stamp.write_text(stamp_text)
    return lib
