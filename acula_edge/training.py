"""The training loop and conventions shared by align/ and distill/ (imports torch).

- Runs single-process or under ``torchrun --nproc-per-node N``: :func:`init_distributed` reads torchrun's
  environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts DDP with gloo on CPU or nccl on GPU; :func:`wrap_ddp`.
- :func:`run_training` is the one resumable loop: epochs of optimizer steps, gradient clipping, the schedule, a
  progress bar, the JSONL log (:data:`LOG_NAME`, rank 0 only) and the exact-resume state (:data:`STATE_NAME`),
  refused when the run's config key changed. A :class:`LoopTask` brings only the model's data, loss and
  per-epoch evaluation.
- :func:`save_training_state` / :func:`load_training_state` hold everything needed for an exact resume (model,
  optimizer, scheduler, step, RNG states), written atomically and read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from acula_edge import atomic
from acula_edge.config import changed_fields, hash_fields
from acula_edge.errors import CheckpointError, ConfigError

STATE_NAME = "state.pt"  # exact-resume state in a run folder
LOG_NAME = "train_log.jsonl"  # JSONL log in a run folder
LEGACY_LOG_NAMES = ("log.jsonl",)  # what older distill run folders called it; renamed on resume


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


def open_log(run_dir: str | os.PathLike, env: DistEnv | None = None) -> JsonlLog:
    """The run folder's :data:`LOG_NAME` log. A folder written by an older version holds ``log.jsonl``: it is
    renamed, so a resumed run keeps one log under one name."""
    path = Path(run_dir) / LOG_NAME
    if (env is None or env.is_main) and not path.exists():
        for old in LEGACY_LOG_NAMES:
            if (Path(run_dir) / old).is_file():
                os.replace(Path(run_dir) / old, path)
                break
    return JsonlLog(path, env)


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
                        scheduler: Any | None = None, what: str = "model") -> tuple[int, int, dict[str, Any]]:
    """Restore a state written by save_training_state; returns (step, epoch, extra). Never unpickles objects.
    ``what`` names the model in the message when the state holds another architecture."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot load training state safely ({type(e).__name__}: {e}); delete it to "
                              f"start over") from e
    from acula_edge.checkpoint import check_state_dict

    try:
        check_state_dict(unwrap(model), state["model"], str(path))
    except CheckpointError as e:  # a run of another architecture: the mismatch report, and what to do
        raise CheckpointError(f"{e}. The run folder holds a run of another {what} architecture: delete "
                              f"{Path(path).parent} or choose another --out") from e
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


