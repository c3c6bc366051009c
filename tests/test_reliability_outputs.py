"""Reliability: an output folder (``--out``) replaces only a folder acula-edge wrote; a user's files are never
deleted, and ``--out .`` (or any folder above the current one) is refused before any work."""

from __future__ import annotations

import json
import os

import pytest

from acula_edge import atomic
from acula_edge.errors import ConfigError


def _user_folder(path):
    path.mkdir()
    (path / "notes.txt").write_text("x\n")
    return path


def test_a_users_folder_is_never_replaced(tmp_path):
    d = _user_folder(tmp_path / "d")
    with pytest.raises(ConfigError, match="not empty and was not written by acula-edge .* refusing to replace it"):
        with atomic.atomic_dir(d) as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert (d / "notes.txt").read_text() == "x\n"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary left behind


def test_a_folder_filled_by_the_user_meanwhile_is_not_replaced(tmp_path):
    d = tmp_path / "d"
    with pytest.raises(ConfigError, match="was not written by acula-edge"):
        with atomic.atomic_dir(d) as tmp:
            (tmp / "manifest.json").write_text("{}")
            _user_folder(d)
    assert (d / "notes.txt").read_text() == "x\n" and not (d / "manifest.json").exists()


@pytest.mark.parametrize("marker,content", [("manifest.json", {"schema_version": 2, "target": "onnx"}),
                                            ("config.json", {"format": "acula-edge-checkpoint", "version": 1})])
def test_a_bundle_or_checkpoint_folder_and_an_empty_folder_are_replaced(tmp_path, marker, content):
    d = tmp_path / "d"
    d.mkdir()
    with atomic.atomic_dir(d) as tmp:  # empty: nothing to lose
        (tmp / marker).write_text(json.dumps(content))
    with atomic.atomic_dir(d) as tmp:  # ours (recognised by its marker)
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in d.iterdir()) == ["new.txt"]


@pytest.mark.parametrize("content", ["not json", json.dumps({"format": "someone-else"}), json.dumps([1])])
def test_a_marker_file_that_is_not_ours_is_not_enough(tmp_path, content):
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.json").write_text(content)
    with pytest.raises(ConfigError, match="was not written by acula-edge"):
        atomic.check_replaceable(d)


def test_current_folder_parents_files_and_links_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("x")
    monkeypatch.chdir(work)
    for out in (".", "./", "..", str(work), str(tmp_path)):
        with pytest.raises(ConfigError, match="current folder or above it"):
            atomic.check_replaceable(out)
    (tmp_path / "file").write_text("y")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        atomic.check_replaceable(tmp_path / "file")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(ConfigError, match="symbolic link"):
        atomic.check_replaceable(tmp_path / "link")
    assert (work / "notes.txt").read_text() == "x" and (tmp_path / "file").read_text() == "y"
    assert atomic.check_replaceable("new-bundle") == atomic.Path("new-bundle")


def test_save_checkpoint_refuses_a_users_folder(tmp_path):
    torch = pytest.importorskip("torch")
    from acula_edge.checkpoint import CheckpointInfo, save_checkpoint
    from acula_edge.frontend import preset

    fe, win = preset("heart")
    info = CheckpointInfo(kind="student", architecture="acula_edge.x:Y", model_config={}, frontend=fe,
                          windowing=win, labels=("a", "b"), embedding_dim=2)
    d = _user_folder(tmp_path / "d")
    with pytest.raises(ConfigError, match="refusing to replace it"):
        save_checkpoint(torch.nn.Linear(2, 2), info, d)
    assert (d / "notes.txt").read_text() == "x\n"
    save_checkpoint(torch.nn.Linear(2, 2), info, tmp_path / "ck")
    save_checkpoint(torch.nn.Linear(2, 2), info, tmp_path / "ck")  # a checkpoint folder: replaced
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]


def test_cli_export_into_a_users_folder_refuses_and_keeps_the_file(tmp_path):
    """`acula-edge export CKPT --target onnx --out d` with d/notes.txt: exit 2, one line, notes.txt intact."""
    torch = pytest.importorskip("torch")
    import subprocess
    import sys

    from acula_edge.checkpoint import CheckpointInfo, save_checkpoint
    from acula_edge.distill.students import ARCHITECTURE, DSCNNStudent, StudentConfig
    from acula_edge.frontend import preset

    torch.manual_seed(0)
    cfg = StudentConfig(channels=(8, 8), strides=((2, 2), (1, 1)), stem_kernel=(3, 3), embedding_dim=16,
                        num_classes=2)
    fe, win = preset("heart")
    info = CheckpointInfo(kind="student", architecture=ARCHITECTURE, model_config=cfg.to_dict(), frontend=fe,
                          windowing=win, labels=("normal", "abnormal"), embedding_dim=16)
    save_checkpoint(DSCNNStudent(cfg).eval(), info, tmp_path / "ckpt")
    d = _user_folder(tmp_path / "d")
    proc = subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", "export",
                           str(tmp_path / "ckpt"), "--target", "onnx", "--out", str(d), "--eval-windows", "8"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and "was not written by acula-edge" in lines[0], proc.stderr
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"] and (d / "notes.txt").read_text() == "x\n"
    proc = subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", "export",
                           str(tmp_path / "ckpt"), "--target", "onnx", "--out", ".", "--eval-windows", "8"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=d)
    assert proc.returncode == 2 and "current folder or above it" in proc.stderr, proc.stderr
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]


def test_distill_refuses_a_users_folder_before_training(tmp_path):
    pytest.importorskip("torch")
    from acula_edge.distill.train import TrainConfig, train_student

    d = _user_folder(tmp_path / "d")
    with pytest.raises(ConfigError, match="was not written by acula-edge"):
        train_student(TrainConfig(), None, "synthetic:heart?n=4", d, progress=False)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"] and not (tmp_path / "d.run").exists()
