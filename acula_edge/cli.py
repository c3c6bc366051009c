"""The ``acula-edge`` command line. Stage commands are imported only when invoked, so ``--help`` and the device
commands never import torch.

User errors (:class:`~acula_edge.errors.AculaEdgeError`) print one line, ``error: ...``, and exit with status 2;
no traceback.
"""

from __future__ import annotations

import importlib
import json
import sys

import click

from acula_edge import __version__
from acula_edge import cli_options as options
from acula_edge.errors import AculaEdgeError

# command name -> (module, attribute, one-line help). The module is imported only when the command runs.
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "align": ("acula_edge.align.cli", "align", "Align an audio encoder with a language model (the teacher)."),
    "distill": ("acula_edge.distill.cli", "distill", "Distill a teacher into a device-sized student."),
    "export": ("acula_edge.export.cli", "export", "Quantize and export a checkpoint to a device bundle."),
    "verify": ("acula_edge.export.cli", "verify", "Re-check a bundle: checksum, schema and parity."),
    "adapt": ("acula_edge.adapt_cli", "adapt", "Adapt a bundle or checkpoint to a new site from unlabeled recordings."),
    "firmware": ("acula_edge.export.firmware.cli", "firmware", "Write (and build) a Cortex-M firmware project for a "
                 "tflm bundle."),
    "info": ("acula_edge.runtime.cli", "info", "Print a bundle's manifest readably."),
    "classify": ("acula_edge.runtime.cli", "classify", "Classify recordings with a bundle."),
    "stream": ("acula_edge.runtime.cli", "stream", "Stream a recording (or stdin PCM) through a bundle."),
    "bench": ("acula_edge.bench.cli", "bench", "Benchmark bundles: latency and accuracy."),
    "pipeline": ("acula_edge.pipeline", "pipeline", "The main job: align, distill, export, verify, benchmark."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr, _ = LAZY_COMMANDS[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, cmd.get_short_help_str(70)) for name, cmd in sorted(self.commands.items())]
        rows += [(name, text) for name, (_, _, text) in sorted(LAZY_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="acula-edge")
def cli() -> None:
    """acula-edge: health-audio models from the GPU lab to the point of care.

    align -> distill -> export -> (device) classify / stream -> bench. 'acula-edge pipeline' runs them all.
    """


@cli.command()
@click.argument("audio_file", type=click.Path(dir_okay=False))
@options.frontend("heart")
@options.json_stdout("the summary")
def features(audio_file: str, frontend: str | None, as_json: bool) -> None:
    """Print the front-end summary of AUDIO_FILE: rates, length, frames, windows, level and log-mel range."""
    from acula_edge.features_summary import summarise_file

    summary = summarise_file(audio_file, frontend or "heart")
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        for key, value in summary.items():
            click.echo(f"{key:>22}: {value}")


def run(command: click.Command, argv: list[str] | None, prog_name: str) -> None:
    """Run a click command, turning user errors into one line on stderr and exit status 2 (no traceback)."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except AculaEdgeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``acula-edge``."""
    run(cli, argv, "acula-edge")
