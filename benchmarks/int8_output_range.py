"""Before/after of the PT2E int8 fixes (export/pt2e.py) on trained students and on the test fixture.

    python benchmarks/int8_output_range.py [--work /tmp/acula-firmware-bench-10ep] [--students small-mcu-seed1 ...]
        [--fixture] [--variants stock fixed] [--calib-windows 300] [--gate-windows 200]

For every student folder ``--work/student-<name>`` (as benchmarks/firmware_students.py leaves them, with its
``train-<fold>.csv`` / ``test-<fold>.csv``): the same calibration and parity windows as that script's tflm export,
then the full-int8 TFLite conversion per ``--variants``: the stock flow (``pt2e.STOCK``), the fixed one (residual
adds annotated, pools with their own range, embedding range fitted; the default pair) or the fixes in part, each run
on the parity windows by LiteRT and by TFLite Micro. Per variant: embedding cosine (mean / min over windows), logits
cosine and decision agreement (same argmax as PyTorch), recording-level AUROC delta vs PyTorch fp32, float tensors
left, TFLM arena, and the tflm int8 gate's verdict (export/tolerances.py). ``--fixture`` adds
tests/test_export_targets.py's TinyDSCNN on its synthetic data. One JSON line per student x variant on stdout (among
litert-torch's progress lines: keep those starting with '{').
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from acula_edge.checkpoint import load_checkpoint  # noqa: E402
from acula_edge.export import parity, pt2e  # noqa: E402
from acula_edge.export.calibration import ExportData, prepare_data  # noqa: E402
from acula_edge.export.targets.tflite import describe  # noqa: E402
from acula_edge.export.targets.tflm import ARENA_MARGIN_BYTES, measure_arena  # noqa: E402
from acula_edge.export.tolerances import tolerance_for  # noqa: E402

VARIANTS = {"stock": pt2e.STOCK,
            "adds-only": dataclasses.replace(pt2e.STOCK, annotate_adds=True),
            "adds+pool": dataclasses.replace(pt2e.STOCK, annotate_adds=True, pool_own_range=True),
            "range-only": dataclasses.replace(pt2e.STOCK, fit_output_range=True),
            "fixed": pt2e.QuantizeOptions()}


def measure(model: torch.nn.Module, data: ExportData, options: pt2e.QuantizeOptions) -> dict:
    """Convert with ``options``, run the file in LiteRT and TFLM on the parity windows, compare with PyTorch."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    ev = data.evaluation
    calib = np.ascontiguousarray(data.calibration.x, dtype=np.float32)
    example = np.ascontiguousarray(ev.x[:1], dtype=np.float32)
    t0 = time.perf_counter()
    converted, quantizer, fits = pt2e.quantize(model, example, calib, options)
    edge = litert_torch.convert(converted, (torch.from_numpy(example),), quant_config=QuantConfig(
        pt2e_quantizer=quantizer))
    reference = parity.torch_outputs(model, ev.x)
    out: dict = {"convert_s": round(time.perf_counter() - t0, 1),
                 "output_range": [f.to_dict() for f in fits]}
    with tempfile.TemporaryDirectory(prefix="acula-int8-range-") as tmp:
        path = Path(tmp) / "model.tflite"
        edge.export(str(path))
        desc = describe(path)
        out["float_tensors"] = len(desc["float_tensors"])
        out["ops"] = sorted(set(desc["ops"]))
        out["embedding_scale"] = desc["outputs"][[o.name for o in desc["outputs"]].index("embedding")].scale
        arena = measure_arena(path)
        out["arena_measured"] = arena
        runs = {"litert": parity.file_outputs("tflite", path, ev.x, desc["inputs"], desc["outputs"]),
                "tflm": parity.file_outputs("tflm", path, ev.x, desc["inputs"], desc["outputs"],
                                            {"arena_bytes": arena + ARENA_MARGIN_BYTES})}
    tol = tolerance_for("tflm", "int8")
    for runtime, got in runs.items():
        rep = parity.parity_report(reference, got, 0.5, tol, ev.recording, ev.y, ev.source)
        o = rep["outputs"]
        agree = float(np.mean(np.argmax(got["logits"], 1) == np.argmax(reference["logits"], 1)))
        problems = parity.mismatches(rep, tol)
        out[runtime] = {"emb_cos_mean": round(o["embedding"]["cosine_mean"], 5),
                        "emb_cos_min": round(o["embedding"]["cosine_min"], 4),
                        "logits_cos_mean": round(o["logits"]["cosine_mean"], 4), "decision_agreement": agree,
                        "auroc_delta": rep["auroc"]["delta"] if rep.get("auroc") else None,
                        "gate": "pass" if not problems else "FAIL: " + "; ".join(problems)}
    return out


def fixture() -> tuple[torch.nn.Module, ExportData]:
    """tests/test_export_targets.py's TinyDSCNN (seed 0, its batch-norm statistics) and its export data."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_export_targets import DATA, TinyDSCNN, tiny_info

    torch.manual_seed(0)
    model = TinyDSCNN().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model, prepare_data(tiny_info(), "int8", DATA, n_calib=32, n_eval=16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/acula-firmware-bench-10ep")
    ap.add_argument("--students", nargs="*", default=None, help="names after 'student-' (default: all in --work)")
    ap.add_argument("--holdout", default="b")
    ap.add_argument("--fixture", action="store_true")
    ap.add_argument("--calib-windows", type=int, default=300)
    ap.add_argument("--gate-windows", type=int, default=200)
    ap.add_argument("--variants", nargs="+", default=["stock", "fixed"], choices=sorted(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    jobs = []
    if args.fixture:
        jobs.append(("fixture:TinyDSCNN", fixture))
    names = args.students if args.students is not None else sorted(
        p.name[len("student-"):] for p in work.glob("student-*") if (p / "model.safetensors").is_file())
    for name in names:
        def load(name: str = name) -> tuple[torch.nn.Module, ExportData]:
            model, info = load_checkpoint(work / f"student-{name}")
            data = prepare_data(info, "int8", str(work / f"train-{args.holdout}.csv"),
                                str(work / f"test-{args.holdout}.csv"), args.calib_windows, args.gate_windows)
            return model.float().eval(), data
        jobs.append((name, load))
    for name, load in jobs:
        model, data = load()
        for variant in args.variants:
            row = {"model": name, "variant": variant, **measure(model, data, VARIANTS[variant])}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
