"""Device commands: ``acula-edge info``, ``classify`` and ``stream`` (numpy + one runtime; never torch).

``stream`` reads raw PCM from stdin with ``-``: little-endian int16 or float32, mono, at ``--sample-rate`` (default:
the bundle's rate; another rate is resampled on the fly). Files are fed in ``--chunk-ms`` chunks at their own rate.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from acula_edge import cli_options as options

PCM_FORMATS = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
# Longest --chunk-ms: 10 s at the highest accepted rate is 7.7M samples (31 MB of float32) per read, a bounded
# buffer; a live device delivers 10-100 ms.
MAX_CHUNK_MS = 10_000


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, sort_keys=True))


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def _parity_line(parity: dict) -> str:
    """One line from the export parity report (cosines per output, AUROC change), or its JSON when unknown."""
    parts = []
    for name, o in sorted((parity.get("outputs") or {}).items()):
        if isinstance(o, dict) and "cosine_mean" in o:
            parts.append(f"{name} cosine {o['cosine_mean']:.5f} (min {o.get('cosine_min', float('nan')):.5f})")
    auroc = parity.get("auroc")
    if isinstance(auroc, dict) and auroc.get("delta") is not None:
        parts.append(f"AUROC change {auroc['delta']:+.4f}")
    if not parts:
        text = json.dumps(parity, sort_keys=True)
        return text if len(text) <= 120 else text[:117] + "..."
    return "; ".join(parts) + (f"  [{parity['data']}]" if parity.get("data") else "")


# manifest extra keys shown by firmware_budget_rows rather than one by one
FIRMWARE_KEYS = ("memory", "frontend_memory")


def _bytes(n: int) -> str:
    return f"{n:,} B ({_size(n)})" if n >= 1024 else f"{n} B"


def firmware_budget_rows(extra: dict[str, Any]) -> list[tuple[str, str]]:
    """A tflm bundle's firmware budget as (label, text) rows: flash = model + front-end tables, RAM = tensor arena
    + front-end state + model-input window, each total with its parts, in bytes, as the export wrote them into the
    manifest's ``extra``. No rows for bundles without a memory budget (every target but tflm)."""
    memory = extra.get("memory")
    if not isinstance(memory, dict):
        return []
    fe = extra.get("frontend_memory") if isinstance(extra.get("frontend_memory"), dict) else {}

    def line(total: Any, parts: list[tuple[str, Any]]) -> str:
        shown = " + ".join(f"{name} {_bytes(int(v))}" for name, v in parts if isinstance(v, int))
        return (_bytes(int(total)) if isinstance(total, int) else "unknown") + (f" = {shown}" if shown else "")

    flash = line(memory.get("flash_bytes"), [("model", extra.get("model_bytes")),
                                             ("front-end tables", fe.get("flash_bytes"))])
    ram = line(memory.get("ram_bytes"), [("tensor arena", extra.get("arena_bytes")),
                                         ("front-end state", fe.get("ram_bytes")),
                                         ("input window", fe.get("window_bytes"))])
    arena, measured = extra.get("arena_bytes"), extra.get("arena_bytes_measured")
    rows = [("firmware flash", flash + "  (code not included)"), ("firmware RAM", ram)]
    if isinstance(arena, int) and isinstance(measured, int):
        rows.append(("tensor arena", f"{measured:,} B measured (smallest arena tflite_micro allocates on a 64-bit "
                                     f"host) + {arena - measured:,} B margin"))
    return rows


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as one JSON object.")
def info(bundle: str, as_json: bool) -> None:
    """Print BUNDLE's manifest readably: target, tensors, front-end, labels, parity, memory budget."""
    from acula_edge.manifest import RUNTIME_EXTRA, read_manifest
    from acula_edge.runtime.model import bundle_operating_point

    m = read_manifest(bundle)
    if as_json:
        _echo_json(m.to_dict())
        return
    model_path = Path(bundle) / m.model_file
    size = _size(model_path.stat().st_size) if model_path.is_file() else "MISSING"
    fe, win = m.frontend, m.windowing
    rows = [
        ("bundle", str(bundle)),
        ("target", f"{m.target} ({m.precision}); runtime: pip install 'acula-edge[{RUNTIME_EXTRA[m.target]}]'"),
        ("model file", f"{m.model_file} ({size}), sha256 {m.model_sha256[:16]}..."),
        ("schema", f"{m.schema_version}; bundle digest {m.bundle_sha256[:16]}... (checked: manifest and "
                   f"{len(m.files())} file(s))"),
        ("labels", ", ".join(m.labels)),
        ("decision", bundle_operating_point(m).rule),
        ("front-end", f"{fe.sample_rate} Hz, n_fft {fe.n_fft}, win {fe.win_length}, hop {fe.hop_length}, "
                      f"{fe.n_mels} mel {fe.fmin:g}-{fe.fmax:g} Hz, {fe.window}, normalisation {fe.normalisation}"),
        ("windowing", f"{win.window_s:g} s windows every {win.hop_s:g} s "
                      f"({win.frames_per_window(fe)} frames x {fe.n_mels} mel)"),
    ]
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for t in specs:
            q = f", scale {t.scale:.6g}, zero_point {t.zero_point}" if t.scale is not None else ""
            rows.append((kind, f"{t.name} {list(t.shape)} {t.dtype}{q}"))
    if m.prompts.texts:
        rows.append(("prompts", f"{len(m.prompts.texts)}: " + "; ".join(m.prompts.texts[:5])
                     + (" ..." if len(m.prompts.texts) > 5 else "")))
    if m.parity:
        rows.append(("parity", _parity_line(m.parity)))
    if m.versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in sorted(m.versions.items()))))
    rows += firmware_budget_rows(m.extra)
    for key, value in sorted(m.extra.items()):
        if key in FIRMWARE_KEYS:
            continue
        if isinstance(value, int) and "bytes" in key:
            value = f"{value} ({_size(value)})"
        elif isinstance(value, dict) and key == "files":
            value = f"{len(value)} checksummed: {', '.join(sorted(value))}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
            value = value if len(value) <= 120 else value[:117] + "..."
        rows.append((f"extra.{key}", str(value)))
    if m.source_checkpoint_sha256:
        rows.append(("checkpoint", f"sha256 {m.source_checkpoint_sha256[:16]}..."))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:>{width}}: {value}")


