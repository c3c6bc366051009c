"""Benchmark documents: their versioned JSON schemas, readable tables and the Markdown report.

Latency JSON (``schema`` = :data:`LATENCY_SCHEMA`): top-level keys :data:`LATENCY_KEYS`; one entry per bundle in
``bundles`` with :data:`LATENCY_BUNDLE_KEYS`; ``stages_ms[stage]`` (stage in ``model_switch``, ``frontend``,
``model``, ``hop``, ``session``, ``hop_cpu``, ``session_cpu``; see :mod:`acula_edge.bench.latency`) holds
:data:`STAT_KEYS` in milliseconds, ``samples_ms[stage]`` every timed run, ``rtf`` the real-time factor (compute
per hop / hop duration) of ``hop``, ``session`` and ``session_cpu``.

Accuracy JSON (``schema`` = :data:`ACCURACY_SCHEMA`): top-level keys :data:`ACCURACY_KEYS`; per bundle
:data:`ACCURACY_BUNDLE_KEYS`; ``pooled[class][metric]`` = ``{"value", "ci95": [lo, hi], "n_boot"}`` (null where
undefined), ``by_group[group][class]`` likewise when grouped.

Bump a schema version whenever a key is renamed or removed or its meaning changes; adding keys keeps it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from acula_edge.errors import ConfigError

LATENCY_SCHEMA = "acula-edge/bench-latency"
LATENCY_SCHEMA_VERSION = 1
ACCURACY_SCHEMA = "acula-edge/bench-accuracy"
ACCURACY_SCHEMA_VERSION = 1

STAT_KEYS = ("n", "mean", "std", "p50", "p90", "p99", "min", "max")
LATENCY_KEYS = ("schema", "schema_version", "created_utc", "config", "machine", "steady_seconds", "rounds",
                "peak_rss_bytes", "bundles")
LATENCY_BUNDLE_KEYS = ("bundle", "target", "precision", "runtime", "model_file", "model_bytes", "labels",
                       "sample_rate", "window_s", "hop_s", "input_shape", "threads", "cold_load_ms", "load_ms",
                       "first_inference_ms",
                       "rss_after_load_bytes", "load_rss_delta_bytes", "peak_rss_after_load_bytes", "runs",
                       "stages_ms", "rtf", "samples_ms")
ACCURACY_KEYS = ("schema", "schema_version", "created_utc", "data", "n_recordings", "label_counts", "config",
                 "machine", "seconds", "group_by", "bundles")
ACCURACY_BUNDLE_KEYS = ("bundle", "target", "precision", "runtime", "labels", "threshold", "operating_point",
                        "decision_rule", "model_bytes", "task", "n_windows", "n_windows_excluded", "model_seconds",
                        "pooled", "by_group", "warnings")
# the decision first (Se, Sp, MAcc at the shipped operating point) beside the ranking figures
METRIC_LABELS = (("sensitivity", "Se"), ("specificity", "Sp"), ("macc", "MAcc"), ("auroc", "AUROC"),
                 ("auprc", "AUPRC"))


def check_document(doc: Any, schema: str, version: int, source: str = "document") -> dict[str, Any]:
    """``doc`` if it is a ``schema`` document this code reads (same name, version not newer); ConfigError if not."""
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ConfigError(f"{source}: not a {schema} document (schema: {found!r}); give the JSON written by "
                          f"'acula-edge bench {schema.rsplit('-', 1)[-1]} --json'")
    v = doc.get("schema_version")
    if not isinstance(v, int) or v > version:
        raise ConfigError(f"{source}: {schema} schema version {v!r}; this acula-edge reads up to {version}: "
                          f"upgrade acula-edge")
    return doc


def read_document(path: str | Path, schema: str, version: int) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: cannot read benchmark JSON ({e})") from e
    return check_document(doc, schema, version, str(p))


def short_names(paths: Sequence[str]) -> list[str]:
    """The shortest distinct trailing path parts of ``paths`` (e.g. 'int8/onnx' and 'fp32/onnx')."""
    parts = [Path(p).parts for p in paths]
    for k in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return list(paths)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def fmt_ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" if i else f"{{:<{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def latency_table(doc: dict[str, Any], markdown: bool = False) -> str:
    """One row per bundle: size, load, first call, p50 per stage, hop p90/p99, RTF and peak RSS after load."""
    bundles = doc["bundles"]
    names = short_names([b["bundle"] for b in bundles])
    header = ["bundle", "target", "runtime", "size", "cold load ms", "load ms", "1st ms", "front-end p50",
              "model p50", "hop p50", "hop p90", "hop p99", "session p50", "session cpu p50", "RTF", "switch p50",
              "runs"]
    rows = []
    for name, b in zip(names, bundles):
        st = b["stages_ms"]
        rows.append([name, f"{b['target']} {b['precision']}", b["runtime"], human_bytes(b["model_bytes"]),
                     fmt_ms(b["cold_load_ms"]), fmt_ms(b["load_ms"]), fmt_ms(b["first_inference_ms"]),
                     fmt_ms(st["frontend"]["p50"]), fmt_ms(st["model"]["p50"]), fmt_ms(st["hop"]["p50"]),
                     fmt_ms(st["hop"]["p90"]), fmt_ms(st["hop"]["p99"]), fmt_ms(st["session"]["p50"]),
                     fmt_ms(st["session_cpu"]["p50"]), f"{b['rtf']['session']['p50']:.2e}",
                     fmt_ms(st["model_switch"]["p50"]), str(b["runs"])])
    m = doc["machine"]
    cfg = doc["config"]
    foot = (f"times in ms per hop; RTF = session p50 / hop duration; switch = the model's first call after "
            f"the other bundles ran (cold caches); threads {cfg['threads']}; "
            f"{doc['rounds']} interleaved rounds in {doc['steady_seconds']:.1f} s; peak RSS "
            f"{human_bytes(doc['peak_rss_bytes'])}; {m['cpu_model']} ({m['usable_cores']} cores), {m['os']}; "
            f"load average {m.get('load_average')}")
    return _table(header, rows, markdown) + ("\n\n" if markdown else "\n") + foot


def fmt_estimate(e: dict[str, Any]) -> str:
    v = e.get("value")
    if v is None:
        return "n/a"
    lo, hi = e.get("ci95", [None, None])
    if lo is None or hi is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _accuracy_rows(names: Sequence[str], bundles: Sequence[dict[str, Any]], key: str,
                   group: str | None = None) -> list[list[str]]:
    rows = []
    for name, b in zip(names, bundles):
        block = b["pooled"] if group is None else b["by_group"].get(group, {})
        for cls, fig in block.items():
            row = [name, f"{b['target']} {b['precision']}"]
            if group is not None:
                row.insert(0, group)
            row += [cls, f"{fig['n']} ({fig['n_positive']})", fmt_threshold(b.get("threshold"))]
            row += [fmt_estimate(fig[k]) for k, _ in METRIC_LABELS]
            rows.append(row)
    return rows


def accuracy_table(doc: dict[str, Any], markdown: bool = False) -> str:
    """Pooled figures per bundle and class, then per group (when grouped), with 95 % intervals."""
    bundles = doc["bundles"]
    names = short_names([b["bundle"] for b in bundles])
    header = ["bundle", "target", "class", "n (pos)", "threshold", *(label for _, label in METRIC_LABELS)]
    parts = [_table(header, _accuracy_rows(names, bundles, "pooled"), markdown)]
    if doc.get("group_by"):
        rows = []
        for g in doc.get("groups", {}):
            rows += _accuracy_rows(names, bundles, "by_group", g)
        parts.append(_table([doc["group_by"], *header], rows, markdown))
    return ("\n\n" if markdown else "\n\n").join(parts)


def fmt_threshold(t: Any) -> str:
    """A bundle's decision threshold: a number, per-fold numbers (pooled folds) or argmax (multi-class)."""
    if t is None:
        return "argmax"
    if isinstance(t, dict):
        return ", ".join(f"{g}: {fmt_threshold(v)}" for g, v in t.items())
    return f"{t:.3f}" if 0.001 <= t <= 0.999 else f"{t:.8g}"  # a saturated model's point stays distinguishable


