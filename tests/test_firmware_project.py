"""`acula-edge firmware`: the project written for a tflm bundle (no cross toolchain needed; see
tests/test_firmware_qemu.py for the build and run on an emulated Cortex-M)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from acula_edge.errors import BundleError, ExportError
from acula_edge.export.firmware.project import APP_SOURCES, BUNDLE_SOURCES, DESCRIPTION, write_project
from acula_edge.export.firmware.toolchain import gen_dir, make_args, qemu_version
from acula_edge.manifest import read_manifest


@pytest.fixture(scope="module")
def bundle():
    from runtime_fixtures import bundle_or_skip

    return bundle_or_skip("tflm-int8")


def test_project_holds_the_bundle_the_app_and_a_makefile(bundle, tmp_path):
    project = write_project(bundle, tmp_path / "fw")
    names = sorted(p.name for p in project.folder.iterdir())
    assert names == sorted([*BUNDLE_SOURCES, *APP_SOURCES, "Makefile", DESCRIPTION])
    for name in BUNDLE_SOURCES:
        assert (project.folder / name).read_bytes() == (bundle / name).read_bytes()
    manifest = read_manifest(bundle)
    desc = json.loads((project.folder / DESCRIPTION).read_text())
    assert desc["model_sha256"] == manifest.model_sha256
    assert desc["resolver_ops"] == list(project.ops) == manifest.extra["resolver_ops"]
    # the resolver is sized and filled from the model's op list, nothing else
    header = (project.folder / "model_data.h").read_text()
    assert f"#define ACULA_MODEL_NUM_OPS {len(project.ops)}" in header
    assert "#define ACULA_MODEL_OPS(X) " + " ".join(f"X({op})" for op in project.ops) in header
    model_cc = (project.folder / "acula_model.cc").read_text()
    assert "MicroMutableOpResolver<ACULA_MODEL_NUM_OPS>" in model_cc and "ACULA_MODEL_OPS(ACULA_ADD_OP)" in model_cc
    makefile = (project.folder / "Makefile").read_text()
    assert "TFLM_DIR ?=" in makefile and "OPTIMIZED_KERNEL_DIR ?= cmsis_nn" in makefile and "-DACULA_Q15=1" in makefile


def test_app_compiles_as_strict_c99(bundle, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    project = write_project(bundle, tmp_path / "fw")
    for q15 in ("0", "1"):
        for src in ("acula_app.c", "acula_frontend.c", "model_data.c", "acula_fw_main.c"):
            res = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2",
                                  f"-DACULA_Q15={q15}", "-c", src, "-o", str(tmp_path / "x.o")],
                                 cwd=project.folder, capture_output=True, text=True)
            assert res.returncode == 0, f"{src} (ACULA_Q15={q15}): {res.stderr}"


def test_rewrites_its_own_folder_but_never_a_foreign_one(bundle, tmp_path):
    first = write_project(bundle, tmp_path / "fw")
    (first.folder / "acula_app.c").write_text("edited")
    (first.folder / "build").mkdir()
    (first.folder / "build" / "keep.o").write_text("x")
    again = write_project(bundle, tmp_path / "fw")
    assert (again.folder / "acula_app.c").read_text() != "edited"
    assert (again.folder / "build" / "keep.o").read_text() == "x"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and was not written by `acula-edge firmware`"):
        write_project(bundle, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_rejects_bundles_it_cannot_build(bundle, tmp_path):
    from runtime_fixtures import bundle_or_skip, copy_bundle

    with pytest.raises(BundleError, match="needs a tflm bundle, this one is 'onnx'"):
        write_project(bundle_or_skip("onnx-int8"), tmp_path / "a")
    broken = copy_bundle(bundle, tmp_path / "broken")
    (broken / "model_data.c").write_text("/* edited */\n")
    with pytest.raises(BundleError, match=r"model_data.c: sha256 \w+\.\.\. does not match the manifest"):
        write_project(broken, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_writes_the_project(bundle, tmp_path):
    from click.testing import CliRunner

    from acula_edge.cli import cli

    res = CliRunner().invoke(cli, ["firmware", str(bundle), "--out", str(tmp_path / "fw")])
    assert res.exit_code == 0, res.output
    assert f"wrote {len(BUNDLE_SOURCES) + len(APP_SOURCES) + 2} files" in res.output
    assert "make -C" in res.output and (tmp_path / "fw" / "Makefile").is_file()


def test_toolchain_names(tmp_path):
    assert make_args("cortex-m4", "reference") == ["TARGET_ARCH=cortex-m4", "OPTIMIZED_KERNEL_DIR="]
    assert gen_dir(Path("t"), "cortex-m7", "cmsis_nn") == Path("t/gen/cortex_m_qemu_cortex-m7_default_cmsis_nn_gcc")
    assert gen_dir(Path("t"), "cortex-m4", "reference") == Path("t/gen/cortex_m_qemu_cortex-m4_default_gcc")
    with pytest.raises(ExportError, match="unknown kernel set 'arm'"):
        make_args("cortex-m4", "arm")
    fake = tmp_path / "qemu-arm"
    fake.write_text("#!/bin/sh\necho 'qemu-arm version 7.2.0 (Debian 1:7.2+dfsg-7)'\n")
    fake.chmod(0o755)
    assert qemu_version(str(fake)) == (7, 2, 0)


def test_find_toolchain_names_what_is_missing_and_rejects_old_qemu(tmp_path, monkeypatch):
    from acula_edge.export.firmware.toolchain import find_toolchain

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ExportError, match="arm-none-eabi-gcc, arm-none-eabi-g\\+\\+, arm-none-eabi-size, qemu-arm "
                                          "not found on PATH; on Debian 12: apt-get install gcc-arm-none-eabi"):
        find_toolchain()
    for name, text in (("arm-none-eabi-gcc", ""), ("arm-none-eabi-g++", ""), ("arm-none-eabi-size", ""),
                       ("qemu-arm", "echo 'qemu-arm version 7.2.0 (Debian 1:7.2+dfsg-7)'")):
        (tmp_path / name).write_text(f"#!/bin/sh\n{text}\n")
        (tmp_path / name).chmod(0o755)
    with pytest.raises(ExportError, match="is QEMU 7.2.0, which aborts on Cortex-M binaries; QEMU >= 8 is needed"):
        find_toolchain()


# A qemu-arm 10 `-d in_asm,exec,nochain` log in its real format (lines as QEMU writes them): block A (3
# instructions) runs twice, block B (2) once, then B's host code is reused for a re-translated block C (4) after a
# code-buffer flush, C runs twice and one entry into C is stopped before its first instruction.
TB_LOG = "\n".join([
    '----------------',
    'IN: ',
    '0x00008114:  2016       movs     r0, #0x16',
    '0x00008116:  a130       adr      r1, #0xc0',
    '0x00008118:  beab       bkpt     #0xab',
    '',
    'Trace 0: 0x7fc4cc000100 [00800400/0000000000008114/00000000/00000200] ',
    'Trace 0: 0x7fc4cc000100 [00800400/0000000000008114/00000000/00000200] ',
    '----------------',
    'IN: ',
    '0x0000811a:  482f       ldr      r0, [pc, #0xbc]',
    '0x0000811c:  d001       beq      #0x8126',
    '',
    'Trace 0: 0x7fc4cc000240 [00800400/000000000000811a/00000000/00000200] ',
    '----------------',
    'IN: ',
    '0x00008200:  bf08       it       eq',
    '0x00008202:  2100       moveq    r1, #0',
    '0x00008204:  468b       mov      fp, r1',
    '0x00008206:  4770       bx       lr',
    '',
    'Trace 0: 0x7fc4cc000240 [00800400/0000000000008200/00000000/00000200] ',
    'Trace 0: 0x7fc4cc000240 [00800400/0000000000008200/00000000/00000200] ',
    'Trace 0: 0x7fc4cc000240 [00800400/0000000000008200/00000000/00000200] ',
    'Stopped execution of TB chain before 0x7fc4cc000240 [00008200] ',
    '',
]).encode()  # QEMU ends 'IN: <symbol>' and Trace lines with a space (no symbol in a stripped ELF)


@pytest.mark.parametrize("chunk", [1, 7, 64, len(TB_LOG)])
def test_instruction_count_from_the_block_log_in_any_chunking(chunk):
    from acula_edge.export.firmware.emulate import _TbCounter

    counter = _TbCounter()
    for i in range(0, len(TB_LOG), chunk):
        counter.feed(TB_LOG[i:i + chunk])
    assert counter.finish() == 2 * 3 + 1 * 2 + 2 * 4
    assert counter.blocks == 5


def test_instruction_count_refuses_a_log_it_cannot_read():
    from acula_edge.export.firmware.emulate import _TbCounter

    untranslated = _TbCounter()
    untranslated.feed(b"Trace 0: 0x7fc4cc000100 [00800400/0000000000008114/00000000/00000200] \n")
    with pytest.raises(ExportError,
                       match=r"executes a block at 0x7fc4cc000100 \(.*/0000000000008114/.*\) it never translated"):
        untranslated.finish()
    with pytest.raises(ExportError, match="unexpected line in qemu-arm's execution log: b'qemu: unhandled"):
        _TbCounter().feed(b"qemu: unhandled signal 11\n")


def _make_value(folder: Path, variable: str, *make_args: str) -> str:
    out = subprocess.run(["make", "-s", "-C", str(folder), f"--eval=show: ; @echo $({variable})", "show",
                          "TFLM_DIR=/nonexistent", *make_args], capture_output=True, text=True, check=True).stdout
    return out.strip()


def test_makefile_links_the_reference_transpose_for_models_with_one(bundle, tmp_path):
    from acula_edge.export.firmware.project import model_reference_kernels

    assert model_reference_kernels(["CONV_2D", "TRANSPOSE", "RESHAPE", "TRANSPOSE"]) == ["transpose"]
    assert model_reference_kernels(["CONV_2D", "MEAN"]) == []
    project = write_project(bundle, tmp_path / "fw")
    assert "TRANSPOSE" not in read_manifest(bundle).extra["ops"]
    text = (project.folder / "Makefile").read_text()
    assert "@MODEL_REFERENCE_KERNELS@" not in text and "\nMODEL_REFERENCE_KERNELS :=\n" in text
    assert _make_value(project.folder, "LINKED_REFERENCE_KERNELS") == ""
    # a model with a TRANSPOSE (as write_project writes it for one): its reference kernel with CMSIS-NN only
    (project.folder / "Makefile").write_text(text.replace("\nMODEL_REFERENCE_KERNELS :=\n",
                                                          "\nMODEL_REFERENCE_KERNELS := transpose\n"))
    assert _make_value(project.folder, "LINKED_REFERENCE_KERNELS") == "transpose"
    assert _make_value(project.folder, "LINKED_REFERENCE_KERNELS", "REFERENCE_KERNELS=conv transpose") == \
        "conv transpose"
    assert _make_value(project.folder, "LINKED_REFERENCE_KERNELS", "OPTIMIZED_KERNEL_DIR=") == ""
    assert "build/cortex-m4-cmsis_nn-float/reference_transpose.o" in _make_value(project.folder, "OBJS").split()


def _tar_with(path: Path, links: dict[str, str]) -> Path:
    """A tarball holding one file and the given symlinks (name -> target)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as t:
        data = b"all:\n"
        info = tarfile.TarInfo("tflm-cortex-m-kit/tflite-micro/Makefile")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            t.addfile(link)
    return path


