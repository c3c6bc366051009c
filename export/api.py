"""Export a model (or a checkpoint folder) to a device bundle, gated by parity.

:func:`export_model` takes a torch module and its :class:`~acula_edge.checkpoint.CheckpointInfo`;
:func:`export_checkpoint` loads a checkpoint folder and exports it to one target or to all of them. Every bundle is
built in a temporary folder and renamed into place only after the parity gate passed: a failed export leaves nothing
(and an existing bundle at the same path untouched).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from acula_edge import atomic
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


def export_model(model: Any, info: CheckpointInfo, out: str | Path, target: str, precision: str = "fp32", *,
                 data: ExportData | None = None, calibration_method: str = "minmax", source_sha256: str = "",
                 source_path: str | None = None, tolerance: Tolerance | None = None) -> Manifest:
    """Export ``model`` to the bundle folder ``out`` for ``target`` at ``precision`` ("fp32" or "int8").

    ``model``: torch module, ``forward(x (1, 1, frames, n_mels)) -> (embedding (1, D), logits (1, C))``.
    ``data``: calibration and parity windows (:func:`~acula_edge.export.calibration.prepare_data`); int8 needs
    calibration windows. ``tolerance`` overrides the declared one (tests). Returns the written manifest; raises
    ExportError / ParityError (nothing written) on failure.
    """
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


def export_checkpoint(checkpoint_dir: str | Path, out: str | Path, target: str = "all", quantize: str = "none", *,
                      calib_data: str | None = None, eval_data: str | None = None, calibration_method: str = "minmax",
                      n_calib: int = DEFAULT_CALIB_WINDOWS, n_eval: int = DEFAULT_EVAL_WINDOWS,
                      operating_point: str | None = None,
                      progress: Callable[[str], None] | None = None) -> dict[str, Manifest]:
    """Export the checkpoint folder to ``target`` (or "all": every target with that precision, one sub-folder
    ``OUT/<target>-<precision>`` each). Returns {bundle path: manifest}. ``progress`` gets one line per target
    (:func:`progress_line`) as it finishes.

    ``operating_point``: replaces the checkpoint's (a method such as "sensitivity=0.9", chosen again on the
    validation recordings the checkpoint stores, or a threshold such as "0.4"). With "all", a failing target does
    not stop the others; the failures are raised together at the end (the
    successful bundles stay, each complete).
    """
    precision = precision_of(quantize)
    if target == "all":
        names = [t.name for t in targets().values() if precision in t.precisions]
    else:
        names = [get_target(target).name]
    model, info = load_checkpoint(checkpoint_dir)
    if operating_point is not None:  # replaces the checkpoint's decision rule in every bundle (recorded as such)
        info = checkpoint_with(info, operating_point, "export --operating-point")
    sha = weights_sha256(checkpoint_dir)
    data = prepare_data(info, precision, calib_data, eval_data, n_calib, n_eval)
    source = str(Path(checkpoint_dir).resolve())
    written: dict[str, Manifest] = {}
    failures: list[str] = []
    for name in names:
        dest = Path(out) / f"{name}-{precision}" if target == "all" else Path(out)
        start = time.perf_counter()
        try:
            manifest = export_model(model, info, dest, name, precision, data=data,
                                    calibration_method=calibration_method, source_sha256=sha, source_path=source)
        except ExportError as e:
            if progress:
                progress(progress_line(f"{name}-{precision}", dest, time.perf_counter() - start, error=e))
            if target != "all":
                raise
            failures.append(f"{name}-{precision}: {e}")
            continue
        written[str(dest)] = manifest
        if progress:
            progress(progress_line(f"{name}-{precision}", dest, time.perf_counter() - start, manifest))
    if failures:
        raise ExportError(f"{len(failures)} of {len(names)} exports failed (the others were written to {out}):\n  "
                          + "\n  ".join(failures))
    return written

