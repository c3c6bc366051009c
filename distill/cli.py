"""``acula-edge distill``: train a device-sized student from a teacher (or from scratch with ``--teacher none``).

Runs single-process or under ``torchrun --nproc-per-node N $(which acula-edge) distill ...`` (data-parallel).
Settings come from the TrainConfig defaults, then ``--config FILE`` (JSON object of TrainConfig fields, nested
``distill``/``augment``/``probe``/``device_sim`` objects allowed), then the flags given on the command line.
Cross-site options (benchmarks/RESULTS_cross_site.md): ``--normalisation``, ``--device-copies``, ``--balance-by``,
``--adversary-by``/``--adversary-weight``. At the end, the decision threshold is chosen on the validation split
(``--operating-point youden|sensitivity=X|specificity=X|THRESHOLD``; see acula_edge.operating_point).
"""

from __future__ import annotations

import json

from pathlib import Path

import click

from acula_edge import cli_options as options
from acula_edge.frontend import NORMALISATIONS
from acula_edge.distill.students import PRESETS
from acula_edge.distill.train import ADVERSARY_WEIGHT, TrainConfig

_DEFAULTS = TrainConfig()  # the defaults the help shows: one definition, the dataclass


@click.command("distill")
@click.option("--teacher", required=True,
              help="Teacher: an acula-edge checkpoint folder, a transformers model folder, a .npz/.safetensors "
                   "file of precomputed outputs, or 'none' (supervised from scratch).")
@click.option("--data", "data_spec", required=True, help="Training data spec (folder with labels.csv, "
                                                           "synthetic:heart, ...).")
@click.option("--student", type=click.Choice(sorted(PRESETS)), default=None, help=f"Student size [default: {_DEFAULTS.student}].")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Student checkpoint folder to write.")
@click.option("--epochs", type=int, default=None, help=f"Training epochs [default: {_DEFAULTS.epochs}].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSON file of training settings (TrainConfig fields).")
@click.option("--batch-size", type=int, default=None, help=f"Windows per step and process [default: {_DEFAULTS.batch_size}].")
@click.option("--max-windows", type=int, default=None, help="Windows kept per recording, evenly spaced (0 = all) "
                   f"[default: {_DEFAULTS.max_windows_per_recording}].")
@options.frontend("the teacher's, or heart without one")
@click.option("--normalisation", type=click.Choice(NORMALISATIONS), default=None,
              help="Override the front-end normalisation (per_window_band removes each window's mean spectrum).")
@click.option("--device-copies", type=int, default=None,
              help="Extra copies of every training recording through simulated device chains "
                   f"[default: {_DEFAULTS.device_copies}].")
@click.option("--balance-by", "balance_column", default=None,
              help="Metadata column (e.g. subset): sample every (value, label) cell equally.")
@click.option("--adversary-by", "adversary_column", default=None,
              help="Metadata column (e.g. subset) a site-adversarial head keeps out of the embedding.")
@click.option("--adversary-weight", type=float, default=None,
              help="Weight of the site-adversarial loss (needs --adversary-by) "
                   f"[default: {ADVERSARY_WEIGHT} with --adversary-by].")
@click.option("--operating-point", "operating_point", default=None,
              help="How the decision threshold is chosen on the validation split: youden, sensitivity=X, "
                   "specificity=X, or a fixed threshold such as 0.5 "
                   f"[default: {_DEFAULTS.operating_point}].")
@options.seed(f"training [default: {_DEFAULTS.seed}]")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Resume state and log folder [default: OUT.run].")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Teacher-output cache [default: RUN_DIR/cache].")
@options.restart()
@options.threads("torch")
@options.device()
@options.quiet()
@options.verbose("OUT.distill.log beside the checkpoint")
def distill(teacher: str, data_spec: str, student: str | None, out: str, epochs: int | None,
            config_file: str | None, batch_size: int | None, max_windows: int | None, frontend: str | None,
            normalisation: str | None, device_copies: int | None, balance_column: str | None,
            adversary_column: str | None, adversary_weight: float | None, operating_point: str | None,
            seed: int | None, run_dir: str | None, cache_dir: str | None, restart: bool, threads: int | None,
            device: str | None, quiet: bool, verbose: bool) -> None:
    """Distill TEACHER into a student checkpoint at OUT."""
    import torch

    from acula_edge.checkpoint import read_checkpoint_info
    from acula_edge.config import read_json_config
    from acula_edge.distill.train import TrainConfig, train_student
    from acula_edge.training import init_distributed, shutdown_distributed

    if threads:
        torch.set_num_threads(threads)
    settings = read_json_config(config_file, "training config (TrainConfig fields)") if config_file else {}
    flags = {"student": student, "epochs": epochs, "batch_size": batch_size,
             "max_windows_per_recording": max_windows, "frontend_preset": frontend, "seed": seed,
             "normalisation": normalisation, "device_copies": device_copies, "balance_column": balance_column,
             "adversary_column": adversary_column, "adversary_weight": adversary_weight,
             "operating_point": operating_point}
    if adversary_column and adversary_weight is None and "adversary_weight" not in settings:
        flags["adversary_weight"] = ADVERSARY_WEIGHT
    settings.update({k: v for k, v in flags.items() if v is not None})
    config = TrainConfig.from_dict(settings)
    from acula_edge.quiet import captured, rank_log

    env = init_distributed(device)
    log = rank_log(Path(out).with_name(Path(out).name + ".distill.log"))
    try:
        with captured(log, verbose, "distill", progress_bars=not quiet):
            folder = train_student(config, teacher, data_spec, out, run_dir=run_dir, cache_dir=cache_dir,
                                   resume=not restart, progress=not quiet, env=env, device=device)
    finally:
        shutdown_distributed()
    if env.is_main:
        info = read_checkpoint_info(folder)
        summary = {"out": str(folder), "student": config.student, **info.extra.get("model_report", {}),
                   "teacher_sha256": info.extra.get("teacher_sha256"),
                   "val": info.extra.get("metrics", {}).get("val", {}),
                   "operating_point": info.operating_point.to_dict() if info.operating_point else None}
        click.echo(json.dumps(summary, sort_keys=True))


__all__ = ["distill"]
