"""Training a student: :func:`train_student` (single process or under torchrun, exact resume, JSONL log).

Flow: split a validation set off the training data (whole groups when the data has the group column, else whole
recordings, stratified) -> log-mel windows keyed by (recording, window) -> teacher outputs (cached) and, when the
teacher has no head for these labels, a linear probe on its embeddings -> epochs of augmented student updates ->
model selection and early stopping on the validation split only -> the operating point (decision threshold) chosen on
the validation recordings, scored as the device scores them (:func:`choose_operating_point`) -> a student checkpoint
folder.

Training runs in the loop shared with align (:func:`acula_edge.training.run_training`). The run folder
(``<out>.run`` unless given) holds ``state.pt`` (exact-resume state, rewritten every epoch), ``best.safetensors``
(weights of the best validation epoch) and ``train_log.jsonl``. Running again with the same arguments continues
from the last finished epoch; a larger ``epochs`` trains further; another teacher or setting is refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from acula_edge import atomic
from acula_edge.checkpoint import CheckpointInfo, save_checkpoint
from acula_edge.data import Dataset, load_dataset, stratified_holdout
from acula_edge.config import Config
from acula_edge.errors import CheckpointError, ConfigError
from acula_edge.frontend import FrontendConfig, Windowing, device_preset_for, preset
from acula_edge.manifest import Prompts
from acula_edge.operating_point import VALIDATION_KEY, OperatingPoint, argmax_rule, choose, fixed, parse_method
from acula_edge.training import (STATE_NAME, DistEnv, LoopConfig, StepResult, barrier, init_distributed, open_log,
                                 run_training, seed_everything, unwrap, warmup_cosine, wrap_ddp)
from acula_edge.windows import Windows, extract_windows, frame_windows, recording_scores, recording_windows
from acula_edge.distill.adversary import SiteAdversary, ramp
from acula_edge.distill.augment import AugmentConfig, Augmenter
from acula_edge.distill.device_sim import DeviceSimConfig, simulated_copies
from acula_edge.distill.losses import DistillConfig, distill_loss
from acula_edge.distill.metrics import recording_metrics, selection_score, softmax
from acula_edge.distill.probe import ProbeConfig, class_weights, fit_probe
from acula_edge.distill.students import ARCHITECTURE, DSCNNStudent, model_report, student_config
from acula_edge.distill.teachers import Teacher, load_teacher, teacher_outputs

BEST_NAME = "best.safetensors"
ADVERSARY_NAME = "adversary.safetensors"  # the site-adversarial head's weights (exact resume; not in the checkpoint)


# The adversary weight `distill --adversary-by` uses when no weight is given (RESULTS_cross_site.md measured it).
ADVERSARY_WEIGHT = 0.3


@dataclass(frozen=True)
class TrainConfig(Config):
    """Everything a distillation run depends on (saved in the student checkpoint's ``extra``)."""

    student: str = "small"  # "tiny", "small" or "base" (acula_edge.distill.students.PRESETS)
    stem: str = "conv"  # the student's stem form while training (acula_edge.distill.students.STEMS)
    epochs: int = 20
    batch_size: int = 64  # windows per optimizer step (per process under torchrun)
    lr: float = 3e-3  # AdamW peak learning rate
    weight_decay: float = 1e-3
    warmup_steps: int = 20
    grad_clip: float = 5.0  # max gradient norm (0 = off)
    seed: int = 0
    operating_point: str = "youden"  # how the decision threshold is chosen on the validation split
    # (acula_edge.operating_point: "youden", "sensitivity=X", "specificity=X" or a fixed threshold such as "0.5")
    max_windows_per_recording: int = 0  # evenly spaced windows kept per recording (0 = all)
    val_fraction: float = 0.2  # share of the training data held out for model selection (0 = none: last epoch)
    group_column: str | None = "subset"  # validation takes whole groups of this metadata column when all have it
    patience: int = 5  # epochs without a better validation score before stopping (0 = never stop early)
    frontend_preset: str | None = None  # student front-end; None: the teacher's, or "heart" if it fixes none
    normalisation: str | None = None  # override the front-end normalisation (acula_edge.frontend.NORMALISATIONS)
    embedding_dim: int = 384  # student embedding width when the teacher gives none (teacher "none")
    dropout: float = 0.1
    channels_last: bool = True  # ~7x faster training of a DS-CNN on an x86 CPU (230 vs 31 windows/s, measured 2026-11-23)
    teacher_batch_size: int = 32
    # cross-site options (measured in benchmarks/RESULTS_cross_site.md)
    device_copies: int = 0  # extra copies of every training recording through simulated device chains (device_sim)
    balance_column: str | None = None  # metadata column (e.g. "subset"): sample every (value, label) cell equally
    adversary_column: str | None = None  # metadata column the site-adversarial head must not find in the embedding
    adversary_weight: float = 0.0  # (the CLI uses ADVERSARY_WEIGHT when --adversary-by is given without a weight)
    # weight of the adversary's loss (its gradient reversal ramps up from 0 to this)
    distill: DistillConfig = field(default_factory=DistillConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    device_sim: DeviceSimConfig = field(default_factory=DeviceSimConfig)

    CONFIG_NAME = "training config"
    # how far to train, how teacher outputs are batched and how the operating point is chosen after training change
    # how a run is carried out, not what its training computes
    RUN_ONLY = ("epochs", "patience", "teacher_batch_size", "operating_point")

    def __post_init__(self) -> None:
        problems = []
        if self.max_windows_per_recording < 0:
            problems.append(f"max_windows_per_recording must be >= 0 (0 = all), got {self.max_windows_per_recording}")
        if self.epochs < 0 or self.batch_size < 1:
            problems.append(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.device_copies < 0 or self.adversary_weight < 0:
            problems.append(f"device_copies and adversary_weight must be >= 0, got {self.device_copies}, "
                            f"{self.adversary_weight}")
        if self.adversary_weight > 0 and not self.adversary_column:
            problems.append("adversary_weight > 0 needs adversary_column (the metadata column naming the site)")
        try:
            parse_method(self.operating_point)
        except ConfigError as e:
            problems.append(str(e))
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    @property
    def window_cap(self) -> int | None:
        """``max_windows_per_recording`` as the window extractors take it (None = all)."""
        return self.max_windows_per_recording or None


def split_validation(dataset: Dataset, config: TrainConfig) -> tuple[Dataset, Dataset | None, str]:
    """(train, validation or None, how it was split). Whole groups when every recording has the group column and
    there are at least three groups; otherwise whole recordings, stratified by label."""
    if config.val_fraction <= 0:
        return dataset, None, "none"
    col = config.group_column
    if col and all(col in r.metadata for r in dataset) and len({r.metadata[col] for r in dataset}) >= 3:
        train, val = stratified_holdout(dataset, config.val_fraction, config.seed, group_column=col)
        how = f"groups of {col!r}: {sorted({r.metadata[col] for r in val})}"
    else:
        train, val = stratified_holdout(dataset, config.val_fraction, config.seed)
        how = "recordings, stratified by label"
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"{dataset.name}: {len(dataset)} recordings are too few for a validation split of "
                          f"{config.val_fraction}; add data or set val_fraction to 0")
    return train, val, how


@dataclass
class _Split:
    windows: Windows
    t_emb: np.ndarray | None = None
    t_logits: np.ndarray | None = None
    has_teacher: np.ndarray | None = None


def _resolve_frontend(config: TrainConfig, teacher: Teacher | None) -> tuple[FrontendConfig, Windowing]:
    if config.frontend_preset:
        fe, win = preset(config.frontend_preset)
    elif teacher is not None and teacher.frontend is not None and not teacher.frontend.device_ready:
        name = device_preset_for(teacher.windowing) if teacher.windowing is not None else None
        if name is None:
            raise ConfigError(f"the teacher's front-end reproduces its authors' preprocessing, which the device "
                              f"cannot run, and no device preset cuts its windows {teacher.windowing}; choose "
                              f"the student's front-end with --frontend")
        fe, win = preset(name)
    elif teacher is not None and teacher.frontend is not None:
        fe, win = teacher.frontend, teacher.windowing or preset("heart")[1]
    else:
        fe, win = preset("heart")
    if teacher is not None and teacher.windowing is not None and teacher.windowing != win:
        raise ConfigError(f"the student's windowing {win} differs from the teacher's {teacher.windowing}: teacher "
                          f"and student windows must cover the same audio; choose a preset with the same windowing")
    if config.normalisation:
        fe = dataclasses.replace(fe, normalisation=config.normalisation)
    if not fe.device_ready:
        raise ConfigError(f"the student's front-end ({config.frontend_preset or 'the teacher'}'s"
                          f"{', normalisation ' + config.normalisation if config.normalisation else ''}) reproduces a "
                          f"teacher's preprocessing, which the device runtime and the C front-end cannot run; "
                          f"choose a device preset with --frontend (heart, heart-4k, heart-band, lung, acula)")
    return fe, win


def _teacher_targets(teacher: Teacher, dataset: Dataset, train: Windows, splits: list[Windows],
                     labels: tuple[str, ...], fe: FrontendConfig, win: Windowing, config: TrainConfig,
                     cache_dir: Path | None, env: DistEnv) -> tuple[list[_Split], dict[str, Any]]:
    """Teacher embeddings and logits aligned to every split's windows; the probe is fit on ``train`` only."""
    if env.distributed and not env.is_main:
        torch.distributed.barrier()  # rank 0 fills the cache first
    outputs, cache_file = teacher_outputs(teacher, dataset, fe, win, config.window_cap, cache_dir,
                                          config.teacher_batch_size)
    if env.distributed and env.is_main:
        torch.distributed.barrier()
    info: dict[str, Any] = {"teacher_cache": str(cache_file) if cache_file else None,
                            "teacher_embedding_dim": outputs.embedding_dim}
    result = []
    for w in [train, *splits]:
        rows, found = outputs.lookup(w.record_ids, w.window_index)
        result.append(_Split(w, outputs.embedding[rows], None, found))
    tr = result[0]
    if tr.has_teacher is not None and not tr.has_teacher.any():
        raise ConfigError(f"the teacher ({teacher.name}) has no outputs for any training window (keys are "
                          f"(recording id, window index)); is it for another dataset or windowing?")
    info["windows_with_teacher"] = int(tr.has_teacher.sum())
    if outputs.logits is not None and set(outputs.labels) == set(labels):
        order = [outputs.labels.index(lbl) for lbl in labels]
        for s in result:
            rows, _ = outputs.lookup(s.windows.record_ids, s.windows.window_index)
            s.t_logits = outputs.logits[rows][:, order]
        info["teacher_logits"] = "head"
    elif config.distill.w_kd > 0 and (tr.windows.y >= 0).any() and len(set(tr.windows.y[tr.windows.y >= 0])) > 1:
        sel = tr.has_teacher & (tr.windows.y >= 0)
        probe = fit_probe(tr.t_emb[sel], tr.windows.y[sel], tr.windows.recording[sel], len(labels), config.probe)
        for s in result:
            s.t_logits = probe.logits(s.t_emb)
        info.update(teacher_logits="probe", probe_c=probe.c, probe_cv_loss={str(k): v for k, v in
                                                                             probe.cv_loss.items()})
    else:
        info["teacher_logits"] = "none"
    return result, info


def _group_index(windows: Windows, column: str) -> tuple[np.ndarray, list[str]]:
    """(N,) index of every window's value of metadata ``column`` (sorted values), and the values."""
    recs = windows.dataset.recordings
    missing = [r.record_id for r in recs if column not in r.metadata]
    if missing:
        raise ConfigError(f"{windows.dataset.name}: {len(missing)} training recording(s) have no {column!r} metadata "
                          f"(e.g. {missing[:3]}); balance_column/adversary_column must name a column every "
                          f"recording has")
    names = sorted({str(r.metadata[column]) for r in recs})
    per_recording = np.array([names.index(str(r.metadata[column])) for r in recs], dtype=np.int64)
    return per_recording[windows.recording], names


def _with_device_copies(windows: Windows, dataset: Dataset, fe: FrontendConfig, win: Windowing,
                        config: TrainConfig) -> Windows:
    """The clean training windows plus the same windows of ``config.device_copies`` simulated-device copies."""
    copies = simulated_copies(dataset, fe.sample_rate, config.device_copies, config.device_sim, config.seed)
    parts = [extract_windows(c, fe, win, windows.labels, max_windows_per_recording=config.window_cap)
             for c in copies]
    return Windows.concatenate([windows, *parts])


def _epoch_order(n: int, config: TrainConfig, epoch: int, cells: np.ndarray | None) -> np.ndarray:
    """Window indices for one epoch: a permutation, or ``n`` draws in which every cell is equally likely."""
    rng = np.random.default_rng([config.seed, epoch])
    if cells is None:
        return rng.permutation(n)
    p = 1.0 / np.bincount(cells)[cells]
    return rng.choice(n, size=n, replace=True, p=p / p.sum())


def _to_input(x: np.ndarray, device: str, channels_last: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))[:, None].to(device)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def predict(model: torch.nn.Module, x: np.ndarray, batch_size: int = 256, device: str = "cpu",
            channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D), logits (N, C)) of log-mel windows x (N, frames, n_mels), in eval mode."""
    was = model.training
    model.eval()
    embs, logits = [], []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            e, lg = model(_to_input(x[s:s + batch_size], device, channels_last))
            embs.append(e.float().cpu().numpy())
            logits.append(lg.float().cpu().numpy())
    model.train(was)
    return np.concatenate(embs), np.concatenate(logits)


def _evaluate(model: torch.nn.Module, split: _Split, config: TrainConfig, device: str) -> dict[str, float]:
    emb, logits = predict(model, split.windows.x, device=device, channels_last=config.channels_last)
    w = split.windows
    m = recording_metrics(logits, w.recording, w.recording_labels())
    if split.t_emb is not None:
        mask = split.has_teacher
        a, b = emb[mask], split.t_emb[mask]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        m["teacher_cosine"] = float(cos.mean()) if len(cos) else float("nan")
    return m


def score_recordings(model: torch.nn.Module, dataset: Dataset, fe: FrontendConfig, win: Windowing,
                     labels: tuple[str, ...], device: str = "cpu",
                     head: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """(R, C) recording-level probabilities of ``dataset`` exactly as ``classify``/``stream``/``bench`` form them
    on the device: every window of the recording (short ones zero-padded to one), windows failing the quality
    checks left out, the rest averaged (:func:`~acula_edge.windows.recording_scores`, the device's mean
    aggregation). ``head``: maps the model's window embeddings to logits in place of its own (e.g. a linear
    probe)."""
    from acula_edge.features import LogMel
    from acula_edge.runtime.quality import BlockQuality, QualityConfig

    logmel = LogMel(fe)
    ws, hs = win.window_samples(fe), win.hop_samples(fe)
    meter = BlockQuality(fe, ws, hs, QualityConfig())  # the device's quality checks, as EdgeModel.prepare runs them
    out = np.zeros((len(dataset), len(labels)), dtype=np.float64)
    for r, rec in enumerate(dataset):
        x = rec.load(fe.sample_rate, min_samples=ws, pad=True)
        frames, bands = logmel.with_bands(x, meter.bands)  # one front-end pass gives the windows and the flatness
        windows = recording_windows(x, fe, win, logmel) if fe.center else frame_windows(frames, fe, win)
        emb, logits = predict(model, windows, device=device)
        if head is not None:
            logits = head(emb)
        ok = np.array([q.ok for q in meter.windows(x, windows.shape[0], bands)])
        out[r] = recording_scores(softmax(logits).astype(np.float32), np.zeros(len(ok), dtype=np.int64), ok)[1][0]
    return out


def choose_operating_point(model: torch.nn.Module, val_ds: Dataset | None, fe: FrontendConfig, win: Windowing,
                           labels: tuple[str, ...], config: TrainConfig, split_how: str,
                           device: str = "cpu") -> tuple[OperatingPoint, dict[str, Any] | None]:
    """The decision rule of the trained model, chosen by ``config.operating_point`` on the validation recordings
    (scored as the device scores them: :func:`score_recordings`), and those recordings' (label, score) pairs so
    ``export --operating-point`` can choose again. Multi-class: the most probable label. Without a validation
    split, or with one class in it, the default threshold (recorded as such)."""
    where = f"validation split ({split_how})"
    if len(labels) != 2:
        return argmax_rule(where), None
    if val_ds is None:
        return fixed(chosen_on="no validation split (val_fraction 0)"), None
    keep = [i for i, r in enumerate(val_ds) if r.label in labels]
    probs = score_recordings(model, val_ds.subset(keep, val_ds.name), fe, win, labels, device)
    y = np.array([val_ds.recordings[i].label == labels[-1] for i in keep], dtype=bool)
    scores = probs[:, -1]
    pairs = {"positive": y.astype(int).tolist(), "score": [float(v) for v in scores]}  # exact: export may re-choose
    if y.all() or not y.any():
        return fixed(chosen_on=f"{where}: one class only, nothing to choose on"), pairs
    return choose(y, scores, config.operating_point, where), pairs


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save

    from acula_edge import atomic

    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    atomic.write_bytes(path, save(state))


def _load_adversary(adversary: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    try:
        adversary.load_state_dict(load_file(str(path)))
    except Exception as e:  # missing file, corrupt file or another head shape
        raise CheckpointError(f"{path}: cannot restore the site-adversarial head ({type(e).__name__}: {e}); delete "
                              f"{path.parent} to start over") from e


class _DistillTask:
    """Distillation's part of the shared loop (:func:`acula_edge.training.run_training`): augmented batches, the
    distillation (+ site-adversary) loss, and model selection and early stopping on the validation split."""

    what = "student"

    def __init__(self, config: TrainConfig, model: torch.nn.Module, ddp: torch.nn.Module, tr: _Split,
                 val: _Split | None, cells: np.ndarray | None, augment: Augmenter, cw: torch.Tensor, t_scale: float,
                 adversary: tuple[torch.nn.Module, torch.nn.Module, torch.Tensor] | None, total_steps: int,
                 run_dir: Path, env: DistEnv) -> None:
        self.config, self.model, self.ddp, self.tr, self.val, self.cells = config, model, ddp, tr, val, cells
        self.augment, self.cw, self.t_scale, self.adversary = augment, cw, t_scale, adversary
        self.total_steps, self.run_dir, self.env = total_steps, run_dir, env
        self.n = len(tr.windows)
        self.per_rank = self.n // env.world_size
        self.t_emb = torch.from_numpy(tr.t_emb) if tr.t_emb is not None else None
        self.t_logits = torch.from_numpy(tr.t_logits) if tr.t_logits is not None else None
        self.has_t = torch.from_numpy(tr.has_teacher) if tr.has_teacher is not None else None
        self.y_all = torch.from_numpy(tr.windows.y)
        self.best: dict[str, Any] = {"score": -math.inf, "epoch": -1, "bad_epochs": 0}
        self.mine = np.zeros(0, dtype=np.int64)
        self.gen = torch.Generator()

    def begin_epoch(self, epoch: int) -> None:
        c, env = self.config, self.env
        perm = _epoch_order(self.n, c, epoch, self.cells)[:self.per_rank * env.world_size]
        self.mine = perm[env.rank::env.world_size]
        self.gen = torch.Generator().manual_seed(int(c.seed) * 1_000_003 + epoch * 101 + env.rank)

    def train_step(self, epoch: int, epoch_step: int, step: int) -> StepResult:
        c, dev = self.config, self.env.device
        idx = self.mine[epoch_step * c.batch_size:(epoch_step + 1) * c.batch_size]
        x = self.augment(_to_input(self.tr.windows.x[idx], dev, c.channels_last), self.gen)
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ti = torch.from_numpy(idx)
        emb, logits = self.ddp(x)
        loss, parts = distill_loss(
            c.distill, emb, logits, self.y_all[ti].to(dev), self.cw,
            self.t_emb[ti].to(dev) if self.t_emb is not None else None,
            self.t_logits[ti].to(dev) if self.t_logits is not None else None,
            self.has_t[ti].to(dev) if self.has_t is not None else None, self.t_scale)
        if self.adversary is not None:
            _, adv_ddp, site_of_window = self.adversary
            site_logits = adv_ddp(emb, ramp(step / self.total_steps))
            adv_loss = torch.nn.functional.cross_entropy(site_logits, site_of_window[ti].to(dev))
            loss = loss + c.adversary_weight * adv_loss
            parts["adversary"] = float(adv_loss.detach())
        loss.backward()
        return StepResult(float(loss.detach()), parts, len(idx))

    def end_epoch(self, epochs_done: int) -> tuple[dict[str, Any], bool]:
        if self.val is None:
            return {}, False
        vm = _evaluate(self.model, self.val, self.config, self.env.device)
        fields: dict[str, Any] = {f"val_{k}": v for k, v in vm.items()}
        score = selection_score(vm)
        if math.isnan(score):
            score = vm.get("teacher_cosine", float("nan"))
        stop = False
        if not math.isnan(score) and score > self.best["score"]:
            self.best.update(score=score, epoch=epochs_done, bad_epochs=0)
            if self.env.is_main:
                _save_weights(self.model, self.run_dir / BEST_NAME)
        else:
            self.best["bad_epochs"] += 1
            stop = bool(self.config.patience and self.best["bad_epochs"] >= self.config.patience)
        fields["best_epoch"] = self.best["epoch"]
        return fields, stop

    def state(self) -> dict[str, Any]:
        return {"best": self.best}

    def restore(self, state: dict[str, Any]) -> None:
        self.best.update(state.get("best", {}))
        if self.adversary is not None:
            _load_adversary(self.adversary[0], self.run_dir / ADVERSARY_NAME)

    def save_files(self) -> None:
        if self.adversary is not None:  # before the state: a resume never pairs a newer state with an older head
            _save_weights(self.adversary[0], self.run_dir / ADVERSARY_NAME)


def train_student(config: TrainConfig, teacher: Teacher | str | Path | torch.nn.Module | None,
                  train_data: Dataset | str, out: str | Path, *, run_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, resume: bool = True, progress: bool = True,
                  env: DistEnv | None = None, device: str | None = "cpu") -> Path:
    """Train a student of ``config.student`` size from ``teacher`` (None/"none": supervised from scratch, same code
    path) on ``train_data`` and write a student checkpoint folder to ``out``; returns ``out``.

    ``teacher``: a Teacher, a spec for :func:`acula_edge.distill.teachers.load_teacher`, or None. ``run_dir``
    (default ``<out>.run``) holds the resume state and the JSONL log; ``cache_dir`` (default ``<run_dir>/cache``)
    the teacher outputs. Run under ``torchrun`` for data-parallel training. ``resume``: continue from the run
    folder's state when present; refused (ConfigError naming the change) when the teacher or the config changed
    other than in its run-only fields (``TrainConfig.RUN_ONLY``: epochs, patience, teacher_batch_size,
    operating_point).
    """
    out = atomic.check_replaceable(out)  # refuse a user's folder now, not after training
    run_dir = Path(run_dir) if run_dir is not None else out.parent / f"{out.name}.run"
    cache_dir = Path(cache_dir) if cache_dir is not None else run_dir / "cache"
    env = env or init_distributed(device)
    dataset = load_dataset(train_data) if isinstance(train_data, str) else train_data
    if not isinstance(teacher, Teacher):
        teacher = load_teacher(teacher)
    seed_everything(config.seed, env.rank)
    fe, win = _resolve_frontend(config, teacher)
    labels = dataset.labels
    if not labels:
        raise ConfigError(f"{dataset.name}: no labelled recordings; a student needs the task's labels")
    log = open_log(run_dir, env)

    train_ds, val_ds, split_how = split_validation(dataset, config)
    mw = config.window_cap
    train_w = extract_windows(train_ds, fe, win, labels, max_windows_per_recording=mw)
    if config.device_copies:
        train_w = _with_device_copies(train_w, train_ds, fe, win, config)
    val_w = extract_windows(val_ds, fe, win, labels, max_windows_per_recording=mw) if val_ds is not None else None
    teacher_info: dict[str, Any] = {}
    if teacher is not None:
        splits, teacher_info = _teacher_targets(teacher, dataset, train_w, [val_w] if val_w is not None else [],
                                                labels, fe, win, config, cache_dir, env)
        tr = splits[0]
        val = splits[1] if val_w is not None else None
        emb_dim = tr.t_emb.shape[1]
        t_scale = float(np.sqrt(np.mean(tr.t_emb[tr.has_teacher] ** 2))) or 1.0
    else:
        tr, val = _Split(train_w), (_Split(val_w) if val_w is not None else None)
        emb_dim, t_scale = config.embedding_dim, 1.0

    scfg = student_config(config.student, emb_dim, len(labels), dropout=config.dropout, stem=config.stem)
    model = DSCNNStudent(scfg).to(env.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    frames = win.frames_per_window(fe)
    report = model_report(model, frames, fe.n_mels)
    ddp = wrap_ddp(model, env)
    cells = None
    if config.balance_column:
        group, _ = _group_index(tr.windows, config.balance_column)
        cells = group * len(labels) + np.maximum(tr.windows.y, 0)
        cells = np.unique(cells, return_inverse=True)[1]
    adversary, site_names = None, []
    if config.adversary_weight > 0:
        groups, site_names = _group_index(tr.windows, str(config.adversary_column))
        if len(site_names) < 2:
            raise ConfigError(f"the site-adversarial head needs at least two values of {config.adversary_column!r} "
                              f"in the training data, found {site_names}")
        head = SiteAdversary(emb_dim, len(site_names)).to(env.device)
        adversary = (head, wrap_ddp(head, env), torch.from_numpy(groups))
    params = list(model.parameters()) + (list(adversary[0].parameters()) if adversary is not None else [])
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n = len(tr.windows)
    per_rank = n // env.world_size
    if per_rank < 1:
        raise ConfigError(f"{n} training windows cannot be shared by {env.world_size} processes; add data or run "
                          f"fewer processes")
    steps_per_epoch = math.ceil(per_rank / config.batch_size)
    total_steps = steps_per_epoch * max(1, config.epochs)
    sched = warmup_cosine(opt, min(config.warmup_steps, total_steps // 5), total_steps)
    cw = torch.from_numpy(class_weights(tr.windows.y, len(labels))).to(env.device)
    if cells is not None:
        cw = torch.ones_like(cw)  # the sampling balances the labels already

    task = _DistillTask(config, model, ddp, tr, val, cells, Augmenter(config.augment, fe), cw, t_scale, adversary,
                        total_steps, run_dir, env)
    # the teacher is part of what a resumed run must share: another teacher's targets are another run
    loop = LoopConfig(desc="distill", epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                      resume_fields={**config.key_fields(), "teacher": teacher.identity if teacher else "none"},
                      grad_clip=config.grad_clip, progress=progress)
    start = {"config": config.to_dict(), "student": report, "n_train_windows": n,
             "n_val_windows": len(val.windows) if val else 0, "split": split_how,
             "teacher": teacher.name if teacher else "none", "adversary_groups": site_names, **teacher_info}
    done = run_training(task, loop, env=env, model=model, optimizer=opt, scheduler=sched,
                        clip_params=list(model.parameters()), state_path=run_dir / STATE_NAME, log=log,
                        resume=resume, start_record=start, run_files=(run_dir / BEST_NAME, run_dir / ADVERSARY_NAME))
    step, best = done.step, task.best
    barrier(env)

    if val is not None and (run_dir / BEST_NAME).is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(run_dir / BEST_NAME)))
    metrics = {"val": _evaluate(model, val, config, env.device)} if val is not None else {}
    point, val_scores = choose_operating_point(model, val_ds, fe, win, labels, config, split_how, env.device)
    metrics["best_epoch"] = best["epoch"]
    metrics["steps"] = step
    prompts = teacher.prompts if teacher is not None else Prompts()
    if prompts.embeddings and len(prompts.embeddings[0]) != emb_dim:
        prompts = Prompts()  # prompt embeddings live in another space than this student's embedding
    extra = {"teacher": teacher.name if teacher else "none",
             "teacher_sha256": teacher.identity if teacher else None,
             "training_config": config.to_dict(), "metrics": metrics, "student_size": config.student,
             "model_report": report, "data": dataset.name, "validation_split": split_how,
             "run_dir": str(run_dir), **{k: v for k, v in teacher_info.items() if k != "teacher_cache"}}
    if val_scores is not None:
        extra[VALIDATION_KEY] = val_scores
    if env.is_main and fe.device_ready:  # the training audio, for the device's site-shift warning and adaptation
        from acula_edge.adapt import describe_dataset
        from acula_edge.runtime.site_shift import DESCRIPTION_KEY

        extra[DESCRIPTION_KEY] = describe_dataset(train_ds, fe, win, labels[-1]).to_dict()
    info = CheckpointInfo(kind="student", architecture=ARCHITECTURE, model_config=scfg.to_dict(), frontend=fe,
                          windowing=win, labels=labels, embedding_dim=emb_dim,
                          threshold=point.threshold if point.threshold is not None else 0.5,
                          prompts=prompts, extra=_jsonable(extra), operating_point=point)
    if env.is_main:
        cpu_model = DSCNNStudent(scfg)
        cpu_model.load_state_dict({k: v.cpu() for k, v in unwrap(model).state_dict().items()})
        save_checkpoint(cpu_model, info, out)
        log.write(event="done", out=str(out), operating_point=point.to_dict(),
                  **{f"final_{k}": v for k, v in metrics.get("val", {}).items()})
    return out


def _jsonable(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
