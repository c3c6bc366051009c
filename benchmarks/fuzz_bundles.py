"""Fuzz exported bundles through the device path (``acula_edge.load`` + one window), and count the outcomes.

Three kinds of damage, seeded:
  raw      one random bit flipped in one random bundle file (manifest, model, reference, C sources): the whole-bundle
           digest must refuse every one ("refused") — "loaded" would be an alteration that went unnoticed;
  sealed   one random bit flipped in the model file, then every sha256 and the digest recomputed (a consistent
           forgery): only the runtime checks can object; outcomes "refused", "same" (outputs bit-identical),
           "different" (a weight changed: what the digest exists for);
  values   one random manifest field set to a random JSON value (wrong type, NaN-like string, huge or negative
           number, empty list, deep nesting), sealed: "refused" or "loaded".
Anything but a BundleError (an exception of another type, or the process dying) is a failure and stops the run.

    python benchmarks/fuzz_bundles.py --kinds onnx-fp32 tflite-int8 tflm-int8 --n 200

Bundles are the tiny test bundles of tests/runtime_fixtures.py (built on first use).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402
from acula_edge.errors import BundleError  # noqa: E402
from acula_edge.manifest import MANIFEST_NAME  # noqa: E402

VALUES = (None, True, -1, 0, 1, 2 ** 63, 1e308, -1e-308, 0.5, "NaN", "", "x" * 300, [], [1, 2], {}, {"a": 1},
          [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]], 32.0)


def _flip(path: Path, rng: random.Random) -> None:
    b = bytearray(path.read_bytes())
    i = rng.randrange(len(b))
    b[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(b))


def _run(bundle: Path, x: np.ndarray):
    model = acula_edge.load(bundle, num_threads=1)
    return model.backend.run(x)


def _fields(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict) and k not in ("parity", "versions"):
            yield from _fields(v, prefix + (k,))


def fuzz(kind: str, n: int, seed: int, work: Path) -> dict[str, collections.Counter]:
    src = rf.get_bundle(kind)
    x = rf.calibration_windows(*rf.preset("heart"), n=1)[:1].astype(np.float32)
    want = _run(src, x)
    rng = random.Random(seed)
    files = [p.name for p in src.iterdir()]
    out = {m: collections.Counter() for m in ("raw", "sealed", "values")}
    model_file = json.loads((src / MANIFEST_NAME).read_text())["model_file"]
    for i in range(n):
        for mode in out:
            b = work / f"{kind}-{mode}-{i}"
            shutil.copytree(src, b)
            if mode == "raw":
                _flip(b / rng.choice(files), rng)
            elif mode == "sealed":
                _flip(b / model_file, rng)
                rf.reseal(b)
            else:
                d = json.loads((b / MANIFEST_NAME).read_text())
                path = rng.choice([p for p in _fields(d) if p[0] != "bundle_sha256"])
                node = d
                for k in path[:-1]:
                    node = node[k]
                node[path[-1]] = rng.choice(VALUES)
                try:
                    rf.reseal(b, **{path[0]: d[path[0]]})
                except (BundleError, ValueError, OSError, KeyError, TypeError):  # unsealable: a missing or odd file
                    (b / MANIFEST_NAME).write_text(json.dumps(d))
            try:
                got = _run(b, x)
                same = all(np.array_equal(g, w) for g, w in zip(got, want))
                outcome = "loaded" if mode != "sealed" else ("same" if same else "different")
            except BundleError:
                outcome = "refused"
            out[mode][outcome] += 1
            shutil.rmtree(b)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["onnx-fp32", "tflite-int8", "tflm-int8"])
    ap.add_argument("--n", type=int, default=100, help="cases per kind and mode")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            start = time.perf_counter()
            result = fuzz(kind, args.n, args.seed, Path(tmp))
            row = "; ".join(f"{m}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for m, c in result.items())
            print(f"{kind}: {row} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
