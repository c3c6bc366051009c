"""Reliability: nobody alters a bundle unnoticed, and no bundle crashes the process.

Changing any byte of a real exported bundle (manifest included) is refused by ``acula_edge.load`` and ``verify``;
what is checked is what runs (the runtime gets the hashed bytes, not the path); a *consistent* forgery (every sha256
and the digest recomputed, as :func:`runtime_fixtures.reseal` does) is still refused when the model's real inputs
and outputs differ from the manifest, and settings that crash a runtime (a TFLite Micro arena of 64 bytes) are a
BundleError from a child-process probe, never a signal in the caller.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402
from acula_edge.errors import BundleError  # noqa: E402
from acula_edge.manifest import read_bundle  # noqa: E402
from acula_edge.runtime.backends import open_backend  # noqa: E402

RATE = 2000


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _flip(path: Path, position: int, mask: int = 0x01) -> None:
    b = bytearray(path.read_bytes())
    b[position] ^= mask
    path.write_bytes(bytes(b))


def test_every_manifest_byte_of_a_real_bundle_is_covered(tmp_path):
    """Single-bit flips at 400 random bytes of a real manifest (the parity report, prompts and versions included)
    are refused by the bundle check that ``load`` runs first; 25 more go through ``load`` itself."""
    bundle = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "b")
    path = bundle / "manifest.json"
    raw = path.read_bytes()
    for i in np.random.default_rng(3).choice(len(raw), 400, replace=False):  # every byte: tests/test_manifest.py
        _flip(path, int(i))
        with pytest.raises(BundleError):
            read_bundle(bundle)
        path.write_bytes(raw)
    for i in np.random.default_rng(0).choice(len(raw), 25, replace=False):
        _flip(path, int(i), 0x04)
        with pytest.raises(BundleError, match="manifest"):
            acula_edge.load(bundle)
        path.write_bytes(raw)
    acula_edge.load(bundle)


@pytest.mark.parametrize("kind", ["onnx-fp32", "tflite-int8"])
def test_model_and_reference_byte_flips_are_refused_by_load(tmp_path, kind):
    bundle = rf.copy_bundle(rf.bundle_or_skip(kind), tmp_path / "b")
    m = _manifest(bundle)
    for name in (m["model_file"], m["extra"]["reference_file"]):
        raw = (bundle / name).read_bytes()
        for i in np.random.default_rng(1).choice(len(raw), 20, replace=False):
            _flip(bundle / name, int(i))
            with pytest.raises(BundleError, match=f"{name}: sha256 .* does not match the manifest"):
                acula_edge.load(bundle)
            (bundle / name).write_bytes(raw)


def test_a_threshold_edited_to_change_decisions_is_refused(tmp_path):
    bundle = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "b")
    path = bundle / "manifest.json"
    path.write_text(path.read_text().replace('"threshold": 0.5', '"threshold": 0.4'))
    with pytest.raises(BundleError, match="bundle digest .* does not match"):
        acula_edge.load(bundle)


def test_the_checked_bytes_are_the_bytes_that_run(tmp_path):
    """A model file swapped after the check (here: another valid model) is never what runs."""
    bundle = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "b")
    x = np.random.default_rng(2).standard_normal((1, 1, 196, 32)).astype(np.float32)
    want = acula_edge.load(bundle).backend.run(x)
    contents = read_bundle(bundle)
    other = rf.bundle_or_skip("onnx-int8") / "model.onnx"
    shutil.copyfile(other, bundle / "model.onnx")  # the swap, between the check and the runtime
    got = open_backend(contents.model_path, contents.manifest, None, contents.model_bytes).run(x)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(BundleError, match="does not match the manifest"):
        acula_edge.load(bundle)


ALL_KINDS = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8", "executorch-fp32", "tflm-int8")


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_model_with_other_inputs_than_the_manifest_is_refused(tmp_path, kind):
    """Manifest consistent with itself (40 mels everywhere) and sealed, model still 32 mels: the backend compares."""
    bundle = rf.copy_bundle(rf.bundle_or_skip(kind), tmp_path / "b")
    m = _manifest(bundle)
    inputs = [{**m["inputs"][0], "shape": [1, 1, 196, 40]}]
    rf.reseal(bundle, frontend={**m["frontend"], "n_mels": 40}, inputs=inputs)
    with pytest.raises(BundleError, match=r"the model's input has shape .*32.* but the manifest says "
                                          r"\(1, 1, 196, 40\)"):
        acula_edge.load(bundle)


@pytest.mark.parametrize("kind", ["onnx-fp32", "tflite-int8", "tflm-int8"])
def test_a_model_with_other_outputs_or_types_than_the_manifest_is_refused(tmp_path, kind):
    bundle = rf.copy_bundle(rf.bundle_or_skip(kind), tmp_path / "b")
    m = _manifest(bundle)
    outputs = [{**o, "shape": [1, 13]} if o["name"] == "embedding" else o for o in m["outputs"]]
    rf.reseal(bundle, outputs=outputs)
    with pytest.raises(BundleError, match=r"output 'embedding' has shape .*12.* but the manifest says \(1, 13\)"):
        acula_edge.load(bundle)
    if m["inputs"][0]["dtype"] != "float32":
        rf.reseal(bundle, outputs=m["outputs"], inputs=[{**m["inputs"][0], "dtype": "float32", "scale": None,
                                                         "zero_point": None}])
        with pytest.raises(BundleError, match="the model's input is int8 but the manifest says float32"):
            acula_edge.load(bundle)


@pytest.mark.parametrize("arena,message", [(1, r"crashed \(SIGSEGV\)"), (64, r"crashed \(SIGSEGV\)"),
                                           (1024, "cannot load the model with a 1024-byte arena")])
def test_a_tflm_arena_below_the_need_is_a_bundle_error_not_a_crash(tmp_path, arena, message):
    bundle = rf.copy_bundle(rf.bundle_or_skip("tflm-int8"), tmp_path / "b")
    rf.reseal(bundle, extra={**_manifest(bundle)["extra"], "arena_bytes": arena})
    with pytest.raises(BundleError, match=message):
        acula_edge.load(bundle)
    if arena == 64 and rf._has("torch"):  # verify opens the bundle on the device runtime before its parity run
        from acula_edge.export.verify import verify_bundle

        with pytest.raises(BundleError, match=message):
            verify_bundle(bundle)


def test_a_corrupt_tflm_model_is_a_bundle_error(tmp_path):
    src = rf.bundle_or_skip("tflm-int8")
    raw = (src / "model.tflite").read_bytes()
    for i, how in enumerate([raw[:len(raw) // 2], raw[:64], bytes(b ^ 0xFF for b in raw[:32]) + raw[32:]]):
        bundle = rf.copy_bundle(src, tmp_path / f"b{i}")
        (bundle / "model.tflite").write_bytes(how)
        rf.reseal(bundle)
        with pytest.raises(BundleError, match="model.tflite"):
            acula_edge.load(bundle)


def test_a_corrupt_executorch_program_is_a_bundle_error(tmp_path):
    """A flip the ExecuTorch runtime refuses ("Failed to load method forward"; one of 8 clean refusals and 15 silent
    loads among 23 seeded flips, none aborting here): a BundleError naming the file, through the child probe too
    (which guards the abort the issue saw)."""
    bundle = rf.copy_bundle(rf.bundle_or_skip("executorch-fp32"), tmp_path / "b")
    _flip(bundle / "model.pte", 2201, 0x10)
    rf.reseal(bundle)
    with pytest.raises(BundleError, match="model.pte: ExecuTorch cannot load the program") as e:
        acula_edge.load(bundle)
    assert "\n" not in str(e.value)


def test_cli_arena_crash_and_altered_manifest_exit_2_with_one_line(tmp_path):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, rf.heart_like(5.0, RATE, seed=2), RATE)
    bundle = rf.copy_bundle(rf.bundle_or_skip("tflm-int8"), tmp_path / "b")
    rf.reseal(bundle, extra={**_manifest(bundle)["extra"], "arena_bytes": 64})
    for cmd in (["classify", str(bundle), str(wav)], ["info", str(bundle)]):
        proc = subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", *cmd],
                              capture_output=True, text=True, timeout=300)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("INFO: ")]
        if cmd[0] == "info":  # info reads the checked manifest only: no runtime is started
            assert proc.returncode == 0 and "64" in proc.stdout, proc.stderr
            continue
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(lines) == 1 and "crashed (SIGSEGV)" in lines[0] and "arena_bytes" in lines[0], proc.stderr


def test_a_tflite_tensor_name_that_is_not_utf8_is_a_bundle_error(tmp_path):
    """Found by benchmarks/fuzz_bundles.py: a sealed flip inside an output name made LiteRT's get_output_details
    raise UnicodeDecodeError."""
    bundle = rf.copy_bundle(rf.bundle_or_skip("tflite-int8"), tmp_path / "b")
    raw = (bundle / "model.tflite").read_bytes()
    at = raw.index(b"serving_default_output_0_output") + 16
    (bundle / "model.tflite").write_bytes(raw[:at] + b"\xef" + raw[at + 1:])
    rf.reseal(bundle)
    with pytest.raises(BundleError, match="model.tflite: LiteRT cannot load the model file \\(UnicodeDecodeError"):
        acula_edge.load(bundle)


def test_verify_refuses_any_altered_bundle_and_unlisted_files(tmp_path):
    pytest.importorskip("torch")
    from acula_edge.export.verify import verify_bundle

    bundle = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "b")
    report = verify_bundle(bundle)
    assert report["passed"] is True and "bundle digest" in report["integrity"]
    path = bundle / "manifest.json"
    raw = path.read_bytes()
    path.write_text(raw.decode().replace('"threshold": 0.5', '"threshold": 0.4'))
    with pytest.raises(BundleError, match="bundle digest .* does not match"):
        verify_bundle(bundle)
    path.write_bytes(raw)
    _flip(bundle / "reference.npz", 100)
    with pytest.raises(BundleError, match="reference.npz: sha256 .* does not match"):
        verify_bundle(bundle)
    _flip(bundle / "reference.npz", 100)
    (bundle / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"holds files the manifest does not list .*\['extra.bin'\]"):
        verify_bundle(bundle)
    (bundle / "extra.bin").unlink()
    m = _manifest(bundle)
    m["extra"]["files"]["../../../../etc/hostname"] = "0" * 64
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="plain file name inside the bundle"):
        verify_bundle(bundle)


def test_a_corrupt_onnx_model_is_one_error_and_no_banner(tmp_path, capsys):
    """onnxruntime's Python wrapper prints an "EP Error ... falling back" banner on stdout for a bad model; the
    load stays quiet and reports it once, as the BundleError."""
    bundle = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "b")
    raw = (bundle / "model.onnx").read_bytes()
    at = raw.index(b"logmel") + 1  # the input's name, made invalid UTF-8 (a case benchmarks/fuzz_bundles.py hit)
    (bundle / "model.onnx").write_bytes(raw[:at] + b"\xef" + raw[at + 1:])
    rf.reseal(bundle)
    with pytest.raises(BundleError, match="model.onnx: onnxruntime cannot load the model file \\(UnicodeDecodeError"):
        acula_edge.load(bundle)
    assert capsys.readouterr().out == ""