def decision_lines(doc: dict[str, Any]) -> list[str]:
    """Markdown bullets: each bundle's decision rule, then every transfer warning (Se or Sp below 0.2)."""
    names = short_names([b["bundle"] for b in doc["bundles"]])
    lines = [f"- `{n}`: {b.get('decision_rule') or fmt_threshold(b.get('threshold'))}"
             for n, b in zip(names, doc["bundles"])]
    for n, b in zip(names, doc["bundles"]):
        lines += [f"- **WARNING** `{n}`: {w}" for w in b.get("warnings", [])]
    return lines


def agreement_table(doc: dict[str, Any], markdown: bool = False) -> str | None:
    """How far each bundle is from the first one, recording by recording (None with one bundle)."""
    bundles = [b for b in doc["bundles"] if "vs_first" in b]
    if not bundles:
        return None
    names = short_names([b["bundle"] for b in doc["bundles"]])
    by_path = dict(zip((b["bundle"] for b in doc["bundles"]), names))
    rows = [[by_path[b["bundle"]], by_path.get(b["vs_first"]["bundle"], b["vs_first"]["bundle"]),
             f"{b['vs_first']['max_abs_probability_diff']:.2e}", f"{b['vs_first']['mean_abs_probability_diff']:.2e}",
             f"{b['vs_first']['decision_agreement']:.3f}", str(b["vs_first"]["decisions_differ"])] for b in bundles]
    return _table(["bundle", "vs", "max abs dp", "mean abs dp", "same decision", "recordings differing"], rows,
                  markdown)


