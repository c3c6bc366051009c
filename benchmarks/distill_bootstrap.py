"""Bootstrap confidence intervals for the distillation benchmark (re-scores the checkpoints it left behind).

    python benchmarks/distill_bootstrap.py [--work /tmp/distill-bench] [--folds b a] [--n 2000]

For each held-out subset: every checkpoint under ``WORK/<fold>/`` is scored on the held-out recordings (mean of the
window probabilities per recording, the same windows as benchmarks/distill_physionet.py), then recordings are
resampled with replacement (within each class) ``--n`` times to give a 95% interval for each model's AUROC and for
the paired differences distilled - scratch and distilled - teacher. One torch thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from acula_edge.checkpoint import load_checkpoint
from acula_edge.data import load_dataset
from acula_edge.distill.metrics import auroc, softmax
from acula_edge.distill.train import predict
from acula_edge.windows import extract_windows, recording_scores

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "physionet2016"
TEACHER = "teacher(base-supervised)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--work", default="/tmp/distill-bench")
    ap.add_argument("--folds", nargs="+", default=["b", "a"])
    ap.add_argument("--test-windows", type=int, default=8)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(args.data)
    rng = np.random.default_rng(0)
    print("| fold | model | AUROC | 95% CI | vs scratch (paired diff, 95% CI) | vs teacher (paired diff, 95% CI) |")
    print("|---|---|---|---|---|---|")
    for fold in args.folds:
        test = ds.where("subset", [fold])
        folders = sorted(p.parent for p in (Path(args.work) / fold).rglob("config.json") if ".run" not in str(p))
        scores: dict[str, np.ndarray] = {}
        windows: dict[str, object] = {}  # per front-end: models may differ in normalisation
        y = None
        for folder in folders:
            model, info = load_checkpoint(folder)
            key = info.frontend.to_json() + str(info.windowing)
            if key not in windows:
                windows[key] = extract_windows(test, info.frontend, info.windowing, info.labels,
                                               max_windows_per_recording=args.test_windows)
            y = np.array([info.labels.index(r.label) for r in test]) == 1
            w = windows[key]
            _, logits = predict(model, w.x)
            _, p = recording_scores(softmax(logits), w.recording)
            scores[str(folder.relative_to(Path(args.work) / fold))] = p[:, 1]
        pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
        boots = [np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(args.n)]

        def dist(s: np.ndarray) -> np.ndarray:
            return np.array([auroc(y[b], s[b]) for b in boots])

        cache = {name: dist(s) for name, s in scores.items()}
        for name, s in scores.items():
            lo, hi = np.percentile(cache[name], [2.5, 97.5])
            cells = []
            for ref in (name.replace("distilled", "scratch"), TEACHER):
                if "distilled" in name and ref in cache:
                    d = cache[name] - cache[ref]
                    a, b = np.percentile(d, [2.5, 97.5])
                    cells.append(f"{auroc(y, s) - auroc(y, scores[ref]):+.3f} [{a:+.3f}, {b:+.3f}]")
                else:
                    cells.append("")
            print(f"| {fold} | {name} | {auroc(y, s):.3f} | [{lo:.3f}, {hi:.3f}] | {cells[0]} | {cells[1]} |",
                  flush=True)


if __name__ == "__main__":
    main()
