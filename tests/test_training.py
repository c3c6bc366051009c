"""acula_edge.training.run_training on a toy task: exact resume mid-epoch, the log records, early stopping, a
changed run refused with the change named, and a fresh run clearing an older run's files."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from acula_edge.errors import CheckpointError, ConfigError  # noqa: E402
from acula_edge.training import (STATE_NAME, DistEnv, LoopConfig, StepResult, open_log, read_jsonl,  # noqa: E402
                                 run_training, warmup_cosine)


class ToyTask:
    """Fits y = 2x with noise drawn from the global torch RNG (so a resume must restore it); stops early when told."""

    what = "toy"

    def __init__(self, model: torch.nn.Module, stop_after: int = 0) -> None:
        self.model, self.stop_after, self.epochs_seen = model, stop_after, 0
        self.x = torch.linspace(-1, 1, 32)[:, None]

    def begin_epoch(self, epoch: int) -> None:
        self.order = torch.randperm(32, generator=torch.Generator().manual_seed(epoch))

    def train_step(self, epoch: int, epoch_step: int, step: int) -> StepResult:
        idx = self.order[epoch_step * 8:(epoch_step + 1) * 8]
        x = self.x[idx] + 0.1 * torch.randn(len(idx), 1)
        loss = torch.nn.functional.mse_loss(self.model(x), 2 * self.x[idx])
        loss.backward()
        return StepResult(float(loss.detach()), {"half": float(loss.detach()) / 2}, len(idx))

    def end_epoch(self, epochs_done: int) -> tuple[dict[str, Any], bool]:
        self.epochs_seen += 1
        return {"seen": self.epochs_seen}, bool(self.stop_after and epochs_done >= self.stop_after)

    def state(self) -> dict[str, Any]:
        return {"epochs_seen": self.epochs_seen}

    def restore(self, state: dict[str, Any]) -> None:
        self.epochs_seen = state["epochs_seen"]

    def save_files(self) -> None:
        pass


LOOP = LoopConfig(desc="toy", epochs=3, steps_per_epoch=4, resume_fields={"lr": 0.1}, log_every=2,
                  checkpoint_every=3, progress=False)


def _run(folder, loop=LOOP, stop_after=0, resume=True, hidden=4, run_files=()):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    task = ToyTask(model, stop_after)
    done = run_training(task, loop, env=DistEnv(), model=model, optimizer=opt,
                        scheduler=warmup_cosine(opt, 1, loop.steps_per_epoch * loop.epochs),
                        clip_params=list(model.parameters()), state_path=folder / STATE_NAME,
                        log=open_log(folder), resume=resume, start_record={"what": "toy"}, run_files=run_files)
    return done, model


def test_a_run_stopped_mid_epoch_resumes_exactly(tmp_path):
    straight, a = _run(tmp_path / "a")
    assert (straight.step, straight.epoch, straight.stopped_early) == (12, 3, False)
    first, _ = _run(tmp_path / "b", dataclasses.replace(LOOP, max_steps=5))  # stops inside epoch 2
    assert (first.step, first.epoch) == (5, 1)
    resumed, b = _run(tmp_path / "b")
    assert resumed.step == 12
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, atol=0, rtol=0)
    log_a, log_b = read_jsonl(tmp_path / "a" / "train_log.jsonl"), read_jsonl(tmp_path / "b" / "train_log.jsonl")
    assert [r["event"] for r in log_a] == ["start", "step", "step", "epoch", "step", "step", "epoch", "step",
                                           "step", "epoch"]
    assert log_a[0]["steps_per_epoch"] == 4 and log_a[0]["world_size"] == 1 and log_a[0]["what"] == "toy"
    # the epoch records of the interrupted run equal the uninterrupted ones (epoch means carried over the resume)
    strip = ("time",)
    epochs_a = [{k: v for k, v in r.items() if k not in strip} for r in log_a if r["event"] == "epoch"]
    epochs_b = [{k: v for k, v in r.items() if k not in strip} for r in log_b if r["event"] == "epoch"]
    assert epochs_a == epochs_b and epochs_a[1]["seen"] == 2
    assert epochs_a[0]["train_half"] == pytest.approx(epochs_a[0]["train_loss"] / 2)
    assert [r for r in log_b if r["event"] == "resume"][0]["epoch_step"] == 1


def test_a_changed_run_is_refused_naming_the_change_and_run_only_settings_resume(tmp_path):
    _run(tmp_path, dataclasses.replace(LOOP, max_steps=2))
    more = dataclasses.replace(LOOP, max_steps=4, log_every=1, checkpoint_every=1)  # not in resume_fields
    assert _run(tmp_path, more)[0].step == 4
    with pytest.raises(ConfigError, match=r"state.pt was written by a different configuration \(lr: 0.1 -> 0.5\)"):
        _run(tmp_path, dataclasses.replace(LOOP, resume_fields={"lr": 0.5}))
    with pytest.raises(CheckpointError, match="holds a run of another toy architecture: delete"):
        _run(tmp_path, hidden=5)


def test_early_stop_is_logged_saved_and_kept_on_resume(tmp_path):
    done, _ = _run(tmp_path, stop_after=2)
    assert (done.step, done.epoch, done.stopped_early) == (8, 2, True)
    assert [r["event"] for r in read_jsonl(tmp_path / "train_log.jsonl")][-2:] == ["epoch", "early_stop"]
    again, _ = _run(tmp_path, stop_after=2)
    assert (again.step, again.last_loss) == (8, None)  # nothing more to train


def test_a_fresh_run_clears_the_older_run_files(tmp_path):
    _run(tmp_path, dataclasses.replace(LOOP, max_steps=3))
    old = tmp_path / "best.bin"
    old.write_bytes(b"older run")
    done, _ = _run(tmp_path, resume=False, run_files=(old,))
    assert done.step == 12 and not old.exists()
    assert [r["event"] for r in read_jsonl(tmp_path / "train_log.jsonl")].count("start") == 2


def test_the_progress_bar_shows_on_a_terminal_only(tmp_path, capfd, monkeypatch):
    import dataclasses
    import sys

    loop = dataclasses.replace(LOOP, progress=True)
    _run(tmp_path / "pipe", loop)  # stderr is a pipe under pytest: no bar redraws in a log
    assert "toy" not in capfd.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _run(tmp_path / "tty", loop)
    assert "toy" in capfd.readouterr().err  # the bar, with the loop's description