def probe_table(doc: dict[str, Any], markdown: bool = False) -> str | None:
    """Site-shortcut probe per bundle (None when no bundle has one)."""
    bundles = [b for b in doc["bundles"] if b.get("site_probe")]
    if not bundles:
        return None
    names = dict(zip((b["bundle"] for b in doc["bundles"]), short_names([b["bundle"] for b in doc["bundles"]])))
    rows = []
    for b in bundles:
        p = b["site_probe"]
        rows.append([names[b["bundle"]], f"{p['balanced_accuracy']:.3f}", f"{p['chance']:.3f}",
                     _fmt_float(p.get("within_label_mean")), _fmt_float(p.get("within_label_chance")), str(p["n"])])
    return _table(["bundle", "group from embedding", "chance", "within label", "chance (within)", "n"], rows,
                  markdown)


def site_shift_table(doc: dict[str, Any], markdown: bool = False) -> str | None:
    """Site-shift warning per bundle: share of recordings flagged, pooled and per group (None when no bundle
    describes its training audio)."""
    bundles = [b for b in doc["bundles"] if b.get("site_shift")]
    if not bundles:
        return None
    names = dict(zip((b["bundle"] for b in doc["bundles"]), short_names([b["bundle"] for b in doc["bundles"]])))
    groups = sorted({g for b in bundles for g in b["site_shift"]["by_group"]})

    def cell(v: dict[str, Any] | None) -> str:
        return "n/a" if not v else f"{v['flagged']}/{v['n']}" + (" (batch flagged)" if v["batch_flagged"] else "")

    rows = [[names[b["bundle"]], cell(b["site_shift"]["pooled"]), *[cell(b["site_shift"]["by_group"].get(g))
                                                                     for g in groups]] for b in bundles]
    return _table(["bundle", "flagged (all)", *[f"flagged ({g})" for g in groups]], rows, markdown)


