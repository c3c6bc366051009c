"""Site adaptation from unlabeled recordings, and the site-shift warning, leave-one-subset-out on PhysioNet 2016.

    python benchmarks/adapt_cross_site.py [--folds a b d f] [--seeds 0 1 2] [--variant band-norm+band-limit]
        [--epochs 4] [--max-windows 3] [--work /tmp/adapt_xsite] [--json FILE]
    python benchmarks/adapt_cross_site.py --summary FILE...  # markdown tables of --json files

For every held-out subset and seed a ``small`` student is trained on the other subsets exactly as in
``cross_site.py`` (same options, same training path). The held-out subset's recordings are split at random (by the
seed) into two disjoint halves: the *adaptation* half is used **without its labels** to adapt; the *scoring* half
gives AUROC and Se / Sp. Methods (all estimated on the adaptation half only):

- ``none``: the unadapted model; ``fe-norm``: the front-end correction (per-band log-mel mean and spread moved onto
  the training audio's; no weight change); ``adabn``: batch-norm statistics re-estimated on the site's windows;
  ``fe-norm+adabn``: both.
- For each, Se / Sp at the shipped operating point (the checkpoint's threshold) and at the operating point
  re-chosen on the site (``prior``: the adaptation half's score quantile that calls the training prevalence
  positive).
- Paired bootstrap (recordings of the scoring half) 95 % interval of each method's AUROC change over ``none``.

Also per fold and seed: the site-shift score (``acula_edge.runtime.site_shift``) of every held-out recording and of
the in-distribution validation recordings (the training split's validation part, never in the description), and
AUROC against the number of adaptation recordings (``--sizes``), for the "too few recordings" safeguard.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_site import DEFAULT_DATA, GROUP, variant_config  # noqa: E402  (the same training options)

from acula_edge.adapt import adabn, prior_threshold  # noqa: E402
from acula_edge.checkpoint import load_checkpoint  # noqa: E402
from acula_edge.data import Dataset, Recording, load_dataset  # noqa: E402
from acula_edge.distill.metrics import binary_metrics, softmax  # noqa: E402
from acula_edge.distill.train import TrainConfig, predict, split_validation, train_student  # noqa: E402
from acula_edge.features import LogMel  # noqa: E402
from acula_edge.frontend import preset  # noqa: E402
from acula_edge.runtime.site_shift import FrontendCorrection, describe, recording_features, site_stats  # noqa: E402
from acula_edge.windows import choose_windows, frame_windows, recording_scores  # noqa: E402

METHODS = ("none", "fe-norm", "adabn", "fe-norm+adabn")
WARN_QUANTILES = (0.9, 0.95, 0.99, 1.0)  # candidate thresholds: these quantiles of the training scores


class Site:
    """Raw log-mel frames of every recording (one front-end), their features, and window cutting."""

    def __init__(self, ds: Dataset, info: Any) -> None:
        self.fe, self.win, self.ds = info.frontend, info.windowing, ds
        logmel, need = LogMel(self.fe), self.win.window_samples(self.fe)
        self.frames = [logmel(r.load(self.fe.sample_rate, min_samples=need, pad=True)) for r in ds]
        self.features = np.stack([recording_features(f) for f in self.frames])

    def windows(self, idx: np.ndarray, n: int, corr: FrontendCorrection | None = None) -> tuple[np.ndarray, np.ndarray]:
        xs, recs = [], []
        for j, i in enumerate(idx):
            fr = self.frames[i] if corr is None else corr.apply(self.frames[i])
            w = frame_windows(fr, self.fe, self.win)
            w = w[choose_windows(len(w), n)]
            xs.append(w)
            recs.append(np.full(len(w), j))
        return np.concatenate(xs), np.concatenate(recs)


def rec_scores(model: Any, x: np.ndarray, rec: np.ndarray, n_rec: int) -> np.ndarray:
    """Per-recording mean window P(last label), as the device forms it; NaN for a recording without windows."""
    _, logits = predict(model, x)
    ids, scores = recording_scores(softmax(logits)[:, -1], rec)
    out = np.full(n_rec, np.nan)
    out[ids] = scores
    return out


def boot_delta(y: np.ndarray, p0: np.ndarray, p1: np.ndarray, n: int = 400, seed: int = 0) -> list[float]:
    """95 % paired-bootstrap interval of AUROC(p1) - AUROC(p0) over recordings."""
    from acula_edge.distill.metrics import auroc

    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        d.append(auroc(y[i], p1[i]) - auroc(y[i], p0[i]))
    return [round(float(v), 4) for v in np.quantile(d, [0.025, 0.975])]


def run_fold(ds: Dataset, site_cache: dict[str, Site], fold: str, seed: int, args: argparse.Namespace,
             emit: Any) -> None:
    base = TrainConfig(student="small", epochs=args.epochs, max_windows_per_recording=args.max_windows,
                       group_column=None, normalisation="per_window", patience=0, batch_size=32, lr=3e-3)
    cfg = dataclasses.replace(variant_config(base, args.variant), seed=seed)
    train_ds = ds.where(GROUP, [fold], keep=False)
    out = Path(args.work) / fold / f"{args.variant}-e{args.epochs}w{args.max_windows}-s{seed}" / "student"
    t0 = time.time()
    if not (out / "config.json").is_file():
        train_student(cfg, None, train_ds, out, progress=False, resume=True)
    train_s = round(time.time() - t0)
    model, info = load_checkpoint(out)
    key = info.frontend.to_json() + json.dumps(info.windowing.to_dict())
    if key not in site_cache:
        site_cache[key] = Site(ds, info)
    site = site_cache[key]
    ids = {r.record_id: i for i, r in enumerate(ds)}
    fit, val, _ = split_validation(train_ds, cfg)
    fit_idx = np.array([ids[r.record_id] for r in fit])
    val_idx = np.array([ids[r.record_id] for r in val]) if val is not None else np.zeros(0, int)
    held = np.flatnonzero([r.metadata[GROUP] == fold for r in ds])
    perm = np.random.default_rng(1000 + seed).permutation(held)
    a_idx, b_idx = np.sort(perm[:len(perm) // 2]), np.sort(perm[len(perm) // 2:])
    pos = info.labels[-1]
    y_b = np.array([ds.recordings[i].label == pos for i in b_idx])
    prevalence = float(np.mean([ds.recordings[i].label == pos for i in fit_idx]))
    desc = describe(site.features[fit_idx])
    common = {"fold": fold, "seed": seed, "variant": args.variant, "epochs": args.epochs,
              "max_windows": args.max_windows, "n_adapt": int(len(a_idx)), "n_score": int(len(b_idx)),
              "n_score_pos": int(y_b.sum()), "train_s": train_s, "threshold": info.threshold,
              "prevalence": round(prevalence, 4)}

    def adapted(idx: np.ndarray, method: str) -> tuple[Any, FrontendCorrection | None]:
        corr = FrontendCorrection.between(site_stats(site.features[idx]), desc) if "fe-norm" in method else None
        m = model
        if "adabn" in method:
            m = adabn(model, site.windows(idx, args.test_windows, corr)[0], seed=seed)
        return m, corr

    xb0 = site.windows(b_idx, args.test_windows)
    p_none = None
    for method in METHODS:
        m, corr = adapted(a_idx, method)
        xa, ra = site.windows(a_idx, args.test_windows, corr)
        xb, rb = xb0 if corr is None else site.windows(b_idx, args.test_windows, corr)
        pa, pb = rec_scores(m, xa, ra, len(a_idx)), rec_scores(m, xb, rb, len(b_idx))
        shipped = binary_metrics(y_b, pb, info.threshold)
        thr = prior_threshold(pa, prevalence)
        prior = binary_metrics(y_b, pb, thr)
        row = {**common, "kind": "adapt", "method": method, "auroc": shipped["auroc"], "se": shipped["se"],
               "sp": shipped["sp"], "prior_threshold": round(thr, 4), "se_prior": prior["se"], "sp_prior": prior["sp"]}
        if method == "none":
            p_none = pb
        else:
            row["delta_ci"] = boot_delta(y_b, p_none, pb, seed=seed)
        emit(row)

    # site-shift warning: scores of held-out and in-distribution validation recordings against the description
    held_scores, val_scores, fit_scores = (desc.score(site.features[i]) for i in (held, val_idx, fit_idx))
    emit({**common, "kind": "warning", "fit_quantiles": {str(q): float(np.quantile(fit_scores, q))
                                                         for q in WARN_QUANTILES},
          "held_scores": [round(float(v), 4) for v in held_scores],
          "val_scores": [round(float(v), 4) for v in val_scores], "auroc_none": float(
              binary_metrics(np.array([ds.recordings[i].label == pos for i in held]),
                             rec_scores(model, *site.windows(held, args.test_windows), len(held)), 0.5)["auroc"])})

    # AUROC against the number of adaptation recordings
    rng = np.random.default_rng(2000 + seed)
    for k in args.sizes:
        if k >= len(a_idx):
            continue
        for method in ("fe-norm", "adabn", "fe-norm+adabn"):
            vals = []
            for _ in range(args.size_reps):
                sub = np.sort(rng.choice(a_idx, k, replace=False))
                m, corr = adapted(sub, method)
                xb, rb = xb0 if corr is None else site.windows(b_idx, args.test_windows, corr)
                vals.append(binary_metrics(y_b, rec_scores(m, xb, rb, len(b_idx)))["auroc"])
            emit({**common, "kind": "size", "method": method, "k": k, "aurocs": [round(v, 4) for v in vals]})


def _ci(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} [{v.min():.3f}, {v.max():.3f}]"


def summarise(paths: list[str]) -> None:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    # a rerun of the same run replaces the earlier row
    rows = list({(r["variant"], r["kind"], r["fold"], r["seed"], r.get("method"), r.get("k")): r
                 for r in rows}.values())
    if len({r["variant"] for r in rows}) > 1:
        raise SystemExit("--summary: give the files of one variant at a time")
    folds = sorted({r["fold"] for r in rows})
    ad = [r for r in rows if r["kind"] == "adapt"]
    print("### Adaptation: AUROC on the scoring half, mean over seeds [min, max over seeds] (seeds); mean over folds "
          "[min, max of the per-seed means]; ΔAUROC vs none: mean over seeds [mean of the per-seed paired-bootstrap "
          "95 % bounds]\n")
    print("| method | " + " | ".join(f"{f}: AUROC (seeds)" for f in folds) + " | mean AUROC | min fold | "
          + " | ".join(f"{f}: Δ [95 % CI]" for f in folds) + " |")
    print("|---|" + "---|" * (2 * len(folds) + 2))
    for method in METHODS:
        sel = [r for r in ad if r["method"] == method]
        if not sel:
            continue
        cells, means, deltas = [], [], []
        for f in folds:
            fr = [r for r in sel if r["fold"] == f]
            cells.append(f"{_ci([r['auroc'] for r in fr])} ({len(fr)})" if fr else "")
            if fr:
                means.append(np.mean([r["auroc"] for r in fr]))
            base = {r["seed"]: r["auroc"] for r in ad if r["method"] == "none" and r["fold"] == f}
            if method == "none" or not fr:
                deltas.append("")
            else:
                d = [r["auroc"] - base[r["seed"]] for r in fr]
                lo = np.mean([r["delta_ci"][0] for r in fr])
                hi = np.mean([r["delta_ci"][1] for r in fr])
                deltas.append(f"{np.mean(d):+.3f} [{lo:+.3f}, {hi:+.3f}]")
        per_seed = [np.mean([r["auroc"] for r in sel if r["seed"] == sd]) for sd in sorted({r["seed"] for r in sel})
                    if len([r for r in sel if r["seed"] == sd]) == len(folds)]
        spread = f" [{min(per_seed):.3f}, {max(per_seed):.3f}]" if len(per_seed) > 1 else ""
        print(f"| {method} | " + " | ".join(cells) + f" | {np.mean(means):.3f}{spread} | {np.min(means):.3f} | "
              + " | ".join(deltas) + " |")
    print("\n### Se / Sp (MAcc) on the scoring half, mean over seeds: shipped threshold, and re-chosen on the site "
          "(prior)\n")
    print("| method | " + " | ".join(f"{f}: Se/Sp shipped | {f}: Se/Sp prior" for f in folds) + " |")
    print("|---|" + "---|---|" * len(folds))
    for method in METHODS:
        sel = [r for r in ad if r["method"] == method]
        if not sel:
            continue
        cells = []
        for f in folds:
            fr = [r for r in sel if r["fold"] == f]
            if not fr:
                cells += ["", ""]
                continue
            for se, sp in (("se", "sp"), ("se_prior", "sp_prior")):
                a, b = np.mean([r[se] for r in fr]), np.mean([r[sp] for r in fr])
                cells.append(f"{a:.2f} / {b:.2f} ({(a + b) / 2:.2f})")
        print(f"| {method} | " + " | ".join(cells) + " |")
    warn = [r for r in rows if r["kind"] == "warning"]
    if warn:
        print("\n### Site-shift warning: share of recordings flagged (threshold = quantile q of the training "
              "recordings' own scores), mean over seeds\n")
        print("| q | " + " | ".join(f"{f} held-out (AUROC)" for f in folds) + " | in-distribution validation |"
              + " held-out batches flagged |")
        print("|---|" + "---|" * (len(folds) + 2))
        for q in WARN_QUANTILES:
            cells, vals, batches = [], [], 0
            for f in folds:
                fr = [r for r in warn if r["fold"] == f]
                rates = [np.mean(np.array(r["held_scores"]) > r["fit_quantiles"][str(q)]) for r in fr]
                batches += sum(rate > 0.5 for rate in rates)
                vals += [np.mean(np.array(r["val_scores"]) > r["fit_quantiles"][str(q)]) for r in fr]
                cells.append(f"{np.mean(rates):.2f} ({np.mean([r['auroc_none'] for r in fr]):.2f})" if fr else "")
            print(f"| {q} | " + " | ".join(cells) + f" | {np.mean(vals):.3f} | {batches}/{len(warn)} |")
    sizes = [r for r in rows if r["kind"] == "size"]
    if sizes:
        ks = sorted({r["k"] for r in sizes})
        print("\n### AUROC against the number of unlabeled adaptation recordings (mean over seeds and repeats; "
              "std over repeats)\n")
        print("| fold | seeds | method | " + " | ".join(f"k={k}" for k in ks) + " | all (half) | none |")
        print("|---|---|---|" + "---|" * (len(ks) + 2))
        for f in folds:
            seeds = sorted({r["seed"] for r in sizes if r["fold"] == f})
            none = np.mean([r["auroc"] for r in ad if r["fold"] == f and r["method"] == "none" and r["seed"] in seeds])
            for method in ("fe-norm", "adabn", "fe-norm+adabn"):
                cells = []
                for k in ks:
                    v = [a for r in sizes if r["fold"] == f and r["method"] == method and r["k"] == k
                         for a in r["aurocs"]]
                    cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "")
                full = [r["auroc"] for r in ad if r["fold"] == f and r["method"] == method and r["seed"] in seeds]
                print(f"| {f} | {len(seeds)} | {method} | " + " | ".join(cells) + f" | {np.mean(full):.3f} | "
                      f"{none:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--folds", nargs="+", default=["a", "b", "d", "f"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variant", default="band-norm+band-limit")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--max-windows", type=int, default=3, help="training windows per recording")
    ap.add_argument("--test-windows", type=int, default=8, help="windows per recording for scoring and adaptation")
    ap.add_argument("--sizes", type=int, nargs="*", default=[5, 10, 20, 40])
    ap.add_argument("--size-reps", type=int, default=3)
    ap.add_argument("--work", default="/tmp/adapt_xsite")
    ap.add_argument("--json", default=None)
    ap.add_argument("--summary", nargs="+", default=None)
    args = ap.parse_args()
    if args.summary:
        summarise(args.summary)
        return
    torch.set_num_threads(1)
    ds = load_dataset(args.data)
    rate = preset("heart")[0].sample_rate
    ds = Dataset(ds.name, tuple(Recording(r.record_id, r.label, dict(r.metadata), samples=r.load(rate),
                                          sample_rate=rate) for r in ds))

    def emit(row: dict[str, Any]) -> None:
        row["utc"] = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"
        line = json.dumps(row)
        print(line if row["kind"] != "warning" else json.dumps({k: v for k, v in row.items()
                                                                 if not k.endswith("_scores")}), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    cache: dict[str, Site] = {}
    for seed in args.seeds:
        for fold in args.folds:
            run_fold(ds, cache, fold, seed, args, emit)


if __name__ == "__main__":
    main()
