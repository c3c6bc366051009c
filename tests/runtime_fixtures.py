"""Tiny exported bundles for the runtime tests (and benchmarks/stream_rtf.py), made by acula_edge.export.

A tiny seeded CNN with the model contract (``forward(x: (1, 1, frames, n_mels)) -> (embedding (1, D),
logits (1, C))``) is exported with :func:`acula_edge.export.api.export_model` (parity-gated) to every target and
precision, calibrated on seeded noise-burst windows.

Built bundles are cached under a folder keyed by the builder functions' source and the torch version, so a second
test run does not convert again (conversion takes seconds per bundle on two cores).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from acula_edge.export.registry import target_precisions
from acula_edge.frontend import FrontendConfig, Windowing, preset
from acula_edge.manifest import Prompts

# every registered target x precision (the export targets' registry; no torch needed to read it)
KINDS = tuple(f"{t}-{p}" for t, p in target_precisions())
LABELS = ("normal", "abnormal")
EMBED_DIM = 12
PROMPT_TEXTS = ("a normal heart sound", "a heart murmur", "background noise")


def _cache_root() -> Path:
    import torch

    import inspect

    import acula_edge.export

    src = "".join(inspect.getsource(f) for f in (tiny_model, calibration_windows, heart_like, build_bundle))
    # and the exporter's code: a bundle written by an older exporter (say, before the tflite int8 model got its
    # float boundary) must not pass for one of this version
    src += "".join(f.read_text() for f in sorted(Path(acula_edge.export.__file__).parent.rglob("*.py")))
    from acula_edge.manifest import SCHEMA_VERSION

    key = hashlib.sha256((src + torch.__version__ + f"manifest v{SCHEMA_VERSION}").encode()).hexdigest()[:12]
    root = Path(os.environ.get("ACULA_TEST_BUNDLE_CACHE", Path(tempfile.gettempdir()) / "acula-runtime-bundles"))
    return root / key


def tiny_model(frontend: FrontendConfig, windowing: Windowing, seed: int = 0):
    """A seeded ~1K-parameter CNN with the model contract (embedding, logits)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.embed = nn.Linear(16, EMBED_DIM)
            self.head = nn.Linear(EMBED_DIM, len(LABELS))

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            h = torch.relu(self.conv2(h))
            e = self.embed(torch.flatten(self.pool(h), 1))
            return e, self.head(torch.relu(e))

    return Tiny().eval()


def calibration_windows(frontend: FrontendConfig, windowing: Windowing, n: int = 8, seed: int = 0) -> np.ndarray:
    """(n, 1, frames, n_mels) log-mel windows of seeded heart-like audio at varied levels, for int8 calibration
    and parity."""
    from acula_edge.windows import recording_windows

    ws = windowing.window_samples(frontend)
    out = []
    for i in range(n):
        x = heart_like(ws / frontend.sample_rate, frontend.sample_rate, seed=seed * 1000 + i)
        out.append(recording_windows(x * np.float32(0.3 + 0.2 * (i % 4)), frontend, windowing)[0])
    return np.stack(out)[:, None].copy()  # copy: a None axis has stride 0, which ExecuTorch export rejects


