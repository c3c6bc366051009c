"""Firmware budget of trained students: tflm bundles against a Cortex-M4/M7 stethoscope MCU, and TFLM vs LiteRT.

    python benchmarks/firmware_students.py [--sizes tiny small small-mcu] [--holdout b] [--epochs 3]
        [--max-windows 2] [--seeds 0 1] [--test-windows 2] [--work /tmp/acula-firmware-bench]

For every student size and seed: train it supervised (no teacher: ``train_student(..., teacher=None)``) on the
PhysioNet 2016 subsets other than ``--holdout`` (leave-one-subset-out), export it with ``--target tflm`` (int8,
calibrated on training windows, parity-gated on held-out windows) and read the bundle's memory budget from its
manifest: model bytes + front-end tables (flash), measured TFLM arena (+ margin) + front-end state + the float
model-input window buffer (RAM). Then run the bundle's one ``model.tflite`` on every held-out window through the
``tflite_micro`` Python interpreter and through LiteRT (``ai_edge_litert``, XNNPACK) and compare: max |difference|
in output quantization steps, share of identical values, and recording-level AUROC (mean window P(abnormal) per
recording) from each runtime and from the fp32 PyTorch student. Figures go to benchmarks/RESULTS_firmware.md
(hand-written notes below its "## Observations" line survive a re-run); student folders and bundles to ``--work``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from export_students import write_split_csvs  # noqa: E402

from acula_edge.checkpoint import load_checkpoint, weights_sha256  # noqa: E402
from acula_edge.data import Dataset, Recording, load_dataset  # noqa: E402
from acula_edge.distill.augment import AugmentConfig  # noqa: E402
from acula_edge.distill.metrics import recording_metrics  # noqa: E402
from acula_edge.distill.train import TrainConfig, predict, train_student  # noqa: E402
from acula_edge.errors import ParityError  # noqa: E402
from acula_edge.export import parity  # noqa: E402
from acula_edge.export.api import export_model  # noqa: E402
from acula_edge.export.calibration import prepare_data  # noqa: E402
from acula_edge.export.targets.tflm import MCU_FLASH_BYTES as FLASH_BUDGET  # noqa: E402
from acula_edge.export.targets.tflm import MCU_RAM_BYTES as RAM_BUDGET  # noqa: E402
from acula_edge.frontend import preset  # noqa: E402
from acula_edge.manifest import read_manifest  # noqa: E402
from acula_edge.windows import extract_windows  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "physionet2016"
NOTES_MARKER = "## Observations"


def train(size: str, seed: int, args: argparse.Namespace, train_ds: Dataset, work: Path) -> Path:
    """A supervised student of ``size`` (reused when ``work`` already holds it)."""
    out = work / f"student-{size}-seed{seed}"
    if (out / "model.safetensors").is_file():
        return out
    cfg = TrainConfig(student=size, epochs=args.epochs, max_windows_per_recording=args.max_windows, seed=seed,
                      group_column=None, normalisation="per_window", patience=0, batch_size=32, lr=3e-3,
                      augment=AugmentConfig.off())
    return train_student(cfg, None, train_ds, out, progress=False, resume=False, cache_dir=work / "cache")


def budget(manifest_extra: dict[str, Any]) -> dict[str, Any]:
    """Flash and RAM of a tflm bundle from its manifest's extra (as `acula-edge info` prints it)."""
    fe = manifest_extra["frontend_memory"]
    mem = manifest_extra["memory"]
    return {"model_bytes": manifest_extra["model_bytes"], "frontend_flash": fe["flash_bytes"],
            "arena_measured": manifest_extra["arena_bytes_measured"], "arena": manifest_extra["arena_bytes"],
            "frontend_ram": fe["ram_bytes"], "window_bytes": fe.get("window_bytes", 0),
            "flash": mem["flash_bytes"], "ram": mem["ram_bytes"]}


