"""Export a model (or a checkpoint folder) to a device bundle, gated by parity.

:func:`export_model` takes a torch module and its :class:`~acula_edge.checkpoint.CheckpointInfo`;
:func:`export_checkpoint` loads a checkpoint folder and exports it to one target or to all of them. Every bundle is
built in a temporary folder and renamed into place only after the parity gate passed: a failed export leaves nothing
(and an existing bundle at the same path untouched).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from acula_edge import atomic
from acula_edge.bench.fingerprint import usable_cpus
from acula_edge.checkpoint import CheckpointInfo, load_checkpoint, weights_sha256
from acula_edge.errors import ExportError
from acula_edge.export import bundle, parity
from acula_edge.export.calibration import DEFAULT_CALIB_WINDOWS, DEFAULT_EVAL_WINDOWS, ExportData, prepare_data
from acula_edge.export.registry import CALIBRATION_METHODS, OUTPUT_NAMES, ExportJob, get_target, targets
from acula_edge.export.tolerances import Tolerance
from acula_edge.manifest import Manifest, write_manifest
from acula_edge.operating_point import checkpoint_with

PRECISIONS = {"none": "fp32", "fp32": "fp32", "int8": "int8"}  # --quantize value -> bundle precision


def precision_of(quantize: str) -> str:
    """``--quantize`` value (none|int8, or fp32) -> the bundle precision."""
    if quantize not in PRECISIONS:
        raise ExportError(f"--quantize {quantize!r} is not one of none, int8")
    return PRECISIONS[quantize]


# torch's thread count changes the float sums of a calibration pass, hence the int8 ranges and the bundle's bytes:
# every export runs torch on one thread, so a checkpoint gives the same bundles on any machine and with any --jobs.
EXPORT_TORCH_THREADS = 1


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def export_model(model: Any, info: CheckpointInfo, out: str | Path, target: str, precision: str = "fp32", *,
                 data: ExportData | None = None, calibration_method: str = "minmax", source_sha256: str = "",
                 source_path: str | None = None, tolerance: Tolerance | None = None) -> Manifest:
    """Export ``model`` to the bundle folder ``out`` for ``target`` at ``precision`` ("fp32" or "int8").

    ``model``: torch module, ``forward(x (1, 1, frames, n_mels)) -> (embedding (1, D), logits (1, C))``.
    ``data``: calibration and parity windows (:func:`~acula_edge.export.calibration.prepare_data`); int8 needs
    calibration windows. ``tolerance`` overrides the declared one (tests). Returns the written manifest; raises
    ExportError / ParityError (nothing written) on failure.
    """
    with _torch_threads(EXPORT_TORCH_THREADS):
        return _export_model(model, info, out, target, precision, data, calibration_method, source_sha256,
                             source_path, tolerance)


def _export_model(model: Any, info: CheckpointInfo, out: str | Path, target: str, precision: str,
                  data: ExportData | None, calibration_method: str, source_sha256: str, source_path: str | None,
                  tolerance: Tolerance | None) -> Manifest:
    tgt = get_target(target)
    if precision not in tgt.precisions:
        raise ExportError(f"target {target!r} exports {list(tgt.precisions)}, not {precision!r}")
    if calibration_method not in CALIBRATION_METHODS:
        raise ExportError(f"calibration method {calibration_method!r} is not one of {CALIBRATION_METHODS}")
    if data is None:
        data = prepare_data(info, precision)
    if precision == "int8" and data.calibration is None:
        raise ExportError("int8 export needs real calibration windows: pass --calib-data SPEC")
    tolerance = tolerance or tgt.tolerance(precision)
    model = model.float().eval()
    # The architecture's own export form when it has one (same function, faster in int8 runtimes: students).
    model = model.for_export() if hasattr(model, "for_export") else model
    frames = info.windowing.frames_per_window(info.frontend)
    shape = (1, 1, frames, info.frontend.n_mels)
    if data.evaluation.x.shape[1:] != shape[1:]:
        raise ExportError(f"parity windows have shape {data.evaluation.x.shape[1:]}, the model's front-end gives "
                          f"{shape[1:]}")
    calib = None if data.calibration is None else np.ascontiguousarray(data.calibration.x, dtype=np.float32)
    method, notes = calibration_method, []
    if method not in tgt.calibration_methods:  # e.g. PT2E targets: min/max observers only
        method = tgt.calibration_methods[0]
        if precision == "int8":
            notes.append(f"calibration method {calibration_method!r} is not offered by {target} "
                         f"(offers {list(tgt.calibration_methods)}); used {method!r}")
    job = ExportJob(model=model, info=info, precision=precision, calibration=calib,
                    example=np.ascontiguousarray(data.evaluation.x[:1], dtype=np.float32),
                    calibration_method=method)
    what = f"{target} {precision} export"
    out = Path(out)
    ev = data.evaluation
    timings: dict[str, float] = {}
    with atomic.atomic_dir(out) as tmp:
        start = time.perf_counter()
        result = tgt.export(job, tmp)
        timings["export"] = time.perf_counter() - start
        model_path = tmp / result.model_file
        if not model_path.is_file():
            raise ExportError(f"{what}: the target wrote no {result.model_file}")
        start = time.perf_counter()
        reference = parity.torch_outputs(model, ev.x, OUTPUT_NAMES)
        k = min(bundle.REFERENCE_WINDOWS, len(ev))
        bundle.write_reference(tmp / bundle.REFERENCE_FILE, ev.x[:k], {n: v[:k] for n, v in reference.items()},
                               recording=ev.recording[:k], y=ev.y[:k])
        extra = dict(result.extra)
        extra.update(
            findings=[*result.findings, *notes], export_seconds=round(timings["export"], 3),
            files=bundle.file_hashes(tmp, [*result.files, bundle.REFERENCE_FILE]),
            reference_file=bundle.REFERENCE_FILE, model_class=f"{type(model).__module__}:{type(model).__name__}",
            source_checkpoint=source_path or "", model_bytes=model_path.stat().st_size)
        if calib is not None:
            extra["calibration"] = {"windows": int(calib.shape[0]), "recordings": data.calibration.n_recordings,
                                    "data": data.calibration.source, "method": method}
        versions = {**bundle.package_versions(), **result.versions}
        manifest = bundle.build_manifest(info, target, precision, result, atomic.sha256_file(model_path), {},
                                         source_sha256, versions, extra)
        # the gate loads this folder as the device will (manifest first), then the verdict joins the manifest
        write_manifest(manifest, tmp)
        # No child-process crash probe: these bytes were written by this process a moment ago (the probe guards
        # against bundles from elsewhere; for ExecuTorch it re-imports torch in a child, ~7 s of every export).
        report = parity.check_bundle(tmp, ev.x, reference, tolerance, f"{what} (nothing was written to {out})",
                                     ev.recording, ev.y, ev.source, probe=False)
        report.update(held_out=data.held_out, note=data.note)
        timings["parity"] = time.perf_counter() - start
        manifest = dataclasses.replace(manifest, parity=report,
                                       extra={**manifest.extra, "parity_seconds": round(timings["parity"], 3)})
        write_manifest(manifest, tmp)
        bundle.set_default_permissions(tmp)
    return manifest


def progress_line(name: str, dest: str | Path, seconds: float, manifest: Manifest | None = None,
                  error: Exception | None = None) -> str:
    """One line per exported target: name, verdict, wall time, size and the gate's key figures (or why it failed)."""
    if manifest is None:
        problems = getattr(error, "mismatches", None) or [str(error).splitlines()[0] if error else "failed"]
        verdict = "REFUSED" if getattr(error, "mismatches", None) else "FAILED"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{name:<16} {verdict:<7} {seconds:6.1f} s  {problems[0]}{more}"
    p = manifest.parity
    figures = []
    emb = p.get("outputs", {}).get("embedding", {})
    if "cosine_mean" in emb:
        figures.append(f"emb cos {emb['cosine_mean']:.5f}")
    if "probabilities" in p:
        figures.append(f"max dp {p['probabilities']['max_abs_error']:.3f}")
    if p.get("decisions"):
        figures.append(f"decisions {100 * p['decisions']['agreement']:.1f}%")
    if p.get("auroc"):
        figures.append(f"dAUROC {p['auroc']['delta']:+.3f}")
    size = f"{manifest.extra.get('model_bytes', 0) / 1024:.1f} KiB"
    found = manifest.extra.get("findings") or []
    note = f", {len(found)} finding(s) in manifest" if found else ""
    return f"{name:<16} {'ok':<7} {seconds:6.1f} s  {size:>10}  {', '.join(figures)}{note}  -> {dest}"


