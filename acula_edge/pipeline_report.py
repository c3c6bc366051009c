"""The pipeline's Markdown report: one document. It leads with the decision each model makes on the held-out group
(Se, Sp and MAcc at the shipped operating point, beside AUROC), says what each model's figures mean, warns where the
operating point does not transfer, then gives the benchmark detail as a section of the same heading hierarchy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from acula_edge import atomic
from acula_edge.bench.accuracy import TRANSFER_WARNING_BELOW
from acula_edge.bench.report import fmt_estimate, fmt_threshold, human_bytes, markdown_report
from acula_edge.pipeline_eval import MEANINGS

# AUROC difference between the teacher's linear probe and its zero-shot scores taken as a real gap (the held-out
# group of the demo has 40 recordings: a bootstrap interval of AUROC there is about +-0.1 wide, so this is a hint)
PROBE_MARGIN = 0.05


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pooled(block: dict[str, Any]) -> dict[str, Any]:
    """The single (positive-class) figure set of a binary bundle; the first class's for a multi-class one."""
    return next(iter(block.values()), {})


def _row_order(name: str) -> tuple[int, str]:
    """Teacher, its probe, then the students."""
    return {"teacher": 0, "teacher-probe": 1}.get(name, 2), name


def summary_rows(out: Path, accuracy: dict[str, Any], latency: dict[str, Any]) -> list[list[str]]:
    """One row per checkpoint (PyTorch) and per bundle: size, latency, then the decision and AUROC."""
    rows = []
    for name, ck in sorted(accuracy.get("checkpoints", {}).items(), key=lambda kv: _row_order(kv[0])):
        weights = Path(ck["checkpoint"]) / "model.safetensors"
        size = human_bytes(weights.stat().st_size) if weights.is_file() and name != "teacher-probe" else "-"
        rows.append([name, "PyTorch fp32", f"{ck['parameters']:,}", size, "-", "-", fmt_threshold(ck["threshold"]),
                     _num(ck.get("sensitivity")), _num(ck.get("specificity")), _num(ck.get("macc")),
                     _num(ck.get("auroc"))])
    params = {name: ck["parameters"] for name, ck in accuracy.get("checkpoints", {}).items()}
    lat = {str(Path(b["bundle"]).resolve()): b for b in latency.get("bundles", [])}
    for b in accuracy.get("bundles", []):
        path = Path(b["bundle"]).resolve()
        lb = lat.get(str(path), {})
        hop = lb.get("stages_ms", {}).get("session", {}).get("p50")
        rtf = lb.get("rtf", {}).get("session", {}).get("p50")  # the same statistic as the ms column
        student = params.get(f"student-{path.parent.name}")  # bundles live in OUT/bundles/<size>/<target-precision>
        fig = _pooled(b.get("pooled", {}))
        rows.append([os.path.relpath(path, out.resolve()), f"{b['target']} {b['precision']}",
                     "" if student is None else f"{student:,}", human_bytes(lb.get("model_bytes")),
                     "n/a" if hop is None else f"{hop:.3f}", "n/a" if rtf is None else f"{rtf:.1e}",
                     fmt_threshold(b.get("threshold")),
                     *(fmt_estimate(fig[k]) if k in fig else "n/a" for k in ("sensitivity", "specificity", "macc",
                                                                               "auroc"))])
    return rows


def warnings(accuracy: dict[str, Any]) -> list[str]:
    """Checkpoints and bundles whose held-out Se or Sp is below the transfer bound."""
    out = []
    for name, ck in accuracy.get("checkpoints", {}).items():
        low = [f"{k} {ck[key]:.3f}" for key, k in (("sensitivity", "Se"), ("specificity", "Sp"))
               if ck.get(key) is not None and ck[key] < TRANSFER_WARNING_BELOW]
        if low:
            out.append(f"`{name}`: {', '.join(low)} on the held-out group at threshold "
                       f"{fmt_threshold(ck['threshold'])}: this operating point does not transfer to this data")
    for b in accuracy.get("bundles", []):
        out += [f"`{Path(b['bundle']).parent.name}/{Path(b['bundle']).name}`: {w}" for w in b.get("warnings", [])]
    return out


