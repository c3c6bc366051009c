"""Why is a student's int8 ONNX model not faster than its fp32 one on this CPU? Per-node time from onnxruntime's own
profiler, and the whole call under other session settings and other quantization choices; one process, interleaved.

    python benchmarks/onnx_int8_nodes.py [--size tiny] [--work /tmp/acula-int8-runtime] [--rounds 500]

Uses the bundles benchmarks/int8_runtime.py exported into ``--work`` (run it first). The other quantization choices
are made here with onnxruntime.quantization from the bundle's fp32 model, calibrated on the same synthetic heart
windows int8_runtime.py uses: per-channel and per-tensor weights (export picks one by embedding cosine), the
depthwise convs left in float, signed int8 activations (speed only: the bundles carry random weights). Prints a
markdown report (paste it into RESULTS_runtime.md); times are CPU time of the process, 1 thread, medians.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


def session(path: Path, level: str = "all", nhwc: bool = True, profile: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    if not nhwc:
        opts.add_session_config_entry("optimization.disable_specified_optimizers", "NhwcTransformer")
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def node_times(path: Path, x: np.ndarray, runs: int, work: Path) -> list[tuple[str, str, float]]:
    """(node, op, median µs) in execution order, from onnxruntime's profiler (1 µs resolution)."""
    sess = session(path, profile=str(work / "profile"))
    name = sess.get_inputs()[0].name
    for _ in range(runs):
        sess.run(None, {name: x})
    trace = Path(sess.end_profiling())
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[(event["name"].removesuffix("_kernel_time"), event["args"].get("op_name", ""))].append(event["dur"])
    trace.unlink()
    return [(node, op, float(np.median(v))) for (node, op), v in times.items()]


def requantize(fp32: Path, out: Path, calib: np.ndarray, depthwise_float: bool = False, per_channel: bool = False,
               signed: bool = False) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    depthwise = [n.name for n in onnx.load(str(pre)).graph.node
                 if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= calib.shape[0]:
                return None
            self.i += 1
            return {"logmel": calib[self.i - 1:self.i]}

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=depthwise if depthwise_float else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="tiny", help="Student size (its bundles must be in --work).")
    ap.add_argument("--work", default="/tmp/acula-int8-runtime", help="int8_runtime.py's bundle cache.")
    ap.add_argument("--rounds", type=int, default=500, help="Interleaved rounds of whole calls.")
    args = ap.parse_args()
    from int8_runtime import calibration_windows, cpu_flags

    folder = {p: Path(args.work) / f"{args.size}-onnx-{p}" for p in ("fp32", "int8")}
    model = {p: folder[p] / "model.onnx" for p in folder}
    missing = [str(m) for m in model.values() if not m.is_file()]
    if missing:
        sys.exit(f"no bundle at {missing}: run benchmarks/int8_runtime.py --work {args.work} first")
    calib = calibration_windows()
    x = calib[:1]
    with tempfile.TemporaryDirectory(prefix="acula-onnx-nodes-") as tmp:
        work = Path(tmp)
        nodes = {p: node_times(model[p], x, 300, work) for p in model}
        variants = {
            "fp32": session(model["fp32"]),
            "int8 (bundle)": session(model["int8"]),
            "int8, NHWC transformer off": session(model["int8"], nhwc=False),
            "int8, optimisation level extended": session(model["int8"], level="extended"),
            "int8 re-quantized: per-tensor weights": session(requantize(model["fp32"], work / "pt.onnx", calib)),
            "int8 re-quantized: per-channel weights": session(requantize(model["fp32"], work / "pc.onnx", calib,
                                                                         per_channel=True)),
            "int8 re-quantized: depthwise convs in float": session(requantize(model["fp32"], work / "dw.onnx", calib,
                                                                              depthwise_float=True)),
            "int8 re-quantized: signed activations": session(requantize(model["fp32"], work / "s8.onnx", calib,
                                                                        signed=True)),
        }
        times = {k: [] for k in variants}
        for r in range(args.rounds):
            order = list(variants.items())
            shift = r % len(order)
            for k, sess in order[shift:] + order[:shift]:
                t0 = time.process_time_ns()
                sess.run(None, {"logmel": x})
                times[k].append(time.process_time_ns() - t0)
    med = {k: float(np.median(v)) / 1e3 for k, v in times.items()}
    date = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    print(f"## onnxruntime int8 vs fp32 per node: `{args.size}`\n")
    print(f"- command: `python benchmarks/onnx_int8_nodes.py --size {args.size} --work {args.work} "
          f"--rounds {args.rounds}`; {date}")
    print(f"- CPU: {cpu_flags()}; 1 thread; CPU time, medians; node times from onnxruntime's profiler (1 µs "
          f"resolution, 300 calls)\n")
    print("Whole call, warm: the variants alone in interleaved rounds (no other model runs between calls):\n")
    print("| model | µs | / fp32 |\n|---|---|---|")
    for k in variants:
        print(f"| {k} | {med[k]:.1f} | {med[k] / med['fp32']:.2f} |")
    for p in ("fp32", "int8"):
        rows = nodes[p]
        by_op: dict[str, float] = collections.defaultdict(float)
        for _, op, t in rows:
            by_op[op] += t
        print(f"\n{p} bundle, per node in execution order (sum {sum(t for *_, t in rows):.0f} µs): "
              + ", ".join(f"{op} {t:.0f}" for _, op, t in rows))
        print("  by op type: " + ", ".join(f"{op} {t:.0f}" for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
