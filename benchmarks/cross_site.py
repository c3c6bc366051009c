"""Cross-site robustness on PhysioNet 2016, leave-one-subset-out: which training options help on an unseen site.

    python benchmarks/cross_site.py --variants baseline band-norm ... [--folds a b d f] [--epochs 6]
        [--max-windows 4] [--seeds 0] [--int8] [--work /tmp/xsite] [--json FILE]
    python benchmarks/cross_site.py --summary FILE...  # a markdown table of --json files
    python benchmarks/cross_site.py --op-summary FILE...  # per fold: the shipped operating point on the subset

For every held-out subset (the whole subset is the test set: another site and stethoscope; nothing of it is used
for training, validation, model selection or thresholds) and every variant, a ``small`` student is trained from
scratch (labels only: distillation from a supervised teacher did not change the cross-site picture, see
RESULTS_distill.md) on the other four subsets, subset ``c`` always in training. Reported per run:

- recording-level AUROC on the held-out subset (mean window probability over up to ``--test-windows`` windows),
  Se / Sp / MAcc at the 0.5 threshold (training is class-balanced; no threshold is tuned);
- the site-shortcut probe (``acula_edge.bench.probe.site_probe``): balanced accuracy of a cross-validated linear
  probe predicting the subset from the model's recording embedding (mean window embedding), over all five subsets,
  and the same inside each label (which removes the route through the site's label balance); chance is 0.20;
- the untrained (random-initialised) student's probe as the floor any front-end gives;
- the shipped decision (RESULTS_operating_point.md): the held-out subset scored as the device scores it (every
  window, quality-checked, averaged), decided at the operating point distill chose on its validation split
  (``--val-group subset``: one whole training subset, as ``acula-edge distill`` does; ``--operating-point``), with
  Se / Sp (Wilson intervals) next to the best MAcc any threshold reaches on the held-out subset (an oracle).

A variant is a "+"-joined list of options (:data:`OPTIONS`), e.g. ``band-norm+device-sim``. ``--int8`` also
exports every trained student to a full-int8 LiteRT (TFLite) bundle, calibrated on windows of its training subsets,
and scores the held-out subset and the probe through the LiteRT runtime. One torch thread (and set OPENBLAS_NUM_THREADS=1:
multi-threaded BLAS slows the probe's small solves badly on a loaded machine); run several processes (e.g. one per
fold) to use more cores. Run folders go to ``--work`` (outside the repo).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acula_edge.bench.probe import site_probe
from acula_edge.checkpoint import load_checkpoint, weights_sha256
from acula_edge.data import Dataset, Recording, load_dataset
from acula_edge.errors import ParityError
from acula_edge.frontend import preset
from acula_edge.distill.augment import AugmentConfig
from acula_edge.distill.metrics import recording_means, recording_metrics
from acula_edge.distill.students import DSCNNStudent
from acula_edge.distill.train import TrainConfig, predict, train_student
from acula_edge.windows import Windows, extract_windows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "physionet2016"
GROUP = "subset"

# Training options measured here: TrainConfig overrides.
OPTIONS: dict[str, dict[str, Any]] = {
    "baseline": {},  # per-window normalisation, default log-mel augmentation (gain, shift, noise, EQ, masks)
    "no-aug": {"augment": AugmentConfig.off()},
    "band-norm": {"normalisation": "per_window_band"},  # remove each window's mean spectrum
    "band-limit": {"frontend_preset": "heart-band"},  # 25-400 Hz instead of 25-800 Hz
    "device-sim": {"device_copies": 1},  # a simulated-device copy of every training recording
    "balanced": {"balance_column": GROUP},  # every subset x label cell sampled equally
    "adversary": {"adversary_column": GROUP, "adversary_weight": 0.3},  # site-adversarial head
    "adversary-strong": {"adversary_column": GROUP, "adversary_weight": 1.0},
}


def variant_config(base: TrainConfig, variant: str) -> TrainConfig:
    overrides: dict[str, Any] = {}
    for name in variant.split("+"):
        if name not in OPTIONS:
            raise SystemExit(f"unknown option {name!r} in variant {variant!r}; choose from {sorted(OPTIONS)}")
        overrides.update(OPTIONS[name])
    return dataclasses.replace(base, **overrides)


_WINDOWS: dict[str, Windows] = {}


def all_windows(ds: Dataset, info: Any, n: int) -> Windows:
    """Up to ``n`` evenly spaced windows of every recording, for one front-end (cached per front-end)."""
    key = info.frontend.to_json() + json.dumps(info.windowing.to_dict())
    if key not in _WINDOWS:
        _WINDOWS[key] = extract_windows(ds, info.frontend, info.windowing, info.labels, max_windows_per_recording=n)
    return _WINDOWS[key]


def score(emb: np.ndarray, logits: np.ndarray, w: Windows, fold: str) -> dict[str, Any]:
    """Held-out AUROC etc. and the site probe, from per-window outputs on every recording of the dataset."""
    groups = np.array([r.metadata[GROUP] for r in w.dataset])
    labels = [r.label for r in w.dataset]
    test = groups[w.recording] == fold
    rec_idx = np.flatnonzero(groups == fold)
    remap = np.full(len(groups), -1)
    remap[rec_idx] = np.arange(len(rec_idx))
    rec_labels = np.array([w.labels.index(labels[i]) for i in rec_idx])
    m = recording_metrics(logits[test], remap[w.recording[test]], rec_labels, threshold=0.5)
    ids, rec_emb = recording_means(emb, w.recording)
    assert np.array_equal(ids, np.arange(len(groups))), "every recording has at least one (padded) window"
    probe = site_probe(rec_emb, groups, labels)
    return {**{k: m[k] for k in ("auroc", "se", "sp", "macc", "n", "n_pos")},
            "site_probe": probe["balanced_accuracy"], "site_probe_within_label": probe.get("within_label_mean")}


def evaluate_torch(folder: Path, ds: Dataset, fold: str, n: int) -> dict[str, Any]:
    model, info = load_checkpoint(folder)
    w = all_windows(ds, info, n)
    emb, logits = predict(model, w.x)
    rep = info.extra.get("model_report", {})
    return {**score(emb, logits, w, fold), "params": rep.get("parameters"),
            "best_epoch": info.extra.get("metrics", {}).get("best_epoch"),
            **operating_point_figures(model, info, ds.where(GROUP, [fold], keep=True))}


def operating_point_figures(model: Any, info: Any, test: Dataset) -> dict[str, Any]:
    """The shipped decision on the held-out subset: every recording scored as the device scores it (all windows,
    quality-checked, averaged: distill.train.score_recordings), decided at the checkpoint's operating point (chosen
    by distill on its validation split); Se/Sp with Wilson intervals, and the best MAcc any threshold reaches on
    this subset (an oracle: chosen on the test data itself, the ceiling the shipped point is measured against)."""
    from acula_edge.bench.metrics import auroc
    from acula_edge.distill.train import score_recordings
    from acula_edge.operating_point import at_threshold, choose

    point = info.operating_point
    scores = score_recordings(model, test, info.frontend, info.windowing, info.labels)[:, -1]
    y = np.array([r.label == info.labels[-1] for r in test], dtype=bool)
    at = at_threshold(y, scores, point.threshold, point.method)
    best = choose(y, scores, "youden")
    return {"device_auroc": auroc(y, scores), "op": point.to_dict(), "op_test": at.to_dict(),
            "macc_op": (at.sensitivity + at.specificity) / 2, "best_macc": (best.sensitivity + best.specificity) / 2,
            "best_threshold": best.threshold, "best_se": best.sensitivity, "best_sp": best.specificity}


def evaluate_untrained(base: TrainConfig, ds: Dataset, fold: str, n: int, seed: int) -> dict[str, Any]:
    """The random-initialised student: the probe floor of the front-end alone."""
    from acula_edge.distill.students import student_config

    torch.manual_seed(seed)
    fe, win = preset(base.frontend_preset or "heart")
    fe = dataclasses.replace(fe, normalisation=base.normalisation or fe.normalisation)
    model = DSCNNStudent(student_config(base.student, base.embedding_dim, 2))
    info = type("Info", (), {"frontend": fe, "windowing": win, "labels": ds.labels})()
    w = all_windows(ds, info, n)
    emb, logits = predict(model, w.x)
    return score(emb, logits, w, fold)


def evaluate_int8(folder: Path, data: str, ds: Dataset, fold: str, n: int, work: Path) -> dict[str, Any]:
    """Export to a full-int8 LiteRT bundle (calibrated on the training subsets) and score through LiteRT."""
    from acula_edge.export.api import export_model
    from acula_edge.export.calibration import prepare_data
    from acula_edge.manifest import read_manifest
    from acula_edge.runtime import load

    model, info = load_checkpoint(folder)
    bundle = work / "int8-tflite"
    if not (bundle / "manifest.json").is_file():
        edata = prepare_data(info, "int8", f"{data}[{GROUP}!={fold}]", f"{data}[{GROUP}={fold}]", 300, 400)
        export_model(model, info, bundle, "tflite", "int8", data=edata, source_sha256=weights_sha256(folder),
                     source_path=str(folder))
    manifest = read_manifest(bundle)
    edge = load(bundle, num_threads=1)
    w = all_windows(ds, info, n)
    t0 = time.perf_counter()
    outs = [edge.run_window(x) for x in w.x]
    seconds = time.perf_counter() - t0
    emb = np.stack([o[0] for o in outs])
    probs = np.stack([o[1] for o in outs])
    return {**score(emb, np.log(np.clip(probs, 1e-7, 1.0)), w, fold), "model_bytes": manifest.extra["model_bytes"],
            "parity": manifest.parity, "ms_per_window": 1e3 * seconds / len(outs)}


def summarise(paths: list[str]) -> None:
    """A markdown table from ``--json`` files: per fold, and the mean over folds, per variant and model kind."""
    rows = [json.loads(line) for path in paths for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    # a rerun of the same (fold, variant, seed, model) replaces the earlier row
    rows = list({(r["fold"], r["variant"], r.get("seed"), r["model"]): r for r in rows}.values())
    folds = sorted({r["fold"] for r in rows})
    keys = list(dict.fromkeys((r["variant"], r["model"]) for r in rows))
    print("Mean over seeds per fold; 'site' is the site-shortcut probe (balanced accuracy, chance 0.20).\n")
    print("| variant | model | seeds | " + " | ".join(f"{f}: AUROC / site" for f in folds)
          + " | mean AUROC | min AUROC | mean site probe | mean site probe within label |")
    print("|---|---|---|" + "---|" * len(folds) + "---|---|---|---|")
    for variant, model in keys:
        sel = [r for r in rows if r["variant"] == variant and r["model"] == model]
        failed = [f"{r['fold']}/s{r.get('seed')}" for r in sel if "auroc" not in r]
        sel = [r for r in sel if "auroc" in r]
        per_fold = {f: [r for r in sel if r["fold"] == f] for f in folds}
        cells, aurocs, sites, within = [], [], [], []
        for f in folds:
            if not per_fold[f]:
                cells.append("")
                continue
            a = float(np.mean([r["auroc"] for r in per_fold[f]]))
            site = float(np.mean([r["site_probe"] for r in per_fold[f]]))
            aurocs.append(a)
            sites.append(site)
            within += [r["site_probe_within_label"] for r in per_fold[f] if r.get("site_probe_within_label")]
            cells.append(f"{a:.3f} / {site:.3f}")
        seeds = len({r.get("seed") for r in sel})
        note = f" (export gate failed: {', '.join(failed)})" if failed else ""
        print(f"| {variant} | {model}{note} | {seeds} | " + " | ".join(cells) + f" | {np.mean(aurocs):.3f} | "
              f"{np.min(aurocs):.3f} | {np.mean(sites):.3f} | {np.mean(within) if within else float('nan'):.3f} |")


def summarise_operating_point(paths: list[str]) -> None:
    """Per fold: AUROC, and Se/Sp/MAcc at the shipped operating point beside the best MAcc on the fold."""
    rows = [json.loads(line) for path in paths for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    rows = [r for r in rows if r.get("model") == "torch" and "op" in r]
    rows = list({(r["fold"], r["variant"], r.get("seed")): r for r in rows}.values())

    def ci(v: float, lo_hi: list[float]) -> str:  # bold below 0.2: the point did not transfer
        text = f"{v:.2f} [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]"
        return f"**{text}**" if v < 0.2 else text

    print("| held-out subset | variant | seed | recordings (abnormal) | AUROC | shipped threshold (method; validation "
          "subset, recordings) | validation Se / Sp | held-out Se | held-out Sp | held-out MAcc | best MAcc on the "
          "subset (threshold) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["fold"], r["variant"], r.get("seed"))):
        op, t = r["op"], r["op_test"]
        val = op["chosen_on"].split(": ", 1)[-1].rstrip(")")
        print(f"| {r['fold']} | {r['variant']} | {r.get('seed')} | {t['n_recordings']} ({t['n_positive']}) | "
              f"{r['device_auroc']:.3f} | {op['threshold']:.3f} ({op['method']}; {val}, {op['n_recordings']}) | "
              f"{op['sensitivity']:.2f} / {op['specificity']:.2f} | {ci(t['sensitivity'], t['sensitivity_ci95'])} | "
              f"{ci(t['specificity'], t['specificity_ci95'])} | {r['macc_op']:.3f} | "
              f"{r['best_macc']:.3f} ({r['best_threshold']:.3f}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--folds", nargs="+", default=["a", "b", "d", "f"])
    ap.add_argument("--variants", nargs="+", default=["baseline"])
    ap.add_argument("--student", default="small")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--max-windows", type=int, default=4, help="training windows per recording")
    ap.add_argument("--test-windows", type=int, default=8, help="windows per recording for scoring and the probe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--int8", action="store_true", help="also export int8 LiteRT bundles and score them")
    ap.add_argument("--untrained", action="store_true", help="also probe the random-initialised student")
    ap.add_argument("--work", default="/tmp/xsite")
    ap.add_argument("--json", default=None, help="append one JSON line per run to this file")
    ap.add_argument("--val-group", default=None,
                    help="validation split by whole groups of this column (distill's default: subset); "
                         "default: 20 %% of the training recordings, stratified by label")
    ap.add_argument("--operating-point", default="youden", help="how distill chooses the threshold on validation")
    ap.add_argument("--summary", nargs="+", default=None, help="only print a markdown table of these --json files")
    ap.add_argument("--op-summary", nargs="+", default=None,
                    help="only print the operating-point table (per fold) of these --json files")
    args = ap.parse_args()
    if args.summary:
        summarise(args.summary)
        return
    if args.op_summary:
        summarise_operating_point(args.op_summary)
        return
    torch.set_num_threads(1)
    work = Path(args.work)
    ds = load_dataset(args.data)
    rate = preset("heart")[0].sample_rate  # every option's front-end runs at the heart preset's rate
    ds = Dataset(ds.name, tuple(Recording(r.record_id, r.label, dict(r.metadata), samples=r.load(rate),
                                          sample_rate=rate) for r in ds))  # decode once
    base = TrainConfig(student=args.student, epochs=args.epochs, max_windows_per_recording=args.max_windows,
                       group_column=args.val_group, normalisation="per_window", patience=0, batch_size=32, lr=3e-3,
                       operating_point=args.operating_point)
    host = f"{platform.node()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}"

    def emit(row: dict[str, Any]) -> None:
        row["utc"] = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    for fold in args.folds:
        train_ds = ds.where(GROUP, [fold], keep=False)
        if args.untrained:  # once per front-end: the other options do not change an untrained model
            seen = set()
            for v in args.variants:
                cfg = variant_config(base, v)
                if (cfg.frontend_preset, cfg.normalisation) not in seen:
                    seen.add((cfg.frontend_preset, cfg.normalisation))
                    emit({"fold": fold, "variant": v, "model": "untrained", "host": host,
                          **evaluate_untrained(cfg, ds, fold, args.test_windows, 0)})
        for seed in args.seeds:
            for v in args.variants:
                cfg = dataclasses.replace(variant_config(base, v), seed=seed)
                out = work / fold / f"{v}-s{seed}" / "student"
                t0 = time.time()
                if not (out / "config.json").is_file():
                    train_student(cfg, None, train_ds, out, progress=False, resume=True)
                row = {"fold": fold, "variant": v, "seed": seed, "model": "torch", "train_s": round(time.time() - t0),
                       "host": host, **evaluate_torch(out, ds, fold, args.test_windows)}
                emit(row)
                if args.int8:
                    row = {"fold": fold, "variant": v, "seed": seed, "model": "int8-tflite", "host": host}
                    try:
                        row.update(evaluate_int8(out, args.data, ds, fold, args.test_windows, out.parent))
                    except ParityError as e:  # the export gate refused the bundle: a result, not a crash
                        row["gate"] = "FAIL: " + str(e).splitlines()[-1].strip()
                    emit(row)


if __name__ == "__main__":
    main()
