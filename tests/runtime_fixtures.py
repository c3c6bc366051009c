"""Tiny exported bundles for the runtime tests (and benchmarks/stream_rtf.py), built with the real converters.

Until ``acula_edge.export`` offers an API, a bundle is made here: a tiny seeded CNN with the model contract
(``forward(x: (1, 1, frames, n_mels)) -> (embedding (1, D), logits (1, C))``), converted with
``torch.onnx.export(dynamo=True)``, ``litert_torch.convert`` (fp32, and full int8 via PT2E), ExecuTorch (XNNPACK)
or TFLite Micro (the int8 .tflite file), plus a manifest from :func:`acula_edge.manifest.write_manifest`.

Built bundles are cached under a folder keyed by the builder functions' source and the torch version, so a second test run
does not convert again (conversion takes seconds per bundle on two cores).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from acula_edge import atomic
from acula_edge.frontend import FrontendConfig, Windowing, preset
from acula_edge.manifest import Manifest, Prompts, TensorSpec, write_manifest

KINDS = ("onnx-fp32", "tflite-fp32", "tflite-int8", "executorch-fp32", "tflm-int8")
LABELS = ("normal", "abnormal")
EMBED_DIM = 12
PROMPT_TEXTS = ("a normal heart sound", "a heart murmur", "background noise")


def _cache_root() -> Path:
    import torch

    import inspect

    src = "".join(inspect.getsource(f) for f in (tiny_model, calibration_windows, _export, _tflite_io, build_bundle))
    key = hashlib.sha256((src + torch.__version__).encode()).hexdigest()[:12]
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
    """(n, 1, frames, n_mels) log-mel windows of seeded noise bursts, for int8 calibration."""
    from acula_edge.windows import recording_windows

    rng = np.random.default_rng(seed)
    ws = windowing.window_samples(frontend)
    out = []
    for i in range(n):
        x = rng.standard_normal(ws).astype(np.float32) * np.float32(0.05 * (i + 1))
        x[: ws // 4] *= 0.1
        out.append(recording_windows(x, frontend, windowing)[0])
    return np.stack(out)[:, None]


def _export(kind: str, model, example, calib: np.ndarray, path: Path) -> dict:
    """Convert ``model`` to ``path``; returns extra manifest fields (io quantization)."""
    import torch

    if kind == "onnx-fp32":
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["x"],
                          output_names=["embedding", "logits"], external_data=False, verbose=False)
        return {}
    if kind == "tflite-fp32":
        import litert_torch

        litert_torch.convert(model, (example,)).export(str(path))
        return {}
    if kind in ("tflite-int8", "tflm-int8"):
        import litert_torch
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        ep = torch.export.export(model, (example,)).module()
        prepared = prepare_pt2e(ep, quantizer)
        for row in calib:
            prepared(torch.from_numpy(row[None]))
        converted = convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
            str(path))
        return {}
    if kind == "executorch-fp32":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        ep = torch.export.export(model, (example,))
        prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        path.write_bytes(prog.buffer)
        return {}
    raise ValueError(f"unknown bundle kind {kind!r}; choose from {KINDS}")


def _tflite_io(path: Path) -> tuple[TensorSpec, list[TensorSpec]]:
    """Input/output specs read from a .tflite file (dtype and quantization), names per the model contract."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    sig = it.get_signature_runner()
    ins, outs = sig.get_input_details(), sig.get_output_details()

    def spec(name: str, d: dict) -> TensorSpec:
        scale, zp = d["quantization"]
        dtype = np.dtype(d["dtype"]).name
        return TensorSpec(name, tuple(int(s) for s in d["shape"]), dtype,
                          float(scale) if dtype != "float32" else None, int(zp) if dtype != "float32" else None)

    (in_detail,) = ins.values()
    out_details = [outs[k] for k in sorted(outs)]  # output_0 = embedding, output_1 = logits
    return spec("x", in_detail), [spec(n, d) for n, d in zip(("embedding", "logits"), out_details)]


def build_bundle(kind: str, out_dir: Path, preset_name: str = "heart", seed: int = 0) -> Path:
    """Build a tiny bundle of ``kind`` (see KINDS) in ``out_dir`` (replaced atomically); returns the folder."""
    import torch

    torch.set_num_threads(1)
    frontend, windowing = preset(preset_name)
    frames = windowing.frames_per_window(frontend)
    model = tiny_model(frontend, windowing, seed)
    example = torch.zeros(1, 1, frames, frontend.n_mels)
    calib = calibration_windows(frontend, windowing)
    target, precision = kind.split("-")
    ext = {"onnx": ".onnx", "tflite": ".tflite", "tflm": ".tflite", "executorch": ".pte"}[target]
    with torch.no_grad(), atomic.atomic_dir(out_dir) as tmp:
        model_path = tmp / f"model{ext}"
        _export(kind, model, example, calib, model_path)
        if target in ("tflite", "tflm"):
            in_spec, out_specs = _tflite_io(model_path)
        else:
            in_spec = TensorSpec("x", (1, 1, frames, frontend.n_mels), "float32")
            out_specs = [TensorSpec("embedding", (1, EMBED_DIM), "float32"),
                         TensorSpec("logits", (1, len(LABELS)), "float32")]
        rng = np.random.default_rng(seed + 1)
        emb = rng.standard_normal((len(PROMPT_TEXTS), EMBED_DIM))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        manifest = Manifest(
            target=target, precision=precision, model_file=model_path.name,
            model_sha256=atomic.sha256_file(model_path), frontend=frontend, windowing=windowing,
            inputs=(in_spec,), outputs=tuple(out_specs), labels=LABELS, threshold=0.5,
            prompts=Prompts(texts=PROMPT_TEXTS, embeddings=tuple(tuple(float(v) for v in r) for r in emb),
                            labels=("normal", "abnormal", "")),
            versions={"torch": torch.__version__},
            extra={"arena_bytes": 64 * 1024} if target == "tflm" else {})
        write_manifest(manifest, tmp)
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