def _common(f):
    f = options.threads("the bundle's runtime")(f)
    f = click.option("--aggregation", type=click.Choice(["mean", "ema"]), default="mean", show_default=True,
                     help="How window probabilities combine into the recording result.")(f)
    f = options.pad()(f)
    return f


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="Output: a table, one JSON object per file, or CSV rows.")
@click.option("--windows", is_flag=True, help="Include every window's scores and quality (needs --format json).")
@options.verbose("a temporary log")
@_common
def classify(bundle: str, files: tuple[str, ...], fmt: str, windows: bool, verbose: bool, threads: int | None,
             aggregation: str, pad: bool) -> None:
    """Classify audio FILES with BUNDLE: recording-level probabilities and decision, one row per file."""
    from acula_edge.quiet import captured
    from acula_edge.runtime.model import load

    if windows and fmt != "json":  # never ignore an option silently
        raise click.UsageError("--windows prints per-window results in JSON: add --format json")
    with captured(None, verbose, "classify"):  # runtime banners (e.g. LiteRT's delegate line) stay off the table
        model = load(bundle, num_threads=threads)
        keep = windows and fmt == "json"  # per-window results only when printed: constant memory for long files
        results = [model.classify_file(f, aggregation=aggregation, keep_windows=keep, pad=pad) for f in files]
    labels = list(model.labels)
    _warn_site_shift([r.site_shift for r in results])
    if fmt == "json":
        for r in results:
            _echo_json(r.to_dict(windows=windows))
        return
    shift = model.site is not None
    header = ["file", "duration_s", "windows", "excluded", *[f"p_{lb}" for lb in labels], "label", "decision",
              *(["site_shift"] if shift else [])]
    rows = [[r.source, f"{r.duration_s:.2f}", str(r.n_windows), str(r.n_excluded),
             *[f"{p:.4f}" for p in r.probabilities], str(r.label or "-"),
             "-" if r.decision is None else labels[-1] if r.decision else f"not {labels[-1]}",
             *([_shift_cell(r.site_shift)] if shift else [])] for r in results]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(wd) for h, wd in zip(header, widths)))
    for r in rows:
        click.echo("  ".join(c.ljust(wd) for c, wd in zip(r, widths)))


def _shift_cell(verdict: dict[str, Any] | None) -> str:
    if not verdict:
        return "-"
    return f"{verdict['score']:.2f}" + (" UNLIKE TRAINING" if verdict["flagged"] else "")


def _warn_site_shift(verdicts: list[dict[str, Any] | None]) -> None:
    """One stderr line when recordings look unlike the bundle's training audio (and for the batch as one site)."""
    from acula_edge.runtime.site_shift import batch_verdict

    batch = batch_verdict(verdicts)
    if not batch or not batch["flagged"]:
        return
    what = ("as a batch from one site, this audio is unlike the bundle's training audio"
            if batch["batch_flagged"] and batch["n"] > 1 else "unlike the bundle's training audio")
    click.echo(f"warning: site shift: {batch['flagged']} of {batch['n']} recording(s) {what} (median shift score "
               f"{batch['median_score']:.2f}, threshold {batch['threshold']:.2f}); its scores may "
               f"not hold here: check on labelled recordings, or adapt with 'acula-edge adapt'", err=True)


