"""Is the parity gate's verdict stable, and does it catch a wrong export? Measured against the evaluation size.

For each bundle (with the checkpoint it was exported from), a large labelled window pool is cut from ``--data``; the
PyTorch outputs and the bundle's outputs (loaded with :func:`acula_edge.load`, as the gate does) are computed once.
Then, for each evaluation size (number of recordings, two windows each, as the export takes them), ``--draws``
random subsets of recordings are judged by the bundle's declared tolerance (:func:`acula_edge.export.parity`):

- ``pass``: share of draws on which the correct bundle passes (should be 1 at every size);
- ``shift_caught``: share of draws on which the same outputs with logit 0 shifted by +1 fail (should be 1);
- the worst margin seen per bar (value / bar) among the correct draws.

Prints one JSON line per (bundle, size).

    python benchmarks/export_gate_stability.py --checkpoint S --bundles B/*-int8 --data "synthetic:heart?n=240&seed=11"
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--bundles", nargs="+", required=True)
    ap.add_argument("--data", default="synthetic:heart?n=240&seed=11")
    ap.add_argument("--sizes", default="10,20,30,60,120", help="recordings per evaluation (two windows each)")
    ap.add_argument("--draws", type=int, default=30)
    args = ap.parse_args()
    null = os.open(os.devnull, os.O_WRONLY)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(null, 1)
    os.dup2(null, 2)
    import acula_edge
    from acula_edge.checkpoint import load_checkpoint
    from acula_edge.data import load_dataset
    from acula_edge.errors import ParityError
    from acula_edge.export import parity
    from acula_edge.export.calibration import EVAL_WINDOWS_PER_RECORDING, sample_windows
    from acula_edge.export.tolerances import tolerance_for

    model, info = load_checkpoint(args.checkpoint)
    dataset = load_dataset(args.data)
    pool = sample_windows(dataset, info.frontend, info.windowing, tuple(info.labels), 2 * len(dataset),
                          per_recording=EVAL_WINDOWS_PER_RECORDING, seed=0)
    reference = parity.torch_outputs(model, pool.x)
    recordings = np.unique(pool.recording)
    for bundle in args.bundles:
        edge = acula_edge.load(bundle, num_threads=1)
        m = edge.manifest
        tol = tolerance_for(m.target, m.precision)
        got = parity.device_outputs(edge.backend, pool.x)
        shifted = {"embedding": got["embedding"], "logits": got["logits"] + np.array([1.0] + [0.0] *
                                                                                   (got["logits"].shape[1] - 1))}
        rng = np.random.default_rng(0)
        for size in (int(s) for s in args.sizes.split(",")):
            if size > recordings.size:
                continue
            passed = caught = 0
            worst: dict[str, float] = {}
            for _ in range(args.draws):
                chosen = rng.choice(recordings, size, replace=False)
                idx = np.flatnonzero(np.isin(pool.recording, chosen))
                ref = {k: v[idx] for k, v in reference.items()}
                for name, cand in (("correct", got), ("shifted", shifted)):
                    c = {k: v[idx] for k, v in cand.items()}
                    rep = parity.parity_report(ref, c, parity.decision_threshold(m), tol, pool.recording[idx],
                                               pool.y[idx], args.data)
                    try:
                        parity.gate(rep, tol, "stability")
                        ok = True
                    except ParityError:
                        ok = False
                    if name == "correct":
                        passed += ok
                        for key, value in (("cosine", (1 - rep["outputs"]["embedding"]["cosine_mean"]) /
                                            (1 - tol.min_cosine["embedding"])),
                                           ("prob", rep["probabilities"]["max_abs_error"] / tol.max_prob_error),
                                           ("logit", rep["outputs"]["logits"]["relative_error"] /
                                            tol.max_logit_error)):
                            worst[key] = max(worst.get(key, 0.0), float(value))
                        if rep.get("auroc", {}).get("gated"):
                            worst["auroc_ci_hi"] = min(worst.get("auroc_ci_hi", 1.0), rep["auroc"]["ci95"][1])
                    else:
                        caught += not ok
            out.write(json.dumps({"bundle": bundle, "recordings": size, "windows": int(2 * size),
                                  "draws": args.draws, "pass": passed / args.draws,
                                  "shift_caught": caught / args.draws,
                                  "worst_fraction_of_bar": {k: round(v, 4) for k, v in worst.items()}}) + "\n")
            out.flush()
    sys.exit(0)


if __name__ == "__main__":
    main()
