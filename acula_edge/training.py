"""Training conventions shared by align/ and distill/ (imports torch).

- Runs single-process or under ``torchrun --nproc-per-node N``: :func:`init_distributed` reads torchrun's
  environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts DDP with gloo on CPU or nccl on GPU.
- :class:`JsonlLog` appends one JSON object per line (rank 0 only).
- :func:`save_training_state` / :func:`load_training_state` hold everything needed for an exact resume (model,
  optimizer, scheduler, step, RNG states), written atomically and read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acula_edge import atomic
from acula_edge.errors import CheckpointError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistEnv:
    """Start torch.distributed when launched by torchrun (WORLD_SIZE > 1); otherwise a single-process env.

    ``device``: "cpu", "cuda" or None (cuda when available).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = f"cuda:{local}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch; each rank gets its own stream (seed + rank)."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def all_reduce_mean(value: float, env: DistEnv) -> float:
    """Mean of a scalar over ranks (identity when single-process)."""
    if not env.distributed:
        return float(value)
    t = torch.tensor([float(value)], device=env.device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / env.world_size


class JsonlLog:
    """Append-only JSONL log of training events; writes only on the main rank."""

    def __init__(self, path: str | os.PathLike, env: DistEnv | None = None) -> None:
        self.path = Path(path)
        self.enabled = env is None or env.is_main
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True, default=float) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def save_training_state(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any | None, step: int, epoch: int, extra: dict[str, Any] | None = None) -> None:
    """Atomically write an exact-resume state (tensors, numbers and strings only: loadable with weights_only)."""
    import io

    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(_numpy_state_to_json(np.random.get_state())),
        "python_rng": json.dumps(random.getstate()),
        "extra": json.dumps(extra or {}),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic.write_bytes(path, buf.getvalue())


def load_training_state(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any | None = None) -> tuple[int, int, dict[str, Any]]:
    """Restore a state written by save_training_state; returns (step, epoch, extra). Never unpickles objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot load training state safely ({type(e).__name__}: {e}); delete it to "
                              f"start over") from e
    from acula_edge.checkpoint import check_state_dict

    check_state_dict(unwrap(model), state["model"], str(path))  # a run of another architecture: a mismatch report
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(_numpy_state_from_json(json.loads(state["numpy_rng"])))
    py = json.loads(state["python_rng"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), int(state["epoch"]), json.loads(state["extra"])


def _numpy_state_to_json(st: tuple) -> list:
    return [st[0], st[1].tolist(), int(st[2]), int(st[3]), float(st[4])]


def _numpy_state_from_json(js: list) -> tuple:
    return (js[0], np.array(js[1], dtype=np.uint32), js[2], js[3], js[4])


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> Any:
    """Linear warm-up then cosine decay to 0, stepped once per optimizer step."""
    import math

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
