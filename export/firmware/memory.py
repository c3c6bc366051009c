"""Flash and RAM of a linked firmware ELF, split into parts with the linker's map file.

Flash holds every allocated read-only section plus the initial values of ``.data`` (reported as one part);
RAM holds ``.data`` and
``.bss`` (static memory) plus the stack, which no static tool can size: the harness measures its deepest use on the
target (``RunStats.stack_used``) and :func:`firmware_memory` adds it when given. Each input section of the map is
attributed to a part by the object it came from:

- ``model``: ``model_data.o`` (the model array, labels);
- ``front-end tables`` / ``front-end code``: read-only data / code of ``acula_frontend.o``;
- ``TFLM`` / ``CMSIS-NN``: members of ``libtensorflow-microlite.a`` (CMSIS-NN's are the ``arm_*.o`` ones), and
  the reference kernels the Makefile compiles for REFERENCE_KERNELS (``reference_*.o``);
- ``app``: ``acula_app.o`` and ``acula_model.o``; ``harness``: ``acula_fw_main.o`` (file I/O, not firmware);
- ``C/C++ runtime``: newlib, libgcc, libstdc++, semihosting (rdimon) and start-up objects;
- in RAM: ``tensor arena``, ``window buffer`` (the app's float frames and int8 model input), ``front-end state``,
  ``interpreter`` (the TFLM interpreter and op resolver objects), ``harness buffers`` (file I/O buffers of the test
  harness) and ``other static data`` (newlib, TFLM globals).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from acula_edge.errors import ExportError

from .emulate import Firmware
from .toolchain import Toolchain, find_toolchain

FLASH_PARTS = ("model", "front-end tables", "front-end code", "TFLM", "CMSIS-NN", "app", "harness", "C/C++ runtime",
               ".data initial values")
RAM_PARTS = ("tensor arena", "window buffer", "front-end state", "interpreter", "harness buffers", "other static data",
             "stack (measured)")
_HEX = r"0x[0-9a-fA-F]+"
_SECTION_LINE = re.compile(rf"^\s+(?:(\S+)\s+)?({_HEX})\s+({_HEX})\s+(.+?)\s*$")


@dataclass(frozen=True)
class OutputSection:
    name: str
    size: int
    writable: bool
    nobits: bool  # .bss-like: takes RAM, not flash


@dataclass
class FirmwareMemory:
    """Bytes per part (see the module docstring) and totals; ``stack`` is 0 until a measured depth is given."""

    flash: dict[str, int] = field(default_factory=dict)
    ram: dict[str, int] = field(default_factory=dict)
    sections: list[OutputSection] = field(default_factory=list)

    @property
    def flash_total(self) -> int:
        return sum(self.flash.values())

    @property
    def ram_total(self) -> int:
        return sum(self.ram.values())


def output_sections(elf: Path, size_tool: str) -> list[OutputSection]:
    """Allocated sections of ``elf`` (``readelf -S``: name, size, flags)."""
    readelf = size_tool[:-len("size")] + "readelf"
    try:
        text = subprocess.run([readelf, "-S", "-W", str(elf)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ExportError(f"cannot read the sections of {elf} with {readelf}: {e}") from e
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+\S+\s+(\S*)", line)
        if m is None:
            continue
        name, kind, _addr, _off, size, flags = m.groups()
        if "A" not in flags:
            continue
        out.append(OutputSection(name, int(size, 16), "W" in flags, kind == "NOBITS"))
    return out


def _part(source: str, section: str, writable: bool) -> str:
    obj = Path(source.split("(")[-1].rstrip(")")).name if "(" in source else Path(source).name
    if writable:
        if "tensor_arena" in section:
            return "tensor arena"
        if obj == "acula_app.o" and re.search(r"\.(window|model_input|mean|result)$", section):
            return "window buffer"
        if obj == "acula_app.o" and section.endswith(".frontend"):
            return "front-end state"
        if obj == "acula_model.o":
            return "interpreter"
        if obj == "acula_fw_main.o":
            return "harness buffers"
        return "other static data"
    if obj == "model_data.o":
        return "model"
    if obj == "acula_frontend.o":
        return "front-end code" if section.startswith(".text") else "front-end tables"
    if "libtensorflow-microlite.a" in source:
        return "CMSIS-NN" if obj.startswith("arm_") else "TFLM"
    if obj.startswith("reference_"):  # TFLM reference kernels built by the Makefile's REFERENCE_KERNELS
        return "TFLM"
    if obj in ("acula_app.o", "acula_model.o"):
        return "app"
    if obj == "acula_fw_main.o":
        return "harness"
    return "C/C++ runtime"


def parse_map(map_file: Path, sections: list[OutputSection]) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes per flash part and per RAM part from the link map's input sections.

    Merged string sections (``.str1.1``) overlap in the map (several input sections at one address after
    merging), so the bytes counted are the union of the address ranges, each byte given to the first input section
    that covers it; the linker's fill between sections is left out (see :func:`firmware_memory`).
    """
    by_name = {s.name: s for s in sections}
    entries: dict[str, list[tuple[int, int, str]]] = {}  # output section -> (address, size, part)
    current: OutputSection | None = None
    pending = None  # an input section name whose address, size and file are on the next line
    in_map = False
    for line in map_file.read_text(errors="replace").splitlines():
        if line.startswith("Linker script and memory map"):
            in_map = True
            continue
        if not in_map:
            continue
        if line and not line[0].isspace():
            current = by_name.get(line.split()[0])
            pending = None
            continue
        if current is None:
            continue
        m = _SECTION_LINE.match(line)
        if m is None:
            toks = line.split()
            pending = toks[0] if len(toks) == 1 and not toks[0].startswith(("*", "0x")) else None
            continue
        name, addr, size_hex, rest = m.groups()
        name = name or pending
        pending = None
        size = int(size_hex, 16)
        if name is None or size == 0 or name.startswith("*") or "(" in name or name.startswith("0x"):
            continue  # *fill*, symbol assignments, linker-script lines
        rest = rest.strip()
        if rest.startswith(("0x", "*")) or " " in rest and not rest.endswith(")"):
            continue
        entries.setdefault(current.name, []).append((int(addr, 16), size, _part(rest, name, current.writable)))
    flash = dict.fromkeys(FLASH_PARTS, 0)
    ram = dict.fromkeys(RAM_PARTS[:-1], 0)
    for sec_name, items in entries.items():
        sec = by_name[sec_name]
        covered = 0
        for addr, size, part in sorted(items, key=lambda e: (e[0], -e[1])):
            n = max(0, addr + size - max(addr, covered))
            covered = max(covered, addr + size)
            if sec.writable:
                ram[part] += n
            else:
                flash[part] += n
    return flash, ram


