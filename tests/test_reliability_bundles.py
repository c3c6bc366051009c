"""Reliability: corrupt, foreign and unloadable bundles. Every case is a :class:`~acula_edge.errors.BundleError`
naming the model file (or MissingDependencyError naming the extra), never a runtime's own exception or a crash.

The model file's sha256 in the manifest is *recomputed* after each corruption here, so the checksum (tested in
tests/test_runtime_model.py) cannot catch it and the runtime itself must fail clearly. What no runtime can catch is
a flip inside a weight that leaves the graph valid: the model loads and answers differently, which is exactly what
the manifest's sha256 exists for; a flip that makes the outputs NaN/Inf is caught when the window runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402
from acula_edge.errors import BundleError  # noqa: E402

KINDS = ("onnx-fp32", "tflite-fp32")
RATE = 2000


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return rf.heart_like(5.0, RATE, seed=2)


def model_name(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["model_file"]


def rewrite_model(src: Path, dst: Path, data: bytes) -> Path:
    """A copy of bundle ``src`` at ``dst`` whose model file holds ``data``, with the manifest's sha256 updated."""
    rf.copy_bundle(src, dst)
    name = model_name(dst)
    (dst / name).write_bytes(data)
    rf.reseal(dst)
    return dst / name


def flip(data: bytes, position: int, mask: int = 0x10) -> bytes:
    b = bytearray(data)
    b[position] ^= mask
    return bytes(b)


# How each kind is broken: name -> mutate(model bytes, kind) -> bytes
BREAKS = {
    "empty": lambda d, k: b"",
    "first 4 bytes": lambda d, k: d[:4],
    "half": lambda d, k: d[:len(d) // 2],
    "all but the last byte": lambda d, k: d[:-1],
    # the protobuf's first field tag (ONNX) / the "TFL3" file identifier (TFLite)
    "header bit flipped": lambda d, k: flip(d, 0 if k.startswith("onnx") else 4),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", sorted(BREAKS))
def test_truncated_or_flipped_model_file_is_a_bundle_error_naming_it(tmp_path, kind, how):
    src = rf.bundle_or_skip(kind)
    data = (src / model_name(src)).read_bytes()
    path = rewrite_model(src, tmp_path / "b", BREAKS[how](data, kind))
    with pytest.raises(BundleError, match="cannot load the model file") as e:
        acula_edge.load(tmp_path / "b")
    assert str(path) in str(e.value) and "re-export the bundle" in str(e.value)


@pytest.mark.parametrize("kind,other", [("onnx-fp32", "tflite-fp32"), ("tflite-fp32", "onnx-fp32")])
def test_model_file_of_another_format_under_the_right_name(tmp_path, kind, other):
    foreign = rf.bundle_or_skip(other)
    path = rewrite_model(rf.bundle_or_skip(kind), tmp_path / "b", (foreign / model_name(foreign)).read_bytes())
    with pytest.raises(BundleError, match=f"{path.name}: .*cannot load the model file.*not "):
        acula_edge.load(tmp_path / "b")


def test_missing_model_file(tmp_path):
    bundle = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "b")
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx: the file named in the manifest is missing"):
        acula_edge.load(bundle)


@pytest.mark.parametrize("kind", KINDS)
def test_random_bit_flips_never_escape_as_anything_but_bundle_errors(tmp_path, kind, audio):
    """24 seeded single-bit flips anywhere in the file: a BundleError naming the file (at load, or when the
    outputs turn non-finite), or a model that loads and gives finite probabilities. Nothing else, no crash."""
    src = rf.bundle_or_skip(kind)
    data = (src / model_name(src)).read_bytes()
    rng = np.random.default_rng(8)
    outcomes = {"refused": 0, "loaded": 0}
    for i, pos in enumerate(rng.choice(len(data), 24, replace=False)):
        path = rewrite_model(src, tmp_path / f"b{i}", flip(data, int(pos), 1 << int(rng.integers(8))))
        try:
            result = acula_edge.load(path.parent, num_threads=1).classify(audio, RATE)
        except BundleError as e:
            assert str(path) in str(e)
            outcomes["refused"] += 1
        else:
            assert np.isfinite(result.probabilities).all() and result.n_windows == 2
            outcomes["loaded"] += 1
    assert sum(outcomes.values()) == 24


def test_weights_that_make_outputs_nan_are_refused_when_run(tmp_path, audio):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    src = rf.bundle_or_skip("onnx-fp32")
    graph = onnx.load(src / "model.onnx")
    init = graph.graph.initializer[0]
    w = numpy_helper.to_array(init).copy()
    w.flat[0] = np.inf  # what one flipped exponent bit can do
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = rewrite_model(src, tmp_path / "b", graph.SerializeToString())
    model = acula_edge.load(tmp_path / "b")  # a valid graph: only running it shows the damage
    with pytest.raises(BundleError, match="NaN or Inf outputs for a finite input window") as e:
        model.classify(audio, RATE)
    assert str(path) in str(e.value)
    with pytest.raises(BundleError, match="NaN or Inf outputs"):
        model.stream().push(audio, RATE)


# -- the CLI --------------------------------------------------------------------------------------------------------


def run_cli(*args: str, pre: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"{pre}from acula_edge.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("INFO: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_corrupt_bundle_newer_schema_and_missing_runtime(tmp_path, audio):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, audio, RATE)
    src = rf.bundle_or_skip("tflite-fp32")
    path = rewrite_model(src, tmp_path / "flipped", flip((src / "model.tflite").read_bytes(), 4))
    assert_one_line_error(run_cli("classify", str(path.parent), str(wav)), str(path), "LiteRT cannot load")

    newer = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "newer")
    rf.reseal(newer, schema_version=99)
    assert_one_line_error(run_cli("info", str(newer)), "schema version 99 is newer", "upgrade acula-edge")

    no_ort = "import sys; sys.modules['onnxruntime'] = None; "  # as if onnxruntime were not installed
    assert_one_line_error(run_cli("classify", str(rf.bundle_or_skip("onnx-fp32")), str(wav), pre=no_ort),
                          "pip install 'acula-edge[onnx]'")

