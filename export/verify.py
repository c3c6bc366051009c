"""Re-check an exported bundle: integrity (schema, sha256 of every file, the target's own file checks such as
tflm's C array against its model file) and the parity gate of the export, run the same way: the bundle loaded with
:func:`acula_edge.load` and compared by :func:`acula_edge.export.parity.check_bundle`.

Parity is measured against the source checkpoint when it is given or found at the path the manifest recorded
(and its weights still hash to ``source_checkpoint_sha256``), on windows of ``data`` when given; otherwise against
the PyTorch outputs stored in the bundle's ``reference.npz`` at export time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acula_edge.checkpoint import WEIGHTS_NAME, weights_sha256
from acula_edge.errors import BundleError
from acula_edge.export import bundle, parity
from acula_edge.export.calibration import DEFAULT_EVAL_WINDOWS, EVAL_WINDOWS_PER_RECORDING
from acula_edge.export.registry import OUTPUT_NAMES, get_target
from acula_edge.manifest import MANIFEST_NAME, read_bundle
from acula_edge.runtime.backends import open_backend


def _source_model(manifest: Any, checkpoint: str | Path | None) -> tuple[Any, str]:
    """(model or None, description) of the checkpoint to compare with."""
    explicit = checkpoint is not None
    if explicit:
        path = Path(checkpoint)
    else:
        path = Path(str(manifest.extra.get("source_checkpoint") or ""))
        if not str(path) or str(path) == "." or not (path / WEIGHTS_NAME).is_file():
            return None, "reference outputs stored at export"
    digest = weights_sha256(path)
    if manifest.source_checkpoint_sha256 and digest != manifest.source_checkpoint_sha256:
        if explicit:
            raise BundleError(f"{path}: its weights (sha256 {digest[:12]}...) are not the ones this bundle was "
                              f"exported from ({manifest.source_checkpoint_sha256[:12]}...); give the right "
                              f"--checkpoint or none (to use the bundle's stored reference outputs)")
        return None, f"reference outputs stored at export ({path} has changed since)"
    from acula_edge.checkpoint import load_checkpoint  # torch: only when a checkpoint is compared with

    model, info = load_checkpoint(path)
    if info.frontend != manifest.frontend or info.windowing != manifest.windowing:
        raise BundleError(f"{path}: its front-end or windowing differs from the bundle's manifest; this bundle was "
                          f"not exported from it")
    return model, f"checkpoint {path}"


def verify_bundle(bundle_dir: str | Path, data: str | None = None, checkpoint: str | Path | None = None,
                  n_windows: int = DEFAULT_EVAL_WINDOWS) -> dict[str, Any]:
    """Check ``bundle_dir``; returns the parity report (with ``integrity`` and ``compared_with``).

    Raises BundleError on a schema/checksum problem and ParityError (listing every mismatch) when parity fails.
    """
    contents = read_bundle(bundle_dir)  # schema, every file's sha256 and the digest over the whole bundle
    folder, manifest, model_path = contents.folder, contents.manifest, contents.model_path
    unlisted = sorted(p.name for p in folder.iterdir() if p.name not in {MANIFEST_NAME, *manifest.files()})
    if unlisted:
        raise BundleError(f"{folder}: holds files the manifest does not list (not covered by its digest): "
                          f"{unlisted}; remove them or re-export the bundle")
    # The device runtime's own load checks first (real model I/O against the manifest; runtimes that can crash the
    # process are tried in a child), so a bad bundle is a BundleError here too, not a crash of the parity run.
    open_backend(model_path, manifest, None, contents.model_bytes)
    target = get_target(manifest.target)
    if target.check is not None:
        problems = target.check(folder, manifest)
        if problems:
            raise BundleError(f"{folder}: {len(problems)} {target.name} file(s) inconsistent:\n  "
                              + "\n  ".join(problems))
    model, compared = _source_model(manifest, checkpoint)
    recording = y = None
    if data is not None:
        if model is None:
            raise BundleError(f"--data needs the source checkpoint to compare with: pass --checkpoint DIR (the "
                              f"manifest's recorded source {manifest.extra.get('source_checkpoint')!r} is not "
                              f"usable); without --data the bundle's reference set is checked")
        from acula_edge.data import load_dataset
        from acula_edge.export.calibration import sample_windows

        windows = sample_windows(load_dataset(data), manifest.frontend, manifest.windowing, manifest.labels,
                                 n_windows, per_recording=EVAL_WINDOWS_PER_RECORDING)
        x, recording, y = windows.x, windows.recording, windows.y
        reference = parity.torch_outputs(model, x, OUTPUT_NAMES)
    else:
        x, stored, meta = bundle.read_reference(folder / manifest.extra.get("reference_file", bundle.REFERENCE_FILE))
        # (reference_file is a plain name listed in extra.files: the schema refuses paths out of the bundle)
        reference = parity.torch_outputs(model, x, OUTPUT_NAMES) if model is not None else stored
        recording, y = meta.get("recording"), meta.get("y")
    report = parity.check_bundle(folder, x, reference, target.tolerance(manifest.precision), f"verify {folder}",
                                 recording, y, data or "reference.npz")
    report.update(compared_with=compared,
                  integrity=f"schema v{manifest.schema_version}, bundle digest {contents.digest[:12]}... over the "
                            f"manifest and {len(manifest.files())} file(s) ok"
                            + (f", {target.name} files consistent" if target.check is not None else ""))
    return report
