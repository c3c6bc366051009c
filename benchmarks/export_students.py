"""Export students to every target x precision on real heart sounds: size, parity, held-out AUROC, export time.

    python benchmarks/export_students.py [--checkpoint DIR ...] [--data PHYSIONET_DIR] [--holdout f]

Students: the checkpoint folders given (distilled students), else students of each ``--sizes`` trained here
*supervised* (no teacher) on the PhysioNet 2016 subsets other than ``--holdout`` (a quick stand-in, said so in the
results). Calibration windows come from the training subsets, the parity/AUROC windows from the held-out subset
(leave-one-subset-out; never a random split). Bundles, CSV splits and students go to ``--work`` (outside the repo);
figures are written to benchmarks/RESULTS_export.md with the command, date and machine.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

from acula_edge.checkpoint import load_checkpoint, weights_sha256
from acula_edge.data import load_dataset
from acula_edge.errors import ParityError
from acula_edge.export.api import export_model
from acula_edge.export.calibration import prepare_data
from acula_edge.export.registry import target_precisions, targets

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "physionet2016"
NOTES_MARKER = "## Observations"


def write_split_csvs(data: Path, holdout: str, work: Path) -> tuple[Path, Path]:
    """labels CSVs (absolute paths) for the training subsets and the held-out subset, in ``work``."""
    dataset = load_dataset(data)
    train, test = dataset.where("subset", [holdout], keep=False), dataset.where("subset", [holdout], keep=True)
    paths = []
    for name, part in (("train", train), ("test", test)):
        path = work / f"{name}-{holdout}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "record", "subset", "label"])
            for r in part:
                w.writerow([str(r.path), r.record_id, r.metadata.get("subset", ""), r.label])
        paths.append(path)
    return paths[0], paths[1]


def train_supervised(size: str, train_csv: Path, work: Path, epochs: int) -> Path:
    from acula_edge.distill.train import TrainConfig, train_student

    out = work / f"student-{size}-supervised"
    if (out / "model.safetensors").is_file():
        return out
    config = TrainConfig(student=size, epochs=epochs, max_windows_per_recording=8, patience=0,
                         embedding_dim=128)
    return train_student(config, None, str(train_csv), out, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", default=[], help="student checkpoint folder (repeatable)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--holdout", default="f", help="PhysioNet subset held out for parity and AUROC")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--calib-windows", type=int, default=300)
    ap.add_argument("--eval-windows", type=int, default=400)
    ap.add_argument("--work", default="/tmp/acula-export-bench")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS_export.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = write_split_csvs(Path(args.data), args.holdout, work)
    supervised = not args.checkpoint
    checkpoints = [Path(c) for c in args.checkpoint] or [train_supervised(s, train_csv, work, args.epochs)
                                                         for s in args.sizes]
    rows = []
    for ckpt in checkpoints:
        model, info = load_checkpoint(ckpt)
        data = prepare_data(info, "int8", str(train_csv), str(test_csv), args.calib_windows, args.eval_windows)
        params = sum(p.numel() for p in model.parameters())
        runs = [(t, p, "minmax") for t, p in target_precisions()]
        runs += [(t.name, "int8", m) for t in targets().values() for m in t.calibration_methods if m != "minmax"]
        for target, precision, method in runs:
            out = work / "bundles" / ckpt.name / f"{target}-{precision}-{method}"
            start = time.perf_counter()
            try:
                manifest = export_model(model, info, out, target, precision, data=data, calibration_method=method,
                                        source_sha256=weights_sha256(ckpt), source_path=str(ckpt))
                report, status, size = manifest.parity, "pass", manifest.extra["model_bytes"]
                findings = manifest.extra.get("findings", [])
                arena = manifest.extra.get("arena_bytes_measured")
            except ParityError as e:
                report, status, size, findings, arena = getattr(e, "report", {}), "FAIL: " + "; ".join(
                    e.mismatches), None, [], None
            seconds = time.perf_counter() - start
            auc = report.get("auroc", {})
            row = {"student": ckpt.name, "params": params, "target": target, "precision": precision,
                   "calibration": method if precision == "int8" else "",
                   "status": status, "kib": None if size is None else size / 1024, "export_s": seconds,
                   "emb_cos": report.get("outputs", {}).get("embedding", {}).get("cosine_mean"),
                   "emb_maxabs": report.get("outputs", {}).get("embedding", {}).get("max_abs_error"),
                   "logit_maxabs": report.get("outputs", {}).get("logits", {}).get("max_abs_error"),
                   "auroc": auc.get("runtime"), "auroc_fp32": auc.get("pytorch_fp32"), "auroc_delta": auc.get("delta"),
                   "recordings": auc.get("recordings_per_class"), "windows": report.get("windows"),
                   "arena_bytes": arena, "findings": findings}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_results(Path(args.results), rows, args, supervised, " ".join(sys.argv))


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def write_results(path: Path, rows: list[dict], args, supervised: bool, command: str) -> None:
    from importlib.metadata import version

    pkgs = ["torch", "executorch", "torchao", "onnxruntime", "litert-torch", "ai-edge-litert", "tflite-micro"]
    lines = [
        "# Export benchmark: students per target x precision",
        "",
        f"- command: `python {command}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores "
        f"(shared with other jobs), torch threads 1; " + ", ".join(f"{p} {version(p)}" for p in pkgs),
        f"- students: " + ("trained here **supervised** (no teacher: distilled students were not available), "
                           f"{args.epochs} epochs, 8 windows per recording, on PhysioNet 2016 subsets other than "
                           f"'{args.holdout}'" if supervised else "given checkpoints: " + ", ".join(args.checkpoint)),
        f"- calibration: {args.calib_windows} windows from the training subsets; parity and AUROC: up to "
        f"{args.eval_windows} windows (2 per recording) of held-out subset '{args.holdout}' (leave-one-subset-out)",
        "- AUROC: recording level (mean over a recording's windows of P(abnormal)), exported model in its runtime vs "
        "the PyTorch fp32 model on the same windows; cosine: mean per-window cosine of the embedding output",
        "",
        "| student | params | target | precision | calibration | size KiB | export s | emb. cosine | emb. max abs err | "
        "logit max abs err | AUROC runtime | AUROC fp32 torch | Δ AUROC | TFLM arena B | gate |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['student']} | {r['params']} | {r['target']} | {r['precision']} | {r['calibration']} | "
                     f"{_fmt(r['kib'], '.1f')} | "
                     f"{r['export_s']:.1f} | {_fmt(r['emb_cos'], '.5f')} | {_fmt(r['emb_maxabs'], '.3g')} | "
                     f"{_fmt(r['logit_maxabs'], '.3g')} | {_fmt(r['auroc'], '.4f')} | {_fmt(r['auroc_fp32'], '.4f')} | "
                     f"{_fmt(r['auroc_delta'], '+.4f')} | {_fmt(r['arena_bytes'], 'd')} | {r['status']} |")
    findings = [(r["student"], r["target"], r["precision"], f) for r in rows for f in r["findings"]
                if not f.startswith("calibration method")]
    lines += ["", "Findings reported at export time: " + ("none" if not findings else "")]
    lines += [f"- {s} {t}-{p}: {f}" for s, t, p, f in findings]
    recs = next((r["recordings"] for r in rows if r["recordings"]), None)
    if recs:
        lines += ["", f"Held-out recordings per class (normal, abnormal): {recs}."]
    notes = ""  # hand-written observations below the marker survive a re-run
    if path.is_file() and NOTES_MARKER in path.read_text():
        notes = "\n" + NOTES_MARKER + path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text("\n".join(lines) + "\n" + notes)


if __name__ == "__main__":
    main()
