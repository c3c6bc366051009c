"""``acula-edge export`` and ``acula-edge verify``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from acula_edge import cli_options as options

from acula_edge.export.calibration import DEFAULT_CALIB_WINDOWS, DEFAULT_EVAL_WINDOWS
from acula_edge.export.registry import CALIBRATION_METHODS, targets

TARGET_CHOICES = (*targets(), "all")


def export_log_path(out: str | Path, target: str) -> Path:
    """Where ``export`` writes captured third-party output: ``OUT/export.log`` for ``--target all`` (OUT holds one
    folder per bundle), else beside the bundle (``OUT.export.log``): a bundle folder holds only what its manifest
    lists."""
    out = Path(out).resolve()  # "--out ." has no name of its own
    return out / "export.log" if target == "all" else out.with_name(out.name + ".export.log")


@click.command()
@click.argument("checkpoint_dir", type=click.Path(file_okay=False))
@click.option("--target", type=click.Choice(TARGET_CHOICES), required=True,
              help="Export target, or all (every target that exports the --quantize precision; tflm is int8 only).")
@click.option("--quantize", type=click.Choice(("none", "int8")), default="none", show_default=True,
              help="Precision: none keeps float32; int8 quantizes weights and activations on --calib-data.")
@click.option("--calib-data", default=None, help="Dataset spec for int8 calibration (required for int8).")
@click.option("--eval-data", default=None, help="Dataset spec for the parity gate (default: held-out part of "
                                                "--calib-data, else synthetic:heart for fp32).")
@click.option("--calibration", type=click.Choice(CALIBRATION_METHODS), default="minmax", show_default=True,
              help="Activation-range method (ONNX; the PT2E targets use min/max observers).")
@click.option("--calib-windows", type=click.IntRange(min=1), default=DEFAULT_CALIB_WINDOWS, show_default=True,
              help="Real log-mel windows the int8 activation ranges are calibrated on.")
@click.option("--eval-windows", type=click.IntRange(min=1), default=DEFAULT_EVAL_WINDOWS, show_default=True,
              help="Held-out windows the parity gate compares the bundle with PyTorch on.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Bundle folder (with --target all: one sub-folder per target-precision).")
@click.option("--operating-point", default=None,
              help="Replace the checkpoint's decision rule: youden, sensitivity=X or specificity=X (chosen again on "
                   "the validation recordings stored by distill), or a threshold such as 0.4.")
@options.jobs("the targets of --target all")
@options.json_stdout("the manifests' parity reports")
@options.verbose("export.log beside the bundles")
def export(checkpoint_dir: str, target: str, quantize: str, calib_data: str | None, eval_data: str | None,
           calibration: str, calib_windows: int, eval_windows: int, out: str, operating_point: str | None,
           jobs: int | None, as_json: bool, verbose: bool) -> None:
    """Quantize and export CHECKPOINT_DIR to a device bundle; the parity gate must pass or nothing is written.

    Prints one line per target (verdict, time, size, the gate's key figures) to stderr."""
    from acula_edge.quiet import captured

    log = export_log_path(out, target)
    with captured(log, verbose, what="export") as console:
        from acula_edge.export.api import export_checkpoint

        written = export_checkpoint(checkpoint_dir, out, target, quantize, calib_data=calib_data,
                                    eval_data=eval_data, calibration_method=calibration, n_calib=calib_windows,
                                    n_eval=eval_windows, operating_point=operating_point, jobs=jobs,
                                    progress=console.line)
        if console.log_path is not None:
            console.line(f"converter output: {console.log_path}")
    if as_json:
        click.echo(json.dumps({path: m.parity for path, m in written.items()}, sort_keys=True))
        return
    rules = sorted({m.operating_point.rule for m in written.values() if m.operating_point is not None})
    for rule in rules:  # the same decision rule in every bundle of one checkpoint
        click.echo(f"decision: {rule}")


@click.command()
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--data", default=None, help="Dataset spec to re-run parity on (needs the source checkpoint).")
@click.option("--checkpoint", default=None, type=click.Path(file_okay=False),
              help="Source checkpoint (default: the path recorded in the manifest, if it still matches).")
@options.json_stdout("the parity report")
@options.verbose("a temporary log")
def verify(bundle_dir: str, data: str | None, checkpoint: str | None, as_json: bool, verbose: bool) -> None:
    """Re-check BUNDLE_DIR: schema, sha256 of its files, the target's own file checks (tflm: the C array against the
    model file), and the export's parity gate, run by loading the bundle as the device does."""
    from acula_edge.quiet import captured

    with captured(None, verbose, what="verify"):
        from acula_edge.export.verify import verify_bundle

        report = verify_bundle(bundle_dir, data=data, checkpoint=checkpoint)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    click.echo(f"{Path(bundle_dir)}: ok ({report['integrity']}; parity vs {report['compared_with']} on "
               f"{report['windows']} windows in {report['runtime']})")
    for name, stats in report["outputs"].items():
        click.echo(f"  {name}: cosine mean {stats['cosine_mean']:.6f} min {stats['cosine_min']:.6f}, "
                   f"max abs error {stats['max_abs_error']:.4g}")
    if "probabilities" in report:
        d = report["decisions"]
        rule = "argmax" if d["threshold"] is None else f"threshold {d['threshold']:.4g}"
        click.echo(f"  probabilities: max abs error {report['probabilities']['max_abs_error']:.4g}; decisions at "
                   f"{rule}: {d['changed']} of {report['windows']} changed")
    if "auroc" in report:
        a = report["auroc"]
        click.echo(f"  AUROC: runtime {a['runtime']:.4f}, PyTorch fp32 {a['pytorch_fp32']:.4f} (delta "
                   f"{a['delta']:+.4f}, 95% interval [{a['ci95'][0]:+.4f}, {a['ci95'][1]:+.4f}])")
