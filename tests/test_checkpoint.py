import json

import pytest

from acula_edge.checkpoint import (CheckpointInfo, load_checkpoint, read_checkpoint_info, resolve_architecture,
                                   save_checkpoint)
from acula_edge.errors import CheckpointError
from acula_edge.frontend import preset

torch = pytest.importorskip("torch")


class TinyModel(torch.nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.width = width
        self.conv = torch.nn.Conv2d(1, width, 3)
        self.head = torch.nn.Linear(width, 2)

    @classmethod
    def from_config(cls, cfg):
        return cls(**cfg)

    def config_dict(self):
        return {"width": self.width}

    def forward(self, x):
        e = self.conv(x).mean(dim=(2, 3), keepdim=True).flatten(1)
        return e, self.head(e)


def info(width=4):
    fe, win = preset("heart")
    return CheckpointInfo(kind="student", architecture="acula_edge.tests_helpers:TinyModel",
                          model_config={"width": width}, frontend=fe, windowing=win, labels=("normal", "abnormal"),
                          embedding_dim=width)


def test_save_then_load_rebuilds_the_model(tmp_path, monkeypatch):
    import sys
    import types

    module = types.ModuleType("acula_edge.tests_helpers")
    module.TinyModel = TinyModel
    monkeypatch.setitem(sys.modules, "acula_edge.tests_helpers", module)
    model = TinyModel(4)
    save_checkpoint(model, info(), tmp_path / "ckpt")
    assert read_checkpoint_info(tmp_path / "ckpt") == info()
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(1, 1, 10, 8)
    assert torch.equal(loaded(x)[1], model.eval()(x)[1])
    # a checkpoint of another size gives a report of every mismatch, not a bare torch error
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["model_config"]["width"] = 6
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="weights do not match the architecture.*other shapes"):
        load_checkpoint(tmp_path / "ckpt")


def test_foreign_architectures_are_refused():
    with pytest.raises(CheckpointError, match="must be 'acula_edge"):
        resolve_architecture("os:system")


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import acula_edge.atomic as atomic

    monkeypatch.setitem(__import__("sys").modules, "acula_edge.tests_helpers",
                        type("M", (), {"TinyModel": TinyModel}))
    save_checkpoint(TinyModel(4), info(), tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(TinyModel(4), info(), tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        read_checkpoint_info(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not an acula-edge checkpoint"):
        read_checkpoint_info(tmp_path)