def test_kit_extraction_keeps_only_the_documented_toolchain_links(tmp_path):
    import tarfile

    from acula_edge.export.firmware.toolchain import kit_member_filter

    bin_dir = "tflm-cortex-m-kit/tflite-micro/tensorflow/lite/micro/tools/make/downloads/gcc_embedded/bin/"
    good = _tar_with(tmp_path / "good.tar", {bin_dir + "arm-none-eabi-gcc": "/usr/bin/arm-none-eabi-gcc"})
    with tarfile.open(good) as t:
        t.extractall(tmp_path / "out", filter=kit_member_filter)
    assert (tmp_path / "out" / bin_dir / "arm-none-eabi-gcc").readlink() == Path("/usr/bin/arm-none-eabi-gcc")
    assert (tmp_path / "out" / "tflm-cortex-m-kit/tflite-micro/Makefile").read_bytes() == b"all:\n"
    # an absolute link anywhere else, or from that folder to anything but the arm tools, is refused
    for name, target in (("tflm-cortex-m-kit/evil", "/usr/bin/arm-none-eabi-gcc"),
                         (bin_dir + "sh", "/bin/sh"), (bin_dir + "arm-none-eabi-gcc", "/etc/passwd"),
                         ("../" + bin_dir + "arm-none-eabi-gcc", "/usr/bin/arm-none-eabi-gcc")):
        bad = _tar_with(tmp_path / "bad.tar", {name: target})
        with tarfile.open(bad) as t, pytest.raises(tarfile.FilterError):
            t.extractall(tmp_path / "refused", filter=kit_member_filter)
