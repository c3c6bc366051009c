"""Reliability under faults: untrusted checkpoints are never unpickled, checkpoints of another architecture give a
mismatch report, and a process killed in the middle of a write (export, checkpoint, cache) leaves the previous
good state in place and the next run succeeds.

Kills are real SIGKILLs of a subprocess: once at a random moment of a running ``acula-edge export``, and at fixed
points of the atomic-write primitives every artifact goes through (``acula_edge.atomic.write_bytes`` for training
states, best weights and caches; ``atomic_dir`` for bundles and checkpoint folders), including between the two
renames that swap a folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402
from acula_edge import atomic  # noqa: E402
from acula_edge.errors import BundleError, CheckpointError  # noqa: E402

torch = pytest.importorskip("torch")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


# -- never unpickle --------------------------------------------------------------------------------------------------


class Bomb:
    """Unpickling this runs code: it creates ``marker``. Safe loaders must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture
def bomb(tmp_path) -> tuple[Path, Path]:
    """(a torch .pt file whose 'model' entry is a Bomb, the marker file it would create)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "state.pt"
    torch.save({"model": {"w": Bomb(marker)}, "step": 1, "epoch": 0, "state_dict": {"w": Bomb(marker)}}, path)
    return path, marker


def test_training_state_loader_refuses_pickled_code(bomb):
    """The one loader align and distill resume through (acula_edge.training.run_training)."""
    from acula_edge.training import load_training_state

    path, marker = bomb
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="cannot load training state safely"):
        load_training_state(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert not marker.exists()


def test_weight_file_readers_refuse_pickled_code(bomb, tmp_path):
    from acula_edge.align.pretrained import read_state_dict
    from acula_edge.distill.teachers import TeacherOutputs

    path, marker = bomb
    with pytest.raises(CheckpointError, match="cannot be read safely with weights_only=True"):
        read_state_dict(path)
    # a pickle renamed to a checkpoint folder's weights file: safetensors, never torch.load
    folder = _student_checkpoint(tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(path.read_bytes())
    from acula_edge.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="unreadable or corrupt safetensors file"):
        load_checkpoint(folder)
    # teacher outputs with an object array (np.load allow_pickle=False)
    np.savez(tmp_path / "outputs.npz", record_id=np.array([Bomb(marker)], dtype=object),
             window_index=np.zeros(1, np.int64), embedding=np.zeros((1, 4), np.float32))
    with pytest.raises(CheckpointError, match="unreadable teacher-outputs file"):
        TeacherOutputs.load(tmp_path / "outputs.npz")
    assert not marker.exists()


def test_the_bomb_is_live_when_loaded_unsafely(bomb):
    """Control: the file really runs code when unpickled, so the refusals above are what kept the marker away."""
    path, marker = bomb
    torch.load(path, weights_only=False)
    assert marker.exists()


# -- another architecture --------------------------------------------------------------------------------------------


def _student_checkpoint(folder: Path, channels: tuple[int, ...] = (8, 8)) -> Path:
    import dataclasses

    from acula_edge.checkpoint import CheckpointInfo, save_checkpoint
    from acula_edge.distill.students import ARCHITECTURE, DSCNNStudent, StudentConfig
    from acula_edge.frontend import preset

    torch.manual_seed(0)
    cfg = StudentConfig(channels=channels, strides=((2, 2),) + ((1, 1),) * (len(channels) - 1), stem_kernel=(3, 3),
                        embedding_dim=16, num_classes=2)
    fe, win = preset("heart")
    info = CheckpointInfo(kind="student", architecture=ARCHITECTURE, model_config=cfg.to_dict(), frontend=fe,
                          windowing=win, labels=("normal", "abnormal"), embedding_dim=16)
    save_checkpoint(DSCNNStudent(cfg).eval(), dataclasses.replace(info), folder)
    return folder


def test_weights_of_another_architecture_give_a_mismatch_report(tmp_path):
    from safetensors.torch import save_file

    from acula_edge.checkpoint import load_checkpoint
    from acula_edge.training import load_training_state, save_training_state

    folder = _student_checkpoint(tmp_path / "student")
    from acula_edge.frontend import preset

    fe, win = preset("heart")
    other = rf.tiny_model(fe, win)  # the runtime tests' CNN: other layer names and shapes
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="weights do not match the architecture") as e:
        load_checkpoint(folder)
    assert "missing (e.g. [" in str(e.value) and "unexpected (e.g. ['conv1.bias'" in str(e.value)
    # a training state of another architecture (align's resume path relies on load_training_state alone)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    save_training_state(tmp_path / "state.pt", model=other, optimizer=opt, scheduler=None, step=3, epoch=0)
    from acula_edge.distill.students import DSCNNStudent

    student = load_checkpoint(_student_checkpoint(tmp_path / "s2"))[0]
    with pytest.raises(CheckpointError, match="weights do not match the architecture"):
        load_training_state(tmp_path / "state.pt", model=student,
                            optimizer=torch.optim.SGD(student.parameters(), lr=0.1))
    assert isinstance(student, DSCNNStudent)


# -- killed writers --------------------------------------------------------------------------------------------------

KILL_SNIPPET = r"""
import os, signal, sys
from pathlib import Path
from acula_edge import atomic

where, target = sys.argv[1], Path(sys.argv[2])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_replace, real_exchange = os.replace, atomic._exchange
replaces = []

def replace(src, dst):
    replaces.append(src)
    if where == "file rename" or (where == "between the two renames" and len(replaces) == 2):
        die()
    return real_replace(src, dst)

def exchange(a, b):
    if where == "before the swap":
        die()
    if where == "between the two renames":  # the fallback where renameat2 is missing
        return False
    done = real_exchange(a, b)
    if where == "after the swap":
        die()
    return done