def plan_lanes(names: list[str], jobs: int) -> list[list[str]]:
    """Split targets over up to ``jobs`` processes ("lanes") of about equal declared export cost.

    Longest first onto the lightest lane; a target that reuses another's work (``Target.reuses``) joins that
    target's lane, after it. Lane 0 is the heaviest (ties: the one with more targets); the caller runs it in its own
    process, where torch and the checkpoint are already loaded, and the others in worker processes.
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        root = get_target(name).reuses
        groups.setdefault(root if root in names else name, []).append(name)
    groups = {root: sorted(members, key=lambda n: n != root) for root, members in groups.items()}  # root first
    cost = {root: sum(get_target(n).export_cost for n in members) for root, members in groups.items()}
    lanes: list[list[str]] = [[] for _ in range(max(1, min(jobs, len(groups))))]
    loads = [0.0] * len(lanes)
    for root in sorted(groups, key=lambda r: (-cost[r], names.index(r))):
        i = loads.index(min(loads))
        lanes[i].append(root)
        loads[i] += cost[root]
    order = sorted(range(len(lanes)), key=lambda i: (-loads[i], -len(lanes[i])))
    # inside a lane, the caller's order (a reusing target right after the one it reuses)
    return [[n for root in sorted(lanes[i], key=names.index) for n in groups[root]] for i in order]


@dataclasses.dataclass(frozen=True)
class _LaneJob:
    """What a lane needs to export its targets (picklable: worker processes get it)."""

    checkpoint_dir: str
    info: CheckpointInfo
    out: str
    names: tuple[str, ...]
    precision: str
    into_subfolders: bool  # OUT/<target>-<precision> per target (several targets) or OUT itself
    data: ExportData
    calibration_method: str
    source_sha256: str
    source_path: str

    def dest(self, name: str) -> Path:
        return Path(self.out) / f"{name}-{self.precision}" if self.into_subfolders else Path(self.out)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    name: str
    dest: str
    seconds: float
    manifest: Manifest | None = None  # the written bundle's (None: refused)
    error: ExportError | None = None


def _run_lane(job: _LaneJob, model: Any = None, progress: Callable[[str], None] | None = None) -> list[_Outcome]:
    """Export the lane's targets one after the other; a refused target does not stop the next one."""
    if model is None:  # a worker process: its own copy of the model
        model, _ = load_checkpoint(job.checkpoint_dir)
    outcomes = []
    for name in job.names:
        dest = job.dest(name)
        start = time.perf_counter()
        error = manifest = None
        try:
            manifest = export_model(model, job.info, dest, name, job.precision, data=job.data,
                                    calibration_method=job.calibration_method, source_sha256=job.source_sha256,
                                    source_path=job.source_path)
        except ExportError as e:
            error = e
        outcome = _Outcome(name, str(dest), time.perf_counter() - start, manifest, error)
        outcomes.append(outcome)
        if progress:
            progress(progress_line(f"{name}-{job.precision}", dest, outcome.seconds, manifest, error=error))
    return outcomes


