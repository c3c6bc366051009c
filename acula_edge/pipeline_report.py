"""The pipeline's Markdown report: one table of teacher vs students vs every exported bundle, then the detail."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from acula_edge import atomic
from acula_edge.bench.report import human_bytes, markdown_report


def _auroc(block: dict[str, Any]) -> str:
    """AUROC of the pooled figures: the single (positive-class) entry for binary data, else the macro mean."""
    values = [fig["auroc"]["value"] for fig in block.values() if fig.get("auroc", {}).get("value") is not None]
    if not values:
        return "n/a"
    return f"{sum(values) / len(values):.3f}"


def summary_rows(out: Path, accuracy: dict[str, Any], latency: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, ck in sorted(accuracy.get("checkpoints", {}).items(), key=lambda kv: kv[0] != "teacher"):
        weights = Path(ck["checkpoint"]) / "model.safetensors"
        size = human_bytes(weights.stat().st_size) if weights.is_file() else "n/a"
        au = "n/a" if ck.get("auroc") is None else f"{ck['auroc']:.3f}"
        rows.append([name, "PyTorch fp32", f"{ck['parameters']:,}", size, "-", "-", au])
    params = {name: ck["parameters"] for name, ck in accuracy.get("checkpoints", {}).items()}
    lat = {str(Path(b["bundle"]).resolve()): b for b in latency.get("bundles", [])}
    for b in accuracy.get("bundles", []):
        path = Path(b["bundle"]).resolve()
        lb = lat.get(str(path), {})
        hop = lb.get("stages_ms", {}).get("session", {}).get("p50")
        rtf = lb.get("rtf", {}).get("session", {}).get("mean")
        student = params.get(f"student-{path.parent.name}")  # bundles live in OUT/bundles/<size>/<target-precision>
        rows.append([os.path.relpath(path, out.resolve()), f"{b['target']} {b['precision']}",
                     "" if student is None else f"{student:,}",
                     human_bytes(lb.get("model_bytes")), "n/a" if hop is None else f"{hop:.3f}",
                     "n/a" if rtf is None else f"{rtf:.1e}", _auroc(b.get("pooled", {}))])
    return rows


def write_report(out: Path, config: Any, train_spec: str, test_spec: str,
                 failed_exports: dict[str, str] | None = None) -> Path:
    """Write OUT/report.md from OUT/accuracy.json and OUT/latency.json; returns its path.

    ``failed_exports``: bundle path -> parity-gate message, for exports that were refused."""
    accuracy = json.loads((out / "accuracy.json").read_text(encoding="utf-8"))
    latency = json.loads((out / "latency.json").read_text(encoding="utf-8"))
    header = ["model", "runtime / precision", "parameters", "size", "ms per hop (p50)", "RTF", "AUROC (held out)"]
    rows = summary_rows(out, accuracy, latency)
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    lines = [
        "# acula-edge pipeline report", "",
        f"- data: `{config.data}`; trained on `{train_spec}`; tested on the held-out `{test_spec}` "
        f"(group column `{config.group_by}`)",
        f"- teacher: align preset `{config.align_preset}`, {config.align_epochs} epochs; students: "
        f"{', '.join(config.students)}, {config.distill_epochs} epochs",
        "- ms per hop: front-end + model for one hop of live audio in a streaming session; RTF = that time / hop "
        "duration; AUROC on recordings (window probabilities averaged), bootstrap intervals in the detail below",
        "", *table, "",
        *(["## Exports refused by the parity gate (not written)", ""]
          + [f"- `{os.path.relpath(p, out)}`: " + "; ".join(line.strip() for line in msg.splitlines()[1:])
             for p, msg in sorted((failed_exports or {}).items())]
          + [""] if failed_exports else []),
        "---", "",
        markdown_report(accuracy, latency, accuracy.get("plots"), None),
    ]
    path = out / "report.md"
    atomic.write_text(path, "\n".join(lines) + "\n")
    return path