os.replace, atomic._exchange = replace, exchange
if where == "file rename":
    atomic.write_bytes(target, b"new" * 1000)
else:
    with atomic.atomic_dir(target) as tmp:
        (tmp / "manifest.json").write_text('{"schema_version": 2, "tag": "new"}')
"""


def _run_until_killed(*args: str) -> int:
    proc = subprocess.run([sys.executable, "-c", KILL_SNIPPET, *args], env=ENV, capture_output=True, timeout=60)
    return proc.returncode


def test_killed_file_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "cache.npz"
    target.write_bytes(b"old")
    assert _run_until_killed("file rename", str(target)) == -signal.SIGKILL
    assert target.read_bytes() == b"old"
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".cache.npz.") and leftovers[0].endswith(".tmp")
    atomic.write_bytes(target, b"next")  # the next write of the same file removes the dead writer's temporary
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"] and target.read_bytes() == b"next"


def _marker(tag: str) -> str:
    """A manifest.json that marks its folder as a bundle (atomic_dir replaces only folders acula-edge wrote)."""
    return '{"schema_version": 2, "tag": "%s"}' % tag


@pytest.mark.parametrize("where,expected", [("before the swap", "old"), ("after the swap", "new")])
def test_killed_folder_swap_leaves_a_whole_folder_at_its_path(tmp_path, where, expected):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "manifest.json").write_text(_marker("old"))
    assert _run_until_killed(where, str(target)) == -signal.SIGKILL
    assert (target / "manifest.json").read_text() == _marker(expected)
    # the temporary folder is left beside it (the new content before the swap, the old after it)
    leftovers = list(tmp_path.glob(".bundle.*.partial"))
    other = {"old": "new", "new": "old"}[expected]
    assert len(leftovers) == 1 and (leftovers[0] / "manifest.json").read_text() == _marker(other)
    with atomic.atomic_dir(target) as new:  # the next write of the folder removes the dead writer's temporary
        (new / "manifest.json").write_text(_marker("next"))
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_temporaries_of_running_writers_are_left_alone(tmp_path):
    live = tmp_path / f".bundle.{os.getpid()}.abc.partial"
    live.mkdir()
    other_name = tmp_path / ".other.999999999.abc.partial"  # another target's temporary: not this write's business
    other_name.mkdir()
    with atomic.atomic_dir(tmp_path / "bundle") as new:
        (new / "manifest.json").write_text(_marker("x"))
    assert live.is_dir() and other_name.is_dir()


def test_without_renameat2_a_kill_between_the_renames_keeps_the_old_folder_aside(tmp_path):
    """The portable fallback (two renames) has a window: the old folder survives, but under .<name>.old-<pid>."""
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "manifest.json").write_text(_marker("old"))
    assert _run_until_killed("between the two renames", str(target)) == -signal.SIGKILL
    aside = list(tmp_path.glob(".bundle.old-*"))
    assert not target.exists() and len(aside) == 1 and (aside[0] / "manifest.json").read_text() == _marker("old")
    # the next write of the folder first puts the old folder back (a reader in between finds it again)
    atomic.remove_stale_temporaries(target)
    assert (target / "manifest.json").read_text() == _marker("old")
    assert not list(tmp_path.glob(".bundle.old-*"))


def test_cache_writer_killed_at_random_moments_leaves_a_whole_file(tmp_path):
    """A writer rewriting a 4 MB file in a loop, SIGKILLed at random moments: the file is always one whole
    version, never a mix or a truncation."""
    target = tmp_path / "cache.bin"
    versions = {bytes([v]) * (4 << 20) for v in range(3)}
    loop = (f"from acula_edge import atomic\ni = 0\nwhile True:\n"
            f"    atomic.write_bytes({str(target)!r}, bytes([i % 3]) * (4 << 20))\n    i += 1\n")
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", loop], env=ENV)
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert target.read_bytes() in versions


@pytest.mark.slow
def test_export_killed_midway_keeps_the_previous_bundle(tmp_path):
    """SIGKILL ``acula-edge export`` while it converts into an existing bundle folder: the old bundle still loads
    and verifies; the killed run's temporary ``.bundle.*.partial`` folder stays in the parent (it has no manifest,
    so it can never be loaded as a bundle). A new export is not disturbed by it (temporary folders have unique
    names; exporting over an existing bundle is tested in tests/test_export_gate.py)."""
    from acula_edge.manifest import read_manifest, verify_model_file

    ckpt = _student_checkpoint(tmp_path / "student")
    out = rf.copy_bundle(rf.bundle_or_skip("onnx-fp32"), tmp_path / "bundle")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    cmd = [sys.executable, "-c", "from acula_edge.cli import main; main()", "export", str(ckpt), "--target", "onnx",
           "--out", str(out), "--eval-windows", "4"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    partial: list[Path] = []
    while not partial and proc.poll() is None and time.monotonic() < deadline:
        partial = list(tmp_path.glob(".bundle.*.partial"))
        time.sleep(0.02)
    assert partial, f"the export never started writing (rc {proc.poll()}): {proc.stderr.read().decode()[-2000:]}"
    time.sleep(0.3)  # inside the conversion
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    model = acula_edge.load(out)
    verify_model_file(read_manifest(out), out)
    assert model.classify(rf.heart_like(5.0, 2000), 2000).n_windows == 2
    leftovers = list(tmp_path.glob(".bundle.*.partial"))
    assert leftovers and not (leftovers[0] / "manifest.json").exists()
    with pytest.raises(BundleError, match="no manifest.json"):
        acula_edge.load(leftovers[0])