def build_bundle(kind: str, out_dir: Path, preset_name: str = "heart", seed: int = 0, model=None,
                 architecture: str = "tests.runtime_fixtures:Tiny", model_config: dict | None = None) -> Path:
    """Export a tiny bundle of ``kind`` (see KINDS) to ``out_dir`` with acula_edge.export (parity-gated); ``model``
    (embedding EMBED_DIM, len(LABELS) logits; default :func:`tiny_model`) with its ``architecture`` and config."""
    import torch

    from acula_edge.checkpoint import CheckpointInfo
    from acula_edge.export.api import export_model
    from acula_edge.export.calibration import ExportData
    from acula_edge.windows import Windows

    torch.set_num_threads(1)
    frontend, windowing = preset(preset_name)
    model = tiny_model(frontend, windowing, seed) if model is None else model
    rng = np.random.default_rng(seed + 1)
    emb = rng.standard_normal((len(PROMPT_TEXTS), EMBED_DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    prompts = Prompts(texts=PROMPT_TEXTS, embeddings=tuple(tuple(float(v) for v in r) for r in emb),
                      labels=("normal", "abnormal", ""))
    info = CheckpointInfo(kind="student", architecture=architecture, model_config=dict(model_config or {}),
                          frontend=frontend, windowing=windowing, labels=LABELS, embedding_dim=EMBED_DIM,
                          threshold=0.5, prompts=prompts)

    def batch(n: int, s: int) -> Windows:
        x = calibration_windows(frontend, windowing, n=n, seed=s)
        return Windows(x, np.arange(n), np.zeros(n, np.int64), np.arange(n) % len(LABELS), LABELS,
                       source=f"runtime_fixtures seed {s}")

    target, precision = kind.split("-")
    data = ExportData(calibration=batch(16, seed) if precision == "int8" else None, evaluation=batch(6, seed + 100),
                      held_out=True, note="tiny test bundle")
    export_model(model, info, out_dir, target, precision, data=data)
    return out_dir


def reference_outputs(kind: str, windows: np.ndarray, preset_name: str = "heart", seed: int = 0):
    """PyTorch (embedding, logits) of the tiny model for (n, frames, n_mels) windows, for parity checks."""
    import torch

    frontend, windowing = preset(preset_name)
    model = tiny_model(frontend, windowing, seed)
    with torch.no_grad():
        e, lg = model(torch.from_numpy(np.ascontiguousarray(windows[:, None], dtype=np.float32)))
    return e.numpy(), lg.numpy()


def get_bundle(kind: str, preset_name: str = "heart") -> Path:
    """The cached bundle of ``kind``, built on first use."""
    path = _cache_root() / f"{preset_name}-{kind}"
    if not (path / "manifest.json").is_file():
        build_bundle(kind, path, preset_name)
    return path


def copy_bundle(src: Path, dst: Path) -> Path:
    """A writable copy of a cached bundle (for tests that corrupt it)."""
    shutil.copytree(src, dst)
    return dst


# -- helpers for the test modules ---------------------------------------------------------------------------------

def reseal(bundle: Path, **changes) -> Path:
    """Rewrite ``bundle``'s manifest with ``changes`` and every sha256 and the bundle digest recomputed from the
    files now there: a consistent forgery (or a careless hand edit done right), which only the schema and the
    runtime checks can catch. Returns the manifest's path."""
    import json

    from acula_edge.atomic import sha256_file
    from acula_edge.manifest import MANIFEST_NAME, seal

    path = bundle / MANIFEST_NAME
    d = json.loads(path.read_text())
    d.update(changes)
    if (bundle / str(d.get("model_file"))).is_file():
        d["model_sha256"] = sha256_file(bundle / d["model_file"])
    files = (d.get("extra") or {}).get("files") or {}
    for name in files:
        if (bundle / name).is_file():
            files[name] = sha256_file(bundle / name)
    path.write_bytes(seal(d, bundle))
    return path


# Module each kind's runtime needs (tests skip kinds whose runtime is not installed).
RUNTIME_MODULE = {"onnx": "onnxruntime", "tflite": "ai_edge_litert", "executorch": "executorch.runtime",
                  "tflm": "tflite_micro"}
# Modules needed to build each kind here.
CONVERTER_MODULES = {"onnx": ("torch", "onnxscript"), "tflite": ("torch", "litert_torch"),
                     "executorch": ("torch", "executorch.exir"), "tflm": ("torch", "litert_torch")}


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def bundle_or_skip(kind: str) -> Path:
    """A bundle of ``kind`` for a test, or pytest.skip when its runtime (or, if it must be built, a converter) is
    missing. ``ACULA_TEST_BUNDLES=DIR`` uses prebuilt bundles DIR/heart-KIND (e.g. in a venv without torch; make
    them with ``python tests/runtime_fixtures.py DIR``)."""
    import pytest

    target = kind.split("-")[0]
    if not _has(RUNTIME_MODULE[target]):
        pytest.skip(f"runtime {RUNTIME_MODULE[target]} not installed")
    prebuilt = os.environ.get("ACULA_TEST_BUNDLES")
    if prebuilt and (Path(prebuilt) / f"heart-{kind}" / "manifest.json").is_file():
        return Path(prebuilt) / f"heart-{kind}"
    missing = [m for m in CONVERTER_MODULES[target] if not _has(m)]
    if missing:
        pytest.skip(f"cannot build a {kind} bundle without {missing} (set ACULA_TEST_BUNDLES to prebuilt bundles)")
    return get_bundle(kind)


def heart_like(seconds: float, sample_rate: int = 2000, seed: int = 0, silence: tuple[float, float] | None = None,
               clip: tuple[float, float] | None = None) -> np.ndarray:
    """Seeded heart-like float32 audio: 50/120 Hz bursts at ~72 bpm over low noise; optional silent and
    clipped stretches (start_s, end_s) so quality flags vary along the recording."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    beat = (t * 1.2) % 1.0
    env = np.exp(-((beat - 0.05) / 0.03) ** 2) + 0.7 * np.exp(-((beat - 0.4) / 0.03) ** 2)
    x = 0.2 * env * (np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 120 * t + 1.0))
    x += 0.005 * rng.standard_normal(n)
    if silence:
        x[int(silence[0] * sample_rate):int(silence[1] * sample_rate)] = 0.0
    if clip:
        a, b = int(clip[0] * sample_rate), int(clip[1] * sample_rate)
        x[a:b] = np.clip(x[a:b] * 30.0, -1.0, 1.0)
    return x.astype(np.float32)


if __name__ == "__main__":  # python tests/runtime_fixtures.py OUT_DIR: build every kind as OUT_DIR/heart-KIND
    import sys

    out = Path(sys.argv[1])
    for k in KINDS:
        print(build_bundle(k, out / f"heart-{k}"))