def wrap_ddp(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under torchrun (its own GPU when on CUDA); the model itself otherwise."""
    if not env.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.local_rank] if env.device != "cpu"
                                                     else None)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        torch.distributed.barrier()


@dataclass(frozen=True)
class LoopConfig:
    """How :func:`run_training` runs: the schedule's length, logging, checkpoints and what a resume must match."""

    desc: str  # progress-bar label
    epochs: int
    steps_per_epoch: int  # optimizer steps per epoch on every rank
    resume_fields: dict[str, Any]  # JSON-able fields a resumed run must share (their hash is the resume key)
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    grad_clip: float = 0.0  # max global gradient norm (0 = off)
    log_every: int = 0  # optimizer steps between "step" log records (0 = an "epoch" record only)
    checkpoint_every: int = 0  # optimizer steps between resume states (0 = at epoch ends only)
    progress: bool = True  # tqdm bar on rank 0 (stderr)


@dataclass
class StepResult:
    """What one optimizer step's forward and backward passes gave (means over its micro-batches)."""

    loss: float
    parts: dict[str, float] = field(default_factory=dict)  # the loss's terms, logged beside it
    windows: int = 0  # windows this rank processed (for windows_per_s)


class LoopTask(Protocol):
    """What a trainer brings to :func:`run_training`: its data, loss and per-epoch evaluation."""

    what: str  # names the model in errors ("student", "teacher")

    def begin_epoch(self, epoch: int) -> None:
        """Prepare the data order of ``epoch`` (0-based); called again when a run resumes inside it."""

    def train_step(self, epoch: int, epoch_step: int, step: int) -> StepResult:
        """Forward and backward passes of optimizer step ``epoch_step`` of ``epoch`` (``step`` done so far);
        the loop then clips, steps the optimizer and the schedule."""

    def end_epoch(self, epochs_done: int) -> tuple[dict[str, Any], bool]:
        """Evaluate and select after an epoch: (fields for its log record, whether to stop early)."""

    def state(self) -> dict[str, Any]:
        """JSON-able task state saved with the resume state (e.g. the best validation score so far)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (and any files :meth:`save_files` wrote) on resume."""

    def save_files(self) -> None:
        """Rank 0, just before each resume state: write the task's own files (so a state never pairs with older
        ones)."""


@dataclass(frozen=True)
class LoopResult:
    step: int  # optimizer steps done in all
    epoch: int  # epochs finished
    last_loss: float | None  # loss of the last step run in this call (None when it ran none)
    stopped_early: bool


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def run_training(task: LoopTask, cfg: LoopConfig, *, env: DistEnv, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, clip_params: list[torch.nn.Parameter],
                 state_path: Path, log: JsonlLog, resume: bool, start_record: dict[str, Any],
                 run_files: tuple[Path, ...] = ()) -> LoopResult:
    """Train ``model`` (DDP-wrapped by the task) for ``cfg.epochs`` epochs of ``cfg.steps_per_epoch`` steps.

    Resumes exactly from ``state_path`` when ``resume`` and it exists, after checking that the state holds the same
    architecture and was written with the same :attr:`LoopConfig.resume_fields` (ConfigError naming what changed
    otherwise). A fresh run first removes ``state_path``, the per-rank RNG files and ``run_files`` (the task's own
    files of an older run) and logs ``start_record``. Log records: start/resume, "step" every ``log_every`` steps,
    "epoch" (epoch means of the loss terms as ``train_*`` plus the task's fields), "early_stop"."""
    key = hash_fields(cfg.resume_fields)
    step = epoch = epoch_step = 0
    sums: dict[str, float] = {}
    stopped = False
    if not (resume and state_path.is_file()) and env.is_main:
        for stale in (state_path, *run_files, *state_path.parent.glob(f"{state_path.stem}.rank*.rng")):
            stale.unlink(missing_ok=True)  # a fresh run must never pick up an older run's weights
    barrier(env)
    if resume and state_path.is_file():
        step, epoch, extra = load_training_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                                 what=task.what)
        if extra.get("resume_key") != key:
            changes = changed_fields(extra.get("resume_fields", {}), cfg.resume_fields) \
                if "resume_fields" in extra else ["written by an older version"]
            raise ConfigError(f"{state_path} was written by a different configuration ({'; '.join(changes)}); "
                              f"delete it (or pass resume=False / --no-resume) to start over")
        epoch_step = int(extra.get("epoch_step", 0))
        sums = {k: float(v) for k, v in extra.get("epoch_sums", {}).items()}
        stopped = bool(extra.get("stopped", False))
        rank_rng = _rank_rng_path(state_path, env)
        if not env.is_main and rank_rng.is_file():  # rank 0's RNG came back with the state itself
            torch.set_rng_state(torch.load(rank_rng, weights_only=True))
        task.restore(extra.get("task", {}))
        log.write(event="resume", step=step, epoch=epoch, epoch_step=epoch_step)
    else:
        log.write(event="start", world_size=env.world_size, steps_per_epoch=cfg.steps_per_epoch, **start_record)

    def checkpoint() -> None:
        """Rank 0 writes the exact-resume state; every other rank writes its own torch RNG state beside it (each
        rank draws its own dropout and masks), so a resumed multi-process run draws what an uninterrupted one
        would."""
        if env.is_main:
            task.save_files()
            save_training_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                                epoch=epoch, extra={"epoch_step": epoch_step, "resume_key": key,
                                                    "resume_fields": cfg.resume_fields, "epoch_sums": sums,
                                                    "stopped": stopped, "task": task.state()})
        else:
            import io

            buf = io.BytesIO()
            torch.save(torch.get_rng_state(), buf)
            atomic.write_bytes(_rank_rng_path(state_path, env), buf.getvalue())

    total = cfg.steps_per_epoch * cfg.epochs
    stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
    from tqdm.auto import tqdm

    bar = tqdm(total=stop_at, initial=min(step, stop_at), desc=cfg.desc, unit="step", dynamic_ncols=True,
               leave=False, file=sys.stderr,
               # a bar needs a terminal: in a pipe or a CI log its redraws are one endless line of noise
               disable=not (cfg.progress and env.is_main and step < stop_at and _is_terminal(sys.stderr)))
    last_loss = None
    t0, seen = time.perf_counter(), 0
    while step < stop_at and epoch < cfg.epochs and not stopped:
        task.begin_epoch(epoch)
        model.train()
        while epoch_step < cfg.steps_per_epoch and step < stop_at:
            out = task.train_step(epoch, epoch_step, step)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(clip_params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            epoch_step += 1
            last_loss = float(out.loss)
            if not math.isfinite(last_loss):
                raise ConfigError(f"the loss became {last_loss} at step {step}; lower the learning rate "
                                  f"({scheduler.base_lrs[0]}) or check the data")
            terms = {"loss": last_loss, **{k: float(v) for k, v in out.parts.items()}}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            seen += out.windows
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if cfg.log_every and (step % cfg.log_every == 0 or step == stop_at):
                reduced = {k: all_reduce_mean(v, env) for k, v in sorted(terms.items())}  # every rank gets here
                elapsed = time.perf_counter() - t0
                log.write(event="step", step=step, epoch=epoch, lr=scheduler.get_last_lr()[0],
                          windows_per_s=seen * env.world_size / max(elapsed, 1e-9), **reduced)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint()
        if epoch_step >= cfg.steps_per_epoch:
            epoch, epoch_step = epoch + 1, 0
            means = {f"train_{k}": all_reduce_mean(v / cfg.steps_per_epoch, env) for k, v in sorted(sums.items())}
            sums = {}
            fields, stopped = task.end_epoch(epoch)
            log.write(event="epoch", epoch=epoch, step=step, lr=scheduler.get_last_lr()[0], **means, **fields)
        checkpoint()
        if stopped:
            log.write(event="early_stop", epoch=epoch, step=step)
    bar.close()
    return LoopResult(step, epoch, last_loss, stopped)


def _rank_rng_path(state_path: Path, env: DistEnv) -> Path:
    return state_path.with_name(f"{state_path.stem}.rank{env.rank}.rng")