def _describe(event: Any, labels: tuple[str, ...]) -> str:
    from acula_edge.runtime.results import WindowEvent

    pos = labels[-1]
    if isinstance(event, WindowEvent):
        status = "ok" if event.included else "excluded: " + ",".join(event.quality.flags)
        return (f"[{event.start_s:8.2f} - {event.end_s:8.2f} s] window {event.index:<4d} "
                f"p({pos})={event.probabilities[-1]:.3f}  {event.quality.rms_dbfs:6.1f} dBFS  {status}")
    decision = "-" if event.decision is None else pos if event.decision else f"not {pos}"
    return (f"{'':24}recording: p({pos})={event.probabilities[-1]:.3f} over {event.n_windows - event.n_excluded}"
            f"/{event.n_windows} windows  decision: {decision}")


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("audio", type=click.Path(dir_okay=False, allow_dash=True))
@options.json_stdout("one object per line (windows, updates, summary)")
@click.option("--chunk-ms", type=click.IntRange(min=1, max=MAX_CHUNK_MS), default=100, show_default=True,
              help="Feed the audio in chunks of this many milliseconds, as a live device would.")
@click.option("--sample-rate", type=int, default=None,
              help="Rate of raw PCM on stdin (AUDIO '-'), Hz; resampled on the fly. Default: the bundle's rate.")
@click.option("--pcm-format", type=click.Choice(sorted(PCM_FORMATS)), default="int16", show_default=True,
              help="Sample format of raw PCM on stdin (little-endian, mono).")
@_common
def stream(bundle: str, audio: str, as_json: bool, chunk_ms: int, sample_rate: int | None, pcm_format: str,
           threads: int | None, aggregation: str, pad: bool) -> None:
    """Stream AUDIO (a file, or '-' for raw PCM on stdin) through BUNDLE, printing events as they happen."""
    from acula_edge.audio import check_sample_rate
    from acula_edge.runtime.model import file_blocks, file_sample_rate, load

    if sample_rate is not None and audio != "-":  # a file states its own rate: never ignore an option silently
        raise click.UsageError("--sample-rate describes raw PCM on stdin (AUDIO '-'); a file's own header gives "
                               "its rate: drop --sample-rate")
    model = load(bundle, num_threads=threads)
    session = model.stream(aggregation=aggregation, pad=pad, source="<stdin>" if audio == "-" else audio)

    def emit(events: list) -> None:
        for ev in events:
            click.echo(json.dumps(ev.to_dict(), sort_keys=True) if as_json else _describe(ev, model.labels))
        sys.stdout.flush()

    if audio == "-":
        rate = check_sample_rate(model.sample_rate if sample_rate is None else sample_rate, "--sample-rate")
        dtype = PCM_FORMATS[pcm_format]
        chunk_bytes = max(1, rate * chunk_ms // 1000) * dtype.itemsize
        stdin = sys.stdin.buffer
        pending = b""
        while True:
            data = stdin.read(chunk_bytes)
            if not data:
                break
            data = pending + data
            usable = len(data) - len(data) % dtype.itemsize
            pending = data[usable:]
            emit(session.push(np.frombuffer(data[:usable], dtype=dtype), rate))
        if pending:  # a truncated last sample: say so rather than drop it silently
            click.echo(f"warning: stdin ended with {len(pending)} byte(s) that are not a whole {pcm_format} sample "
                       f"({dtype.itemsize} bytes); they were ignored. Is --pcm-format right?", err=True)
    else:
        rate = file_sample_rate(Path(audio))
        step = max(1, rate * chunk_ms // 1000)
        for block in file_blocks(Path(audio), step):
            emit(session.push(block, rate))
    result = session.finish()
    emit(session.tail_events)
    _warn_site_shift([result.site_shift])
    if as_json:
        _echo_json(result.to_dict(windows=False))
    else:
        pos = model.labels[-1]
        decision = "-" if result.decision is None else pos if result.decision else f"not {pos}"
        probs = ", ".join(f"{lb}={p:.3f}" for lb, p in zip(result.labels, result.probabilities))
        click.echo(f"summary: {result.duration_s:.2f} s, {result.n_windows} windows ({result.n_excluded} excluded); "
                   f"{probs}; decision: {decision}" + (f"; site shift {_shift_cell(result.site_shift)}"
                                                      if result.site_shift else ""))
