"""Shared fixtures and markers: real data lives in ../shared/data beside the checkout and is optional."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared beside the checkout; ACULA_SHARED_DIR points elsewhere (e.g. from a git worktree).
SHARED = Path(os.environ.get("ACULA_SHARED_DIR") or Path(__file__).resolve().parents[1].parent / "shared")
SHARED_DATA = SHARED / "data"
PHYSIONET = SHARED_DATA / "physionet2016"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_data = pytest.mark.skip(reason=f"needs real data at {SHARED_DATA} (absent on this machine)")
    has_gpu = any("gpu" in item.keywords for item in items) and _cuda_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "shared_data" in item.keywords and not PHYSIONET.is_dir():
            item.add_marker(skip_data)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core machine a second thread slowed small kernels down ~10x."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def interrupted_then_resumed(monkeypatch):
    """``run(train)``: call ``train()`` with a crash (KeyboardInterrupt) right after its first saved training
    state (the loop shared by align and distill), then call it again (it resumes) and return what the second call returns."""
    from acula_edge import training as train_mod

    def run(train):
        real_save = train_mod.save_training_state

        def save_then_crash(*a, **k):
            real_save(*a, **k)
            raise KeyboardInterrupt

        monkeypatch.setattr(train_mod, "save_training_state", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            train()
        monkeypatch.setattr(train_mod, "save_training_state", real_save)
        return train()

    return run


def assert_same_weights(checkpoint_a: Path, checkpoint_b: Path) -> None:
    """The two checkpoint folders hold the same weights (names and values)."""
    import torch

    from acula_edge.checkpoint import load_checkpoint

    a, _ = load_checkpoint(checkpoint_a)
    b, _ = load_checkpoint(checkpoint_b)
    assert list(a.state_dict()) == list(b.state_dict())
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


@pytest.fixture(scope="session")
def physionet_dir() -> Path:
    if not PHYSIONET.is_dir():
        pytest.skip(f"needs {PHYSIONET}")
    return PHYSIONET


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