def _fmt_float(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown_report(accuracy: dict[str, Any], latency: dict[str, Any] | None = None,
                    plots: dict[str, str] | None = None, command: str | None = None, level: int = 1) -> str:
    """The Markdown report: data, machine, the decision (rule and warnings), accuracy tables, agreement, latency
    (when given) and plot links.

    ``plots``: caption -> path of a PNG relative to the report's folder; ``level``: heading level of its title (2
    when it is a section of a larger document, e.g. the pipeline report).
    """
    m = accuracy["machine"]
    cfg = accuracy["config"]
    h = "#" * (level + 1)  # section headings, one level below the title
    lines = ["#" * level + (" acula-edge benchmark report" if level == 1 else " Benchmark detail"), ""]
    lines.append(f"- date (UTC): {accuracy['created_utc']}")
    if command:
        lines.append(f"- command: `{command}`")
    lines.append(f"- data: `{accuracy['data']}`: {accuracy['n_recordings']} recordings, labels "
                 + ", ".join(f"{k}: {v}" for k, v in accuracy["label_counts"].items()))
    lines.append(f"- machine: {m['cpu_model']} ({m['usable_cores']} usable cores, {m['machine']}), {m['os']}, "
                 f"{m['python']}; " + ", ".join(f"{k} {v}" for k, v in sorted(m["packages"].items())))
    lines.append(f"- intervals: {cfg['confidence']:.0%} percentile bootstrap over recordings, {cfg['n_boot']} "
                 f"resamples, seed {cfg['seed']}" + (f", stratified by {accuracy['group_by']}"
                                                     if accuracy.get("group_by") else ""))
    lines.append("- decisions: binary bundles at their operating point (manifest) on the probability of the last "
                 "label; multi-class bundles by the most probable class (figures one-vs-rest)")
    lines += ["", f"{h} Decision (the answer the device gives)", "", *decision_lines(accuracy), ""]
    lines += [f"{h} Accuracy (recording level)", "", accuracy_table(accuracy, markdown=True), ""]
    if accuracy.get("group_by"):
        lines += [f"> {accuracy['group_note']}", ""]
        g_rows = [[b["bundle"], _fmt_float(b.get("group_mean_auroc")), _fmt_float(b.get("group_min_auroc"))]
                  for b in accuracy["bundles"]]
        names = short_names([r[0] for r in g_rows])
        lines += [_table(["bundle", f"mean AUROC over {accuracy['group_by']}", "worst group AUROC"],
                         [[n, *r[1:]] for n, r in zip(names, g_rows)], True), ""]
    probe = probe_table(accuracy, markdown=True)
    if probe:
        lines += [f"{h} Site shortcut: {accuracy['group_by']} from the embedding", "",
                  "Balanced accuracy of a linear probe (ridge, cross-validated over recordings) predicting the "
                  "group from each recording's embedding; lower is better, chance is the floor. 'within label' "
                  "repeats it inside each class, so label-rate differences between groups cannot help.", "",
                  probe, ""]
    shift = site_shift_table(accuracy, markdown=True)
    if shift:
        lines += ["## Site-shift warning", "",
                  "Recordings whose per-band log-mel level and spread fall outside the bundle's description of its "
                  "training audio (shift score above its threshold); a group is flagged as a batch when more than "
                  "half of its recordings are. Where it fires, the figures above may not transfer.", "", shift, ""]
    folds = [b for b in accuracy["bundles"] if b.get("folds")]
    if folds:
        lines += [f"{h} Leave-one-group-out folds", ""]
        for b in folds:
            lines.append(f"- {b['bundle']}: " + "; ".join(f"{g}: `{p}`" for g, p in b["folds"].items()))
        lines.append("")
    agreement = agreement_table(accuracy, markdown=True)
    if agreement:
        lines += [f"{h} Agreement between bundles (same recordings)", "", agreement, ""]
    if latency is not None:
        lines += [f"{h} Latency (per hop of streaming audio)", "", latency_table(latency, markdown=True), ""]
    for caption, rel in (plots or {}).items():
        lines += [f"![{caption}]({rel})", ""]
    return "\n".join(lines)