def meaning_lines(accuracy: dict[str, Any]) -> list[str]:
    """One line per model: what its figures mean, and the size relation of teacher and student."""
    cks = accuracy.get("checkpoints", {})
    lines = []
    for name in sorted(cks, key=_row_order):
        kind = name if name in MEANINGS else "student"
        lines.append(f"- `{name}` — {MEANINGS[kind]}.")
    lines.append("- bundles — the student exported (fp32 or int8) and run on its device runtime, at the operating "
                 "point in its manifest (copied from the student checkpoint).")
    zero_shot, probe = cks.get("teacher", {}).get("auroc"), cks.get("teacher-probe", {}).get("auroc")
    if zero_shot is not None and probe is not None:
        if probe - zero_shot >= PROBE_MARGIN:
            verdict = "the encoder separates the classes better than the prompts do (the prompts look like the problem)"
        elif probe < 0.5 + PROBE_MARGIN:
            verdict = "the encoder itself hardly separates the classes on this group"
        else:
            verdict = "the prompts use about what the encoder carries"
        lines.append(f"- teacher: zero-shot AUROC {zero_shot:.3f} vs linear probe {probe:.3f}: {verdict}.")
    teacher = cks.get("teacher", {}).get("parameters")
    for name, ck in cks.items():
        if name.startswith("student-") and teacher:
            ratio = teacher / ck["parameters"]
            note = "" if ratio >= 10 else " (less than 10x: this teacher preset is not a large model)"
            lines.append(f"- size: the teacher has {teacher:,} parameters, {ratio:.1f}x `{name}`'s "
                         f"{ck['parameters']:,}{note}.")
    return lines


def write_report(out: Path, config: Any, train_spec: str, test_spec: str,
                 failed_exports: dict[str, str] | None = None) -> Path:
    """Write OUT/report.md from OUT/accuracy.json and OUT/latency.json; returns its path.

    ``failed_exports``: bundle path -> parity-gate message, for exports that were refused."""
    accuracy = json.loads((out / "accuracy.json").read_text(encoding="utf-8"))
    latency = json.loads((out / "latency.json").read_text(encoding="utf-8"))
    header = ["model", "runtime / precision", "parameters", "size", "ms per hop (p50)", "RTF (p50)", "threshold",
              "Se", "Sp", "MAcc", "AUROC"]
    rows = summary_rows(out, accuracy, latency)
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    warn = warnings(accuracy)
    student_points = [(name, ck["operating_point"]) for name, ck in accuracy.get("checkpoints", {}).items()
                      if name.startswith("student-")]
    lines = [
        "# acula-edge pipeline report", "",
        f"- data: `{config.data}`; trained on `{train_spec}`; tested on the held-out `{test_spec}` "
        f"(group column `{config.group_by}`)",
        f"- teacher: align preset `{config.align_preset}`, {config.align_epochs} epochs; students: "
        f"{', '.join(config.students)}, {config.distill_epochs} epochs",
        *(f"- `{name}` decides: {_rule(p)}" for name, p in student_points),
        "", "## The decision on the held-out group", "",
        "Se, Sp and MAcc (the mean of the two) at each model's operating point, on recordings (window "
        "probabilities averaged as on the device); AUROC ranks without any threshold. Bundles carry 95 % bootstrap "
        "intervals. ms per hop: front-end + model for one hop of live audio in a streaming session; RTF = that p50 "
        "/ hop duration.", "",
        *table, "",
        *(["**Warnings** (held-out Se or Sp below " + f"{TRANSFER_WARNING_BELOW}):", ""]
          + [f"- {w}" for w in warn] + [""] if warn else []),
        "What the figures mean:", "", *meaning_lines(accuracy), "",
        *(["## Exports refused by the parity gate (not written)", ""]
          + [f"- `{os.path.relpath(p, out)}`: " + "; ".join(line.strip() for line in msg.splitlines()[1:])
             for p, msg in sorted((failed_exports or {}).items())]
          + [""] if failed_exports else []),
        markdown_report(accuracy, latency, accuracy.get("plots"), None, level=2),
    ]
    path = out / "report.md"
    atomic.write_text(path, "\n".join(lines) + "\n")
    return path


def _rule(point: dict[str, Any]) -> str:
    from acula_edge.operating_point import OperatingPoint

    return OperatingPoint.from_dict(point).rule
