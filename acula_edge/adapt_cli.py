"""``acula-edge adapt``: adapt a bundle or checkpoint to a new site from its unlabeled recordings."""

from __future__ import annotations

import json

import click

from acula_edge import cli_options as options

from acula_edge.adapt import DEFAULT_TARGET, METHODS, MIN_RECORDINGS, AdaptConfig


@click.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--data", required=True, help="The new site's recordings (dataset spec); labels, if any, are ignored.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New folder for the adapted bundle.")
@click.option("--method", "methods", multiple=True, type=click.Choice(["auto", *METHODS]), default=("auto",),
              show_default=True, help="What to re-estimate on the site (repeat for several). adabn needs a checkpoint; "
              "auto: adabn from a checkpoint, threshold from a bundle (what measured best).")
@click.option("--train-data", default=None, help="Training recordings, when SOURCE carries no description of them.")
@click.option("--min-recordings", type=int, default=MIN_RECORDINGS, show_default=True,
              help="Refuse fewer site recordings than this.")
@click.option("--target", default=DEFAULT_TARGET, show_default=True, help="Export target (checkpoint SOURCE).")
@click.option("--quantize", type=click.Choice(["none", "int8"]), default="none", show_default=True,
              help="Export precision (checkpoint SOURCE).")
@click.option("--calib-data", default=None, help="int8 calibration recordings (default: the site's).")
@options.json_stdout("the adaptation record")
def adapt(source: str, data: str, out: str, methods: tuple[str, ...], train_data: str | None, min_recordings: int,
          target: str, quantize: str, calib_data: str | None, as_json: bool) -> None:
    """Adapt SOURCE (a bundle or a checkpoint folder) to a new site from its unlabeled recordings; write a new
    bundle to --out (SOURCE is never modified). Check the result with 'acula-edge verify OUT'."""
    from acula_edge.adapt import ADAPTATION_KEY
    from acula_edge.adapt import adapt as run_adapt

    cfg = AdaptConfig(methods=tuple(dict.fromkeys(methods)), min_recordings=min_recordings, train_data=train_data,
                      target=target, quantize=quantize, calib_data=calib_data)
    manifest = run_adapt(source, data, out, cfg, progress=lambda msg: click.echo(msg, err=True))
    record = manifest.extra[ADAPTATION_KEY]
    if as_json:
        click.echo(json.dumps(record, sort_keys=True))
        return
    shift = record["site_shift"]
    click.echo(f"adapted {record['source_kind']} {record['source']} -> {out}")
    click.echo(f"site: {record['n_recordings']} recordings, {shift['fraction_flagged']:.0%} unlike the training audio "
               f"(median shift score {shift['median_score']:.2f}, threshold {shift['threshold']:.2f})")
    for method, what in record["estimated"].items():
        click.echo(f"{method}: {what}")
