"""``acula-edge bench latency`` and ``acula-edge bench accuracy`` (numpy + the bundles' runtimes; never torch).

Progress goes to stderr, the table to stdout, documents to the files named by ``--json`` / ``--report``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
import click

from acula_edge import cli_options as options


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _command_line(ctx: click.Context) -> str:
    """The invocation, rebuilt from the parsed parameters (for reports)."""
    parts = [ctx.command_path]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if value is None or value == p.default or value == () or value is False:
            continue
        if isinstance(p, click.Argument):
            parts += [shlex.quote(str(v)) for v in value]
        elif p.is_flag:
            parts.append(p.opts[0])
        else:
            parts += [p.opts[0], shlex.quote(str(value))]
    return " ".join(parts)


def _threads(value: int) -> int | None:
    return None if value == 0 else value


@click.group()
def bench() -> None:
    """Benchmark bundles on this machine: latency per hop and recording-level accuracy."""


@bench.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@options.threads("each bundle's runtime (benchmarks measure one thread unless told)", default=1)
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True,
              help="Untimed hops per bundle before measuring.")
@click.option("--runs", type=click.IntRange(min=1), default=200, show_default=True,
              help="At least this many timed hops per bundle.")
@click.option("--min-seconds", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="And measure for at least this long (all bundles together), seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test signal.")
@options.json_file("the latency results")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.pass_context
def latency(ctx: click.Context, bundles: tuple[str, ...], threads: int, warmup: int, runs: int, min_seconds: float,
            seed: int, json_out: str | None, markdown: bool) -> None:
    """Latency of BUNDLE... streaming one hop at a time: load, first call, then steady state (front-end, model,
    both, and a full stream-session push per hop), real-time factor, peak RSS, model size. Several bundles are
    measured interleaved, round-robin, so their ratios hold on a busy machine."""
    from acula_edge import atomic
    from acula_edge.bench.latency import LatencyConfig, bench_latency
    from acula_edge.bench.report import latency_table

    cfg = LatencyConfig(threads=_threads(threads), warmup=warmup, runs=runs, min_seconds=min_seconds, seed=seed)
    doc = bench_latency(bundles, cfg, progress=_say)
    doc["command"] = _command_line(ctx)
    if json_out:
        atomic.write_json(json_out, doc)
        _say(f"wrote {json_out}")
    click.echo(latency_table(doc, markdown=markdown))


@bench.command()
@click.argument("bundles", nargs=-1, required=True)
@click.option("--data", "data", required=True,
              help="Dataset spec: a folder with labels.csv, a labels CSV, or synthetic:heart?n=..&seed=..")
@click.option("--group-by", default=None, help="Metadata column (e.g. subset) for per-group figures.")
@options.threads("each bundle's runtime (benchmarks measure one thread unless told)", default=1)
@click.option("--n-boot", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Bootstrap resamples per confidence interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@options.json_file("the accuracy results")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False),
              help="Write ROC curves (and the latency/accuracy scatter) as PNG into this folder.")
@click.option("--latency-json", type=click.Path(dir_okay=False),
              help="A 'bench latency --json' document of the same bundles: adds latency to the report and plots.")
@click.option("--report", "report_out", type=click.Path(dir_okay=False), help="Write a Markdown report here.")
@click.option("--markdown", is_flag=True, help="Print the tables as Markdown.")
@click.pass_context
def accuracy(ctx: click.Context, bundles: tuple[str, ...], data: str, group_by: str | None, threads: int,
             n_boot: int, seed: int, json_out: str | None, plots_dir: str | None, latency_json: str | None,
             report_out: str | None, markdown: bool) -> None:
    """Recording-level sensitivity, specificity and MAcc at each bundle's operating point (the decision it ships
    with), AUROC and AUPRC of BUNDLE... on --data, with bootstrap 95 % intervals; a warning where Se or Sp < 0.2. The same windows of every recording go through every bundle, so fp32, int8 and runtimes line up.

    With --group-by COLUMN: per-group figures and a site-shortcut probe (the group predicted from the embedding).
    A bundle given as GROUP=PATH was trained without GROUP (a leave-one-group-out fold): it runs on GROUP only, and
    the folds of one target and precision are pooled into one leave-one-group-out entry.
    """
    from acula_edge import atomic
    from acula_edge.bench.accuracy import AccuracyConfig, bench_accuracy
    from acula_edge.bench.report import (LATENCY_SCHEMA, LATENCY_SCHEMA_VERSION, accuracy_table, agreement_table,
                                         decision_lines, markdown_report, probe_table, read_document)

    lat = read_document(latency_json, LATENCY_SCHEMA, LATENCY_SCHEMA_VERSION) if latency_json else None
    cfg = AccuracyConfig(n_boot=n_boot, seed=seed, threads=_threads(threads), group_by=group_by)
    doc, pred = bench_accuracy(bundles, data, cfg, progress=_say)
    command = _command_line(ctx)
    doc["command"] = command
    plots: dict[str, str] = {}
    if plots_dir:
        from acula_edge.bench.plots import roc_png, scatter_png

        out = Path(plots_dir)
        written = {"ROC curves": roc_png(pred, out / "roc.png")}
        if lat is not None:
            written["accuracy vs latency"] = scatter_png(doc, lat, out / "latency_accuracy.png")
        base = Path(report_out).resolve().parent if report_out else Path.cwd()
        plots = {k: os.path.relpath(v.resolve(), base) for k, v in written.items()}
        for p in written.values():
            _say(f"wrote {p}")
        doc["plots"] = {k: str(v) for k, v in written.items()}
    if json_out:
        atomic.write_json(json_out, doc)
        _say(f"wrote {json_out}")
    if report_out:
        atomic.write_text(report_out, markdown_report(doc, lat, plots, command))
        _say(f"wrote {report_out}")
    click.echo(accuracy_table(doc, markdown=markdown))
    click.echo("\ndecision (the answer the device gives):\n" + "\n".join(decision_lines(doc)))
    agreement = agreement_table(doc, markdown=markdown)
    if agreement:
        click.echo("\n" + agreement)
    probe = probe_table(doc, markdown=markdown)
    if probe:
        click.echo(f"\nsite shortcut ({group_by} predicted from the embedding; lower is better):\n" + probe)
    if group_by:
        click.echo("\nnote: " + doc["group_note"])
