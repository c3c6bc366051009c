"""Where ``acula-edge export CKPT --target all --quantize int8`` spends its time, phase by phase.

Runs the same work as the CLI in one process (imports, checkpoint + calibration/parity windows, then every int8
target through :func:`acula_edge.export.api.export_model`) and prints one JSON object: per phase the wall time and
the CPU time (user + system, this process and its children, e.g. the TFLM arena search). On a machine shared with
other jobs, CPU time is the figure to compare: wall time there mostly measures the other jobs. Third-party output
goes to /dev/null (file descriptors 1 and 2) so it does not cost terminal time.

Works with any checkout of the project (it uses only ``export_model``, ``prepare_data`` and ``load_checkpoint``),
so the same script measures before and after a change: run it with each checkout's Python.

    python benchmarks/export_timing.py CKPT --calib-data synthetic:heart --out /tmp/bundles [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Phases:
    """Accumulates (wall s, CPU s) per named phase."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        self._t = (time.perf_counter(), _cpu())

    def mark(self, name: str) -> None:
        wall, cpu = time.perf_counter(), _cpu()
        self.rows[name] = {"wall_s": round(wall - self._t[0], 2), "cpu_s": round(cpu - self._t[1], 2)}
        self._t = (wall, cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--calib-data", default="synthetic:heart")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    real_stdout = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    phases = Phases()
    import torch  # noqa: F401

    phases.mark("import torch")
    import executorch.exir  # noqa: F401
    import litert_torch  # noqa: F401
    import onnxruntime  # noqa: F401
    import torchao  # noqa: F401

    phases.mark("import converters")
    from acula_edge.checkpoint import load_checkpoint, weights_sha256
    from acula_edge.errors import ExportError
    from acula_edge.export.api import export_model
    from acula_edge.export.calibration import prepare_data
    from acula_edge.export.registry import targets

    model, info = load_checkpoint(args.checkpoint)
    data = prepare_data(info, "int8", args.calib_data)
    sha = weights_sha256(args.checkpoint)
    phases.mark("checkpoint + windows")
    inside: dict[str, dict[str, float]] = {}
    for name, target in targets().items():
        if "int8" not in target.precisions:
            continue
        try:
            m = export_model(model, info, os.path.join(args.out, f"{name}-int8"), name, "int8", data=data,
                             source_sha256=sha)
            inside[name] = {k: m.extra[k] for k in ("export_seconds", "parity_seconds") if k in m.extra}
        except ExportError as e:  # a refused export did all the work of a passing one
            inside[name] = {"refused": str(e).splitlines()[-1].strip()}
        phases.mark(f"{name}-int8")
    total = {"wall_s": round(sum(r["wall_s"] for r in phases.rows.values()), 2),
             "cpu_s": round(sum(r["cpu_s"] for r in phases.rows.values()), 2)}
    real_stdout.write(json.dumps({"phases": phases.rows, "total": total, "export_model_wall": inside,
                                  "calibration_windows": int(data.calibration.x.shape[0]),
                                  "parity_windows": len(data.evaluation), "load_average": os.getloadavg()[0],
                                  "python": sys.executable}) + "\n")
    real_stdout.flush()


if __name__ == "__main__":
    main()