def firmware_memory(fw: Firmware, toolchain: Toolchain | None = None, stack_used: int | None = None
                    ) -> FirmwareMemory:
    """Flash and RAM of ``fw`` by part; ``stack_used`` (bytes, measured by a run) is added to RAM when given.

    The parts add up to the allocated sections' sizes minus the linker's padding between input sections, which
    is reported under "C/C++ runtime" (flash) and "other static data" (RAM) so the totals equal the ELF's.
    """
    tools = toolchain or find_toolchain()
    sections = output_sections(fw.elf, tools.size)
    flash, ram = parse_map(fw.map, sections)
    # .data's initial values sit in flash too (copied to RAM at start-up); the rest is the linker's padding
    flash[".data initial values"] = sum(s.size for s in sections if s.writable and not s.nobits)
    flash_elf = sum(s.size for s in sections if not s.nobits)
    ram_elf = sum(s.size for s in sections if s.writable)
    flash["C/C++ runtime"] += flash_elf - sum(flash.values())
    ram["other static data"] += ram_elf - sum(ram.values())
    if stack_used is not None:
        ram["stack (measured)"] = int(stack_used)
    return FirmwareMemory(flash, ram, sections)


def format_memory(mem: FirmwareMemory, flash_budget: int | None = None, ram_budget: int | None = None) -> str:
    """A readable two-column summary (bytes and KiB per part, totals, budgets when given)."""
    lines = []
    for title, parts, total, budget in (("flash", mem.flash, mem.flash_total, flash_budget),
                                        ("RAM", mem.ram, mem.ram_total, ram_budget)):
        lines.append(f"{title}: {total:,} B ({total / 1024:.1f} KiB)"
                     + (f" of {budget / 1024:.0f} KiB" if budget else ""))
        for name, n in parts.items():
            lines.append(f"  {name:<20} {n:>9,} B")
    if "stack (measured)" not in mem.ram:
        lines.append("  (RAM without the stack: run the firmware to measure it)")
    return "\n".join(lines)
