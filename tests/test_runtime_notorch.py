"""The device runtime runs ONNX and TFLite bundles in a process where importing torch fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402

SCRIPT = r'''
import importlib.abc, json, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test (import {name!r})")
        return None

sys.meta_path.insert(0, BlockTorch())
import numpy as np
import acula_edge
from acula_edge.cli import main  # the CLI module too

x = np.load(sys.argv[1])
out = {}
for bundle in sys.argv[2:]:
    model = acula_edge.load(bundle)
    offline = model.classify(x, model.sample_rate)
    session = model.stream()
    events = []
    for i in range(0, x.shape[0], 777):
        events += session.push(x[i:i + 777], model.sample_rate)
    streamed = session.finish()
    out[bundle] = {"offline": offline.probabilities.tolist(), "streamed": streamed.probabilities.tolist(),
                   "events": len(events)}
try:
    import torch  # noqa: F401
    out["torch_importable"] = True
except ImportError:
    out["torch_importable"] = False
out["torch_modules"] = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps(out))
'''


def test_onnx_and_tflite_bundles_run_without_torch(tmp_path):
    bundles = [rf.bundle_or_skip("onnx-fp32"), rf.bundle_or_skip("tflite-int8")]
    x = rf.heart_like(6.3, 2000, seed=8)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "x.npy"), *map(str, bundles)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch_importable"] is False and out["torch_modules"] == []
    for bundle in bundles:
        expected = acula_edge.load(bundle).classify(x, 2000).probabilities
        got = out[str(bundle)]
        assert got["events"] == 2 * 3  # 3 windows, each a WindowEvent and a RecordingUpdate
        np.testing.assert_allclose(got["offline"], expected, atol=1e-6)
        np.testing.assert_allclose(got["streamed"], expected, atol=1e-5)


def test_importing_the_runtime_is_light():
    """``import acula_edge.runtime`` (and its CLI) loads numpy only: runtimes, scipy and soundfile load on use."""
    code = ("import sys, acula_edge.runtime, acula_edge.runtime.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'soundfile', 'onnxruntime', "
            "'ai_edge_litert', 'tflite_runtime', 'executorch', 'tflite_micro'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
    import acula_edge.runtime as rt

    assert all(hasattr(rt, name) for name in rt.__all__)


def test_verify_runs_without_torch(tmp_path):
    """``acula-edge verify`` re-runs the parity gate through the device runtime: on a device without torch (a
    Raspberry Pi with only a TFLite runtime) it checks a bundle against its stored reference outputs."""
    bundle = rf.bundle_or_skip("tflite-int8")
    code = SCRIPT.split("import numpy as np")[0] + (
        "import sys\n"
        "from acula_edge.cli import main\n"
        "try:\n"
        "    main(['verify', sys.argv[1]])\n"
        "finally:\n"
        "    print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(f"{bundle}: ok (schema v") and "parity vs reference outputs stored at export" in lines[0]
    assert lines[-1] == "[]" and proc.stderr == ""
