"""``acula-edge firmware``: write a Cortex-M firmware project for a tflm bundle, and optionally build it."""

from __future__ import annotations

from pathlib import Path

import click

from .emulate import FRONTENDS
from .toolchain import ARCHS, KERNELS


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Project folder (new, empty, or "
              "written by this command before).")
@click.option("--tflm", type=click.Path(), default=None, help="Also build it: a tflite-micro folder, or a TFLM kit "
              "tarball (extracted once into ~/.cache/acula-edge). TFLM's library is built first if needed.")
@click.option("--arch", type=click.Choice(ARCHS), default="cortex-m4", show_default=True,
              help="Cortex-M core the firmware is compiled for (TFLM TARGET_ARCH).")
@click.option("--kernels", type=click.Choice(KERNELS), default="cmsis_nn", show_default=True,
              help="TFLM kernels: CMSIS-NN, or TFLM's portable reference kernels.")
@click.option("--arithmetic", "frontend", type=click.Choice(FRONTENDS), default="float", show_default=True,
              help="C front-end arithmetic: float32, or fixed point (-DACULA_Q15=1).")
def firmware(bundle: str, out: str, tflm: str | None, arch: str, kernels: str, frontend: str) -> None:
    """Write a firmware project for the tflm BUNDLE: model, C front-end, TFLM app, Makefile.

    With --tflm, build it for the Cortex-M (arm-none-eabi-gcc) and print its flash and RAM, measured from the
    linked ELF and its map file.
    """
    from .project import write_project

    project = write_project(bundle, out)
    click.echo(f"wrote {len(project.files)} files to {project.folder} (ops: {', '.join(project.ops)})")
    if tflm is None:
        click.echo(f"build: make -C {project.folder} TFLM_DIR=/path/to/tflite-micro "
                   f"(see the top of {project.folder / 'Makefile'})")
        return
    from .emulate import build
    from .memory import firmware_memory, format_memory
    from .toolchain import build_library, extract_kit, find_toolchain

    tools = find_toolchain()
    tree = Path(tflm)
    if tree.is_file():
        click.echo(f"extracting the TFLM kit {tree} (once)...")
        tree = extract_kit(tree)
    click.echo(f"TFLM library for {arch} / {kernels} (built once, ~15 min on 2 cores)...")
    build_library(tree, arch, kernels, toolchain=tools)
    fw = build(project.folder, tree, arch, kernels, frontend, toolchain=tools)
    click.echo(f"linked {fw.elf}")
    click.echo(format_memory(firmware_memory(fw, tools)))
