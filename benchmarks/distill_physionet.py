"""Distillation on PhysioNet 2016, leave-one-subset-out: teacher vs student from scratch vs distilled student.

    python benchmarks/distill_physionet.py [--folds b a] [--sizes tiny small base] [--epochs 3]
        [--teacher-epochs 4] [--max-windows 2] [--ablations] [--reuse-teacher] [--work /tmp/distill-bench]
        [--json FILE]

For every held-out subset (the whole subset is the test set; nothing of it is seen in training, validation, probe
fitting or threshold choice):

1. the teacher: an align/ checkpoint when ``--teacher DIR`` is given, otherwise a ``base`` DS-CNN trained
   supervised (labels only) for ``--teacher-epochs`` on the other subsets — the stand-in used while no aligned
   teacher for this front-end exists;
2. for each student size: the student trained from scratch (``--teacher none``: labels only, same code path) and
   the student distilled from the teacher (embedding cosine + MSE, KD at T=2, CE; all class-balanced);
3. recording-level scores on the held-out subset: mean of window probabilities per recording, AUROC, Se, Sp and
   MAcc = (Se + Sp) / 2 at the 0.5 threshold (training is class-balanced, so 0.5 is the balanced operating point;
   no threshold is tuned on the test subset).

Model selection (best epoch) uses a validation split of 20% of the training recordings, stratified by label.
Subset-level validation was not used: with four unequal training subsets it removes up to 60% of the data.
``--ablations`` adds, for the small student, runs without augmentation and with global (instead of per-window)
normalisation, to measure what each buys. One torch thread. Run folders go to ``--work`` (outside the repo).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acula_edge.checkpoint import load_checkpoint, save_checkpoint
from acula_edge.data import Dataset, Recording, load_dataset
from acula_edge.frontend import preset
from acula_edge.distill.augment import AugmentConfig
from acula_edge.distill.metrics import recording_metrics
from acula_edge.distill.train import TrainConfig, predict, train_student
from acula_edge.windows import extract_windows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "physionet2016"


_TEST_WINDOWS: dict[tuple[str, str, str], Any] = {}


def evaluate(folder: Path, test_ds: Any, max_windows: int) -> dict[str, Any]:
    model, info = load_checkpoint(folder)
    key = (test_ds.name, info.frontend.to_json(), json.dumps(info.windowing.to_dict()))
    if key not in _TEST_WINDOWS:  # every model of a fold shares the test windows
        _TEST_WINDOWS[key] = extract_windows(test_ds, info.frontend, info.windowing, info.labels,
                                             max_windows_per_recording=max_windows)
    w = _TEST_WINDOWS[key]
    _, logits = predict(model, w.x)
    rec_labels = np.array([info.labels.index(r.label) for r in test_ds])
    m = recording_metrics(logits, w.recording, rec_labels, threshold=0.5)
    rep = info.extra.get("model_report", {})
    return {**{k: m[k] for k in ("auroc", "se", "sp", "macc", "n", "n_pos")}, "params": rep.get("parameters"),
            "macs": rep.get("macs_per_window"), "val_auroc": (info.extra.get("metrics", {}).get("val") or {}).get(
                "auroc"), "best_epoch": info.extra.get("metrics", {}).get("best_epoch")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--folds", nargs="+", default=["b", "a"])
    ap.add_argument("--sizes", nargs="*", default=["tiny", "small", "base"], help="none: only the ablations")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--teacher", default=None, help="an align/ teacher checkpoint (default: train a base CNN)")
    ap.add_argument("--max-windows", type=int, default=2, help="training windows per recording")
    ap.add_argument("--test-windows", type=int, default=8, help="test windows per recording")
    ap.add_argument("--normalisation", default="per_window")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--stems", nargs="+", default=["conv"],
                    help="student stem forms (distill.students.STEMS); several: one row per stem")
    ap.add_argument("--scratch-only", action="store_true", help="no teacher, no distilled students")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--reuse-teacher", action="store_true", help="reuse the base teacher a previous run trained")
    ap.add_argument("--work", default="/tmp/distill-bench")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    ds = load_dataset(args.data)
    if not args.teacher:
        # decode every recording once, at the student front-end's rate (the runs below re-cut windows many times)
        rate = preset("heart")[0].sample_rate
        ds = Dataset(ds.name, tuple(Recording(r.record_id, r.label, dict(r.metadata), samples=r.load(rate),
                                              sample_rate=rate) for r in ds))
    base = TrainConfig(epochs=args.epochs, max_windows_per_recording=args.max_windows, group_column=None,
                       normalisation=args.normalisation, patience=0, batch_size=32, lr=3e-3)
    rows: list[dict[str, Any]] = []
    t_all = time.time()

    def run(fold: str, name: str, cfg: TrainConfig, teacher: Any, train_ds: Any, test_ds: Any) -> Path:
        out = work / fold / name
        t0 = time.time()
        train_student(cfg, teacher, train_ds, out, progress=False, resume=False, cache_dir=work / fold / "cache")
        seconds = time.time() - t0
        row = {"fold": fold, "model": name, "train_s": round(seconds, 1), **evaluate(out, test_ds, args.test_windows)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return out

    for fold in args.folds:
        train_ds = ds.where("subset", [fold], keep=False)
        test_ds = ds.where("subset", [fold], keep=True)
        if args.scratch_only:
            teacher_dir = None
        elif args.teacher:
            teacher_dir = Path(args.teacher)
            rows.append({"fold": fold, "model": "teacher(align)", **evaluate(teacher_dir, test_ds, args.test_windows)})
        elif args.reuse_teacher and (work / fold / "teacher(base-supervised)" / "config.json").is_file():
            teacher_dir = work / fold / "teacher(base-supervised)"
            rows.append({"fold": fold, "model": "teacher(base-supervised)",
                         **evaluate(teacher_dir, test_ds, args.test_windows)})
        else:
            cfg = dataclasses.replace(base, student="base", epochs=args.teacher_epochs)
            teacher_dir = run(fold, "teacher(base-supervised)", cfg, None, train_ds, test_ds)
            model, info = load_checkpoint(teacher_dir)
            save_checkpoint(model, dataclasses.replace(info, kind="teacher"), teacher_dir)
        for size in args.sizes:
            for stem in args.stems:
                for seed in args.seeds:
                    cfg = dataclasses.replace(base, student=size, stem=stem, seed=seed)
                    tag = (f",{stem}" if len(args.stems) > 1 else "") + (f",seed{seed}" if len(args.seeds) > 1 else "")
                    run(fold, f"{size}/scratch{tag}", cfg, None, train_ds, test_ds)
                    if teacher_dir is not None:
                        run(fold, f"{size}/distilled{tag}", cfg, str(teacher_dir), train_ds, test_ds)
        if args.ablations:
            small = dataclasses.replace(base, student="small")
            run(fold, "small/scratch,no-aug", dataclasses.replace(small, augment=AugmentConfig.off()), None,
                train_ds, test_ds)
            run(fold, "small/distilled,no-aug", dataclasses.replace(small, augment=AugmentConfig.off()),
                str(teacher_dir), train_ds, test_ds)
            run(fold, "small/scratch,global-norm", dataclasses.replace(small, normalisation="global"), None,
                train_ds, test_ds)
    total = time.time() - t_all

    print(f"\n| fold | model | params | MACs/window | AUROC | Se | Sp | MAcc | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fold']} | {r['model']} | {r.get('params') or ''} | {r.get('macs') or ''} | {r['auroc']:.3f} | "
              f"{r['se']:.3f} | {r['sp']:.3f} | {r['macc']:.3f} | {r.get('train_s', '')} |")
    names = list(dict.fromkeys(r["model"] for r in rows))
    print("\n| model | mean AUROC | mean MAcc |")
    print("|---|---|---|")
    for n in names:
        sel = [r for r in rows if r["model"] == n]
        print(f"| {n} | {np.mean([r['auroc'] for r in sel]):.3f} | {np.mean([r['macc'] for r in sel]):.3f} |")
    print(f"\ntotal {total:.0f} s, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "total_s": total}, indent=1))


if __name__ == "__main__":
    main()
