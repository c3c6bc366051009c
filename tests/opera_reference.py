"""OPERA's own code (../shared/vendor/opera, MIT), imported from where it lies, as the reference for tests.

Nothing here is a copy of upstream: :func:`opera_modules` imports OPERA's ``src.model.models_mae`` from the vendor
folder, and :func:`opera_preprocess` is OPERA's ``pre_process_audio_mel_t`` taken from ``src/util.py`` by name and
compiled on its own (that module also imports torchaudio, matplotlib and seaborn, which its preprocessing does not
use: torchaudio does not load with torch 2.13 here).

Two things upstream needs are arranged as its README says, without touching any installed package:
- OPERA's modified ``swin_transformer.py`` is what ``timm.models.swin_transformer`` resolves to (their
  prepare_code.sh copies it into timm);
- timm imports torchvision at import time for data transforms and ``FrozenBatchNorm2d``, none of which the MAE
  encoder or its Swin decoder use; PyPI's torchvision wheels need a CUDA torch, so where torchvision cannot be
  imported an inert module stands in for it.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

VENDOR = Path(os.environ.get("ACULA_OPERA_VENDOR",
                             Path(__file__).resolve().parents[1].parent / "shared" / "vendor" / "opera"))

# OPERA-GT's constructor call (src/benchmark/model_util.initialize_pretrained_model, "operaGT").
OPERA_GT_KWARGS = dict(norm_pix_loss=False, in_chans=1, audio_exp=True, img_size=(256, 64), alpha=0.0, mode=0,
                       use_custom_patch=False, split_pos=False, pos_trainable=False, use_nce=False, decoder_mode=1,
                       mask_2d=False, mask_t_prob=0.7, mask_f_prob=0.3, no_shift=False)


class _Inert(type):
    """A class whose every attribute is another inert class (stands in for unused torchvision names)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(name, (), {})


class _InertTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attr(name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return _Inert(name, (), {})

        module.__getattr__ = attr  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _drop_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _import_timm_and_opera() -> types.ModuleType:
    """Import timm (with the inert torchvision only while importing, so later tests never see it) and OPERA."""
    finder = None
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or a CUDA build that fails to load its operators
        _drop_torchvision()
        finder = _InertTorchvision()
        sys.meta_path.insert(0, finder)
    try:
        pytest.importorskip("timm")
        swin = VENDOR / "src" / "model" / "mae_utils" / "swin_transformer.py"
        spec = importlib.util.spec_from_file_location("timm.models.swin_transformer", swin)
        module = importlib.util.module_from_spec(spec)
        sys.modules["timm.models.swin_transformer"] = module
        spec.loader.exec_module(module)
        sys.path.insert(0, str(VENDOR))
        from src.model import models_mae  # type: ignore[import-not-found]
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
            _drop_torchvision()
    return models_mae


def opera_modules() -> types.ModuleType:
    """OPERA's ``src.model.models_mae`` (skips the test when the vendor folder or timm / Lightning is absent)."""
    if not (VENDOR / "src" / "model" / "models_mae.py").is_file():
        pytest.skip(f"OPERA's code is not at {VENDOR} (../shared/vendor/opera)")
    pytest.importorskip("pytorch_lightning")
    if "src.model.models_mae" in sys.modules:
        return sys.modules["src.model.models_mae"]
    return _import_timm_and_opera()  # (forward_feature, the reference, never calls torch.cuda.synchronize)


def opera_preprocess() -> Any:
    """OPERA's ``pre_process_audio_mel_t`` from ``src/util.py`` (needs librosa)."""
    librosa = pytest.importorskip("librosa")
    import numpy as np

    path = VENDOR / "src" / "util.py"
    if not path.is_file():
        pytest.skip(f"OPERA's code is not at {VENDOR}")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "pre_process_audio_mel_t")
    namespace: dict[str, Any] = {"librosa": librosa, "np": np}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["pre_process_audio_mel_t"]


def save_lightning_checkpoint(model: Any, path: Path) -> Path:
    """Save ``model`` (a LightningModule) as upstream's training does: Lightning's ``Trainer.save_checkpoint``."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(str(path))
    return path
