"""Write a firmware project for a ``tflm`` bundle: the model, the C front-end and a TFLM application with a Makefile.

    project = write_project("runs/bundles/tflm-int8", "fw/")     # then: make -C fw TFLM_DIR=/path/to/tflite-micro

The folder holds the bundle's ``model_data.{c,h}`` and ``frontend_params.h`` (checked against the manifest's
checksums), the C99 front-end ``acula_frontend.{c,h}``, ``acula_model.{cc,h}`` (the TFLM interpreter with a
``MicroMutableOpResolver`` of only the model's ops; int8 window in, int8 embedding and logits out),
``acula_app.{c,h}`` (audio in, per-window scores and the recording's decision out, called once per hop),
``acula_fw_main.c`` (a harness that runs the app on files under an emulator), a ``Makefile`` that builds them for a
Cortex-M against a TFLM tree given by path, and ``firmware.json`` (what was written, from which bundle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from acula_edge import atomic
from acula_edge.errors import BundleError, ExportError
from acula_edge.export.targets.tflm import FRONTEND_HEADER, HEADER_FILE, SOURCE_FILE
from acula_edge.manifest import Manifest, read_manifest

FIRMWARE_DIR = Path(__file__).resolve().parent
# Sources copied from this package into every project (the front-end, the model and app layers, the harness).
APP_SOURCES = ("acula_frontend.c", "acula_frontend.h", "acula_model.cc", "acula_model.h", "acula_app.c",
               "acula_app.h", "acula_fw_main.c")
MAKEFILE_TEMPLATE = "acula_fw.mk"
DESCRIPTION = "firmware.json"  # marks a folder this module wrote (it may then be overwritten)
BUNDLE_SOURCES = (HEADER_FILE, SOURCE_FILE, FRONTEND_HEADER)
OUTPUT_NAMES = ("embedding", "logits")  # the model contract the app relies on (see acula_edge.manifest)


# TFLite ops whose CMSIS-NN kernel gives wrong results on some of our models -> TFLM kernel file stem of the
# reference kernel the project links instead (why: see the Makefile template's MODEL_REFERENCE_KERNELS)
CMSIS_NN_AVOIDED = {"TRANSPOSE": "transpose"}


def model_reference_kernels(ops: Sequence[str]) -> list[str]:
    """Stems of the reference kernels a project for a model with TFLite ``ops`` links instead of CMSIS-NN's."""
    return sorted({CMSIS_NN_AVOIDED[op] for op in ops if op in CMSIS_NN_AVOIDED})


@dataclass(frozen=True)
class FirmwareProject:
    """A written firmware project: its folder, the bundle it came from and the ops its resolver registers."""

    folder: Path
    bundle: Path
    manifest: Manifest
    ops: tuple[str, ...]  # MicroMutableOpResolver method suffixes (Conv2D, ...)
    files: tuple[str, ...]  # names written into ``folder``


def _check_bundle(bundle: Path, manifest: Manifest) -> None:
    if manifest.target != "tflm":
        raise BundleError(f"{bundle}: a firmware project needs a tflm bundle, this one is {manifest.target!r}; "
                          f"export with `acula-edge export CHECKPOINT --target tflm --quantize int8`")
    specs = [manifest.inputs[0], *manifest.outputs]
    not_int8 = [f"{s.name} ({s.dtype})" for s in specs if s.dtype != "int8"]
    if not_int8:
        raise BundleError(f"{bundle}: the firmware runs full-int8 models, but {', '.join(not_int8)} are not int8; "
                          f"re-export with --quantize int8")
    names = sorted(o.name for o in manifest.outputs)
    if names != sorted(OUTPUT_NAMES):
        raise BundleError(f"{bundle}: the model's outputs are {names}, the firmware expects {list(OUTPUT_NAMES)}")
    for name in BUNDLE_SOURCES:  # read_manifest has checked every file the manifest lists against its sha256
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{path} is missing; re-export the bundle with --target tflm")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; give a new or empty folder, or a firmware project "
                          f"folder written earlier")
    if out.is_dir() and any(out.iterdir()) and not (out / DESCRIPTION).is_file():
        raise ExportError(f"{out} is not empty and was not written by `acula-edge firmware` (no {DESCRIPTION}); "
                          f"give a new or empty folder so no file of yours is overwritten")


def write_project(bundle: str | Path, out: str | Path) -> FirmwareProject:
    """Write the firmware project of the tflm bundle ``bundle`` into ``out`` and return what was written.

    ``out`` must be absent, empty or a project folder written before (its files are then replaced; a ``build/``
    folder inside is left alone). Raises BundleError for a bundle that is not an int8 tflm bundle with intact
    C sources, ExportError for an unusable ``out``.
    """
    src, dst = Path(bundle), Path(out)
    manifest = read_manifest(src)  # verifies the model and every listed file against their checksums
    _check_bundle(src, manifest)
    _check_out(dst)
    ops = tuple(manifest.extra.get("resolver_ops") or ())
    if not ops:
        raise BundleError(f"{src}: the manifest lists no resolver ops (extra.resolver_ops); re-export the bundle")
    dst.mkdir(parents=True, exist_ok=True)
    files = []
    for name in BUNDLE_SOURCES:
        atomic.write_bytes(dst / name, (src / name).read_bytes())
        files.append(name)
    for name in APP_SOURCES:
        atomic.write_bytes(dst / name, (FIRMWARE_DIR / name).read_bytes())
        files.append(name)
    makefile = (FIRMWARE_DIR / MAKEFILE_TEMPLATE).read_text()
    kernels = "".join(f" {k}" for k in model_reference_kernels(manifest.extra.get("ops") or ()))
    atomic.write_bytes(dst / "Makefile", makefile.replace(" @MODEL_REFERENCE_KERNELS@", kernels).encode())
    files.append("Makefile")
    atomic.write_json(dst / DESCRIPTION, {
        "bundle": str(src.resolve()), "model_sha256": manifest.model_sha256, "resolver_ops": list(ops),
        "labels": list(manifest.labels), "threshold": manifest.threshold, "files": sorted(files),
        "build": "make TFLM_DIR=/path/to/tflite-micro [TARGET_ARCH=cortex-m4] [OPTIMIZED_KERNEL_DIR=cmsis_nn] "
                 "[FRONTEND=float|q15]",
    })
    files.append(DESCRIPTION)
    return FirmwareProject(dst, src, manifest, ops, tuple(files))