def agreement(bundle: Path, x: np.ndarray) -> dict[str, Any]:
    """Run the bundle's model file through TFLM and LiteRT on ``x`` (N, 1, frames, mels); compare the outputs."""
    m = read_manifest(bundle)
    path = bundle / m.model_file
    t0 = time.perf_counter()
    litert = parity.file_outputs("tflite", path, x, m.inputs, m.outputs)
    t1 = time.perf_counter()
    tflm = parity.file_outputs("tflm", path, x, m.inputs, m.outputs, {"arena_bytes": m.extra["arena_bytes"]})
    t2 = time.perf_counter()
    out: dict[str, Any] = {"litert": litert, "tflm": tflm, "litert_ms": 1e3 * (t1 - t0) / len(x),
                           "tflm_ms": 1e3 * (t2 - t1) / len(x), "outputs": {}}
    for spec in m.outputs:
        steps = np.abs(litert[spec.name] - tflm[spec.name]) / np.float32(spec.scale)
        steps = np.round(steps).astype(np.int64)  # dequantized ints: differences are whole steps
        out["outputs"][spec.name] = {"max_steps": int(steps.max()), "identical": float(np.mean(steps == 0)),
                                     "values": int(steps.size)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--holdout", default="b", help="PhysioNet subset held out (test set of the fold)")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small", "small-mcu"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-windows", type=int, default=2, help="training windows per recording")
    ap.add_argument("--test-windows", type=int, default=2, help="held-out windows per recording")
    ap.add_argument("--calib-windows", type=int, default=300)
    ap.add_argument("--gate-windows", type=int, default=200, help="held-out windows of the export parity gate")
    ap.add_argument("--work", default="/tmp/acula-firmware-bench")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS_firmware.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    load = os.getloadavg()
    train_csv, test_csv = write_split_csvs(Path(args.data), args.holdout, work)
    ds = load_dataset(args.data)
    rate = preset("heart")[0].sample_rate  # decode once at the students' rate; every run re-cuts windows
    ds = Dataset(ds.name, tuple(Recording(r.record_id, r.label, dict(r.metadata), samples=r.load(rate),
                                          sample_rate=rate) for r in ds))
    train_ds = ds.where("subset", [args.holdout], keep=False)
    test_ds = ds.where("subset", [args.holdout], keep=True)
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        for seed in args.seeds:
            t0 = time.time()
            ckpt = train(size, seed, args, train_ds, work)
            train_s = time.time() - t0
            model, info = load_checkpoint(ckpt)
            w = extract_windows(test_ds, info.frontend, info.windowing, info.labels,
                                max_windows_per_recording=args.test_windows)
            rec_labels = np.array([info.labels.index(r.label) for r in test_ds])
            _, logits = predict(model, w.x)
            auroc_fp32 = recording_metrics(logits, w.recording, rec_labels)["auroc"]
            bundle = work / f"bundle-{size}-seed{seed}-tflm"
            head = {"size": size, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
                    "macs": info.extra.get("model_report", {}).get("macs_per_window"), "train_s": round(train_s, 1),
                    "recordings": int(len(test_ds)), "windows": int(len(w.x)), "auroc_fp32": auroc_fp32}
            if not (bundle / "manifest.json").is_file():
                data = prepare_data(info, "int8", str(train_csv), str(test_csv), args.calib_windows,
                                    args.gate_windows)
                try:
                    export_model(model, info, bundle, "tflm", "int8", data=data, source_sha256=weights_sha256(ckpt),
                                 source_path=str(ckpt))
                except ParityError as e:  # the gate refused the int8 model: report it, measure the others
                    rows.append({**head, "gate": "FAIL: " + "; ".join(e.mismatches)})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
            manifest = read_manifest(bundle)
            x = np.ascontiguousarray(w.x[:, None], dtype=np.float32)
            agree = agreement(bundle, x)
            aurocs = {k: recording_metrics(agree[k]["logits"], w.recording, rec_labels)["auroc"]
                      for k in ("tflm", "litert")}
            gate_cos = manifest.parity["outputs"]["embedding"]["cosine_mean"]
            row = {**head, **budget(manifest.extra), "gate": f"pass (emb. cosine {gate_cos:.4f})",
                   "auroc_tflm": aurocs["tflm"], "auroc_litert": aurocs["litert"],
                   "agreement": agree["outputs"], "tflm_ms": agree["tflm_ms"], "litert_ms": agree["litert_ms"],
                   "ops": manifest.extra.get("ops")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_results(Path(args.results), rows, args, " ".join(sys.argv), time.time() - t_all, load)


def _kib(n: int) -> str:
    return f"{n:,} B ({n / 1024:.1f} KiB)"


def write_results(path: Path, rows: list[dict], args: argparse.Namespace, command: str, seconds: float,
                  load: tuple[float, float, float]) -> None:
    from importlib.metadata import version

    pkgs = ["torch", "litert-torch", "ai-edge-litert", "tflite-micro"]
    first = {}
    for r in rows:  # the memory budget does not depend on the seed (same architecture); show the first exported
        if "agreement" in r:
            first.setdefault(r["size"], r)
    lines = [
        "# Firmware budget: tflm bundles of trained students against a stethoscope MCU",
        "",
        f"- command: `python {command}` ({seconds / 60:.0f} min)",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs, load average at start {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f} (1 / 5 / 15 min), torch threads 1; " + ", ".join(f"{p} {version(p)}" for p in pkgs),
        f"- students: trained here **supervised** (no teacher), {args.epochs} epochs, {args.max_windows} windows per "
        f"recording, no augmentation, per-window normalisation, on PhysioNet 2016 subsets other than "
        f"'{args.holdout}'; seeds {', '.join(str(s) for s in args.seeds)}",
        f"- export: `tflm` int8 (full-integer PT2E), calibrated on {args.calib_windows} training windows, "
        f"parity-gated on {args.gate_windows} held-out windows",
        f"- held-out test: all {rows[0]['recordings'] if rows else 0} recordings of subset '{args.holdout}', "
        f"{args.test_windows} windows each; AUROC at recording level (mean of window P(abnormal))",
        "",
        f"## Memory against a Cortex-M4/M7 class MCU: {FLASH_BUDGET // 1024} KiB flash, {RAM_BUDGET // 1024} KiB RAM "
        "(computed from parts on the host)",
        "",
        "Measured from the linked ELF (code, the 32-bit arena and the stack included) in \"Linked and run on an "
        "emulated cortex-m4\" at the end of this file (`benchmarks/firmware_mcu.py`); this table is kept because "
        "the two differ.",
        "",
        "Flash = model bytes + C front-end tables; RAM = TFLM arena (smallest arena `tflite_micro`'s Python interpreter "
        "allocates, 64-bit host, found by bisection to 16 B, + the 1,024 B margin the bundle's header adds) + C "
        "front-end state (`sizeof(acula_frontend_t)`) + the float32 model-input window the firmware keeps "
        "(frames × mels × 4 B, see examples/firmware/main.c). Code size of TFLM and the front-end is not counted. "
        "All figures are the bundle manifest's (`acula-edge info BUNDLE` prints them).",
        "",
        "| student | params | MACs/window | model B | front-end tables B | flash total | arena measured B | "
        "front-end state B | window B | RAM total | fits flash / RAM? | RAM to spare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for size, r in first.items():
        fits = f"{'yes' if r['flash'] <= FLASH_BUDGET else '**no**'} / {'yes' if r['ram'] <= RAM_BUDGET else '**no**'}"
        lines.append(f"| {size} | {r['params']:,} | {(r['macs'] or 0) / 1e6:.1f} M | {r['model_bytes']:,} | "
                     f"{r['frontend_flash']:,} | {_kib(r['flash'])} | {r['arena_measured']:,} | {r['frontend_ram']:,} | "
                     f"{r['window_bytes']:,} | {_kib(r['ram'])} | {fits} | {_kib(RAM_BUDGET - r['ram'])} |")
    lines += [
        "",
        "## TFLite Micro vs LiteRT on the same int8 model file, and held-out AUROC",
        "",
        "The bundle's `model.tflite` run on every held-out window by the `tflite_micro` Python interpreter (reference "
        "kernels, the bundle's arena) and by LiteRT (`ai_edge_litert`, XNNPACK, 1 thread). Differences are in output "
        "quantization steps (the int8 outputs dequantized, difference / scale).",
        "",
        "| student | seed | windows | logits: max diff (steps) | logits identical | embedding: max diff (steps) | "
        "embedding identical | AUROC TFLM | AUROC LiteRT | AUROC fp32 torch | ms/window TFLM / LiteRT | export gate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "agreement" not in r:
            lines.append(f"| {r['size']} | {r['seed']} | {r['windows']} | — | — | — | — | — | — | "
                         f"{r['auroc_fp32']:.4f} | — | {r['gate']} |")
            continue
        lo, emb = r["agreement"]["logits"], r["agreement"]["embedding"]
        lines.append(f"| {r['size']} | {r['seed']} | {r['windows']} | {lo['max_steps']} | {100 * lo['identical']:.1f}% "
                     f"| {emb['max_steps']} | {100 * emb['identical']:.1f}% | {r['auroc_tflm']:.4f} | "
                     f"{r['auroc_litert']:.4f} | {r['auroc_fp32']:.4f} | {r['tflm_ms']:.1f} / {r['litert_ms']:.2f} | "
                     f"{r['gate']} |")
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    if len(args.seeds) > 1:
        lines += ["", "Mean ± standard deviation over seeds (recording-level AUROC on the held-out subset):", "",
                  "| student | seeds | AUROC fp32 torch | AUROC TFLM int8 (exported seeds) |", "|---|---:|---:|---:|"]
        for s in sizes:
            sel = [r for r in rows if r["size"] == s]
            tflm = [r["auroc_tflm"] for r in sel if "auroc_tflm" in r]
            lines.append(f"| {s} | {len(sel)} | {np.mean([r['auroc_fp32'] for r in sel]):.4f} ± "
                         f"{np.std([r['auroc_fp32'] for r in sel]):.4f} | "
                         + (f"{np.mean(tflm):.4f} ({len(tflm)})" if tflm else "—") + " |")
    notes = ""  # hand-written observations below the marker survive a re-run
    if path.is_file() and NOTES_MARKER in path.read_text():
        notes = "\n" + NOTES_MARKER + path.read_text().split(NOTES_MARKER, 1)[1]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n" + notes)
    tmp.replace(path)


if __name__ == "__main__":
    main()