def export_targets(checkpoint_dir: str | Path, out: str | Path, names: list[str], quantize: str = "none", *,
                   into_subfolders: bool = True, calib_data: str | None = None, eval_data: str | None = None,
                   calibration_method: str = "minmax", n_calib: int = DEFAULT_CALIB_WINDOWS,
                   n_eval: int = DEFAULT_EVAL_WINDOWS, operating_point: str | None = None, jobs: int | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[dict[str, Manifest], dict[str, ExportError]]:
    """Export the checkpoint folder to each of ``names`` (``OUT/<target>-<precision>`` each, or OUT itself for one
    target with ``into_subfolders=False``). Returns ({bundle path: manifest}, {bundle path: why it was refused}).

    The checkpoint is read and the calibration and parity windows are made once for all targets. With ``jobs`` > 1
    (default: up to 2, as the CPUs allow) the targets are split over processes by their declared export cost
    (:func:`plan_lanes`), so a multi-target export takes about as long as its costliest target rather than the sum;
    every bundle is the same either way (each export is deterministic and gated on its own).
    """
    precision = precision_of(quantize)
    names = [get_target(n).name for n in names]
    model, info = load_checkpoint(checkpoint_dir)
    if operating_point is not None:  # replaces the checkpoint's decision rule in every bundle (recorded as such)
        info = checkpoint_with(info, operating_point, "export --operating-point")
    data = prepare_data(info, precision, calib_data, eval_data, n_calib, n_eval)
    jobs = min(2, usable_cpus()) if jobs is None else jobs
    if jobs < 1:
        raise ExportError(f"jobs must be at least 1, not {jobs}")
    lanes = plan_lanes(names, jobs)
    base = dict(checkpoint_dir=str(checkpoint_dir), info=info, out=str(out), precision=precision,
                into_subfolders=into_subfolders, data=data, calibration_method=calibration_method,
                source_sha256=weights_sha256(checkpoint_dir), source_path=str(Path(checkpoint_dir).resolve()))
    outcomes = _run_lanes([_LaneJob(names=tuple(lane), **base) for lane in lanes], model, progress)
    written, failed = {}, {}
    for o in sorted(outcomes, key=lambda o: names.index(o.name)):
        if o.error is None:
            written[o.dest] = o.manifest
        else:
            failed[o.dest] = o.error
    return written, failed


def _run_lanes(jobs: list[_LaneJob], model: Any, progress: Callable[[str], None] | None) -> list[_Outcome]:
    """Lane 0 in this process, the others in spawned worker processes at the same time."""
    if len(jobs) == 1:
        return _run_lane(jobs[0], model, progress)
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # never fork a process that has torch's thread pools running
    outcomes: list[_Outcome] = []
    with concurrent.futures.ProcessPoolExecutor(len(jobs) - 1, mp_context=context) as pool:
        futures = [pool.submit(_run_lane, job) for job in jobs[1:]]
        outcomes += _run_lane(jobs[0], model, progress)
        for job, future in zip(jobs[1:], futures):
            try:
                lane = future.result()
            except concurrent.futures.process.BrokenProcessPool as e:
                lane = [_Outcome(n, str(job.dest(n)), 0.0, None, ExportError(
                    f"the worker process exporting {n} died ({e}); nothing was written for it. Run the export "
                    f"again with --jobs 1 to see its output in this process")) for n in job.names]
            for o in lane:
                if progress:
                    progress(progress_line(f"{o.name}-{job.precision}", o.dest, o.seconds, o.manifest, error=o.error))
            outcomes += lane
    return outcomes


def export_checkpoint(checkpoint_dir: str | Path, out: str | Path, target: str = "all", quantize: str = "none", *,
                      calib_data: str | None = None, eval_data: str | None = None, calibration_method: str = "minmax",
                      n_calib: int = DEFAULT_CALIB_WINDOWS, n_eval: int = DEFAULT_EVAL_WINDOWS,
                      operating_point: str | None = None, jobs: int | None = None,
                      progress: Callable[[str], None] | None = None) -> dict[str, Manifest]:
    """Export the checkpoint folder to ``target`` (or "all": every target with that precision, one sub-folder
    ``OUT/<target>-<precision>`` each). Returns {bundle path: manifest}. ``progress`` gets one line per target
    (:func:`progress_line`) as it finishes.

    ``operating_point``: replaces the checkpoint's (a method such as "sensitivity=0.9", chosen again on the
    validation recordings the checkpoint stores, or a threshold such as "0.4"). ``jobs``: processes to spread the
    targets over (:func:`export_targets`). With "all", a failing target does not stop the others; the failures are
    raised together at the end (the successful bundles stay, each complete).
    """
    precision = precision_of(quantize)
    if target == "all":
        names = [t.name for t in targets().values() if precision in t.precisions]
    else:
        names = [get_target(target).name]
    written, failed = export_targets(checkpoint_dir, out, names, quantize, into_subfolders=target == "all",
                                     calib_data=calib_data, eval_data=eval_data,
                                     calibration_method=calibration_method, n_calib=n_calib, n_eval=n_eval,
                                     operating_point=operating_point, jobs=jobs, progress=progress)
    if failed and target != "all":
        raise next(iter(failed.values()))
    if failed:
        raise ExportError(f"{len(failed)} of {len(names)} exports failed (the others were written to {out}):\n  "
                          + "\n  ".join(f"{Path(d).name}: {e}" for d, e in failed.items()))
    return written
