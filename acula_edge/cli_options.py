"""The options several ``acula-edge`` commands share: one name, one meaning, one help text and one default each.

Every command takes these from here, so ``--restart`` (or ``--threads``, ``--frontend``...) means the same thing
wherever it appears; README.md lists them once ("Shared options") and tests/test_cli_help.py checks every command's
``--help`` against this module. Older spellings stay accepted as second names (``--no-resume``,
``--frontend-preset``) so existing scripts keep working; the help shows the current name first.
"""

from __future__ import annotations

from typing import Any, Callable

import click

from acula_edge.frontend import PRESETS as FRONTEND_PRESETS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# Old option spellings still accepted, by the name every command now uses (checked by the --help test).
OLD_SPELLINGS = {"--restart": ("--no-resume",), "--frontend": ("--frontend-preset",)}


def restart() -> Decorator:
    """``--restart``: start a run over instead of resuming the state in its run folder (parameter ``restart``)."""
    return click.option("--restart", *OLD_SPELLINGS["--restart"], "restart", is_flag=True,
                        help="Start over instead of resuming the run folder's saved state (a resume refuses a "
                             "changed configuration).")


def frontend(default: str) -> Decorator:
    """``--frontend NAME``: a front-end preset of :data:`acula_edge.frontend.PRESETS` (parameter ``frontend``);
    ``default`` says in words what applies when it is not given."""
    names = ", ".join(sorted(FRONTEND_PRESETS))
    return click.option("--frontend", *OLD_SPELLINGS["--frontend"], "frontend", default=None,
                        help=f"Front-end preset ({names}). Default: {default}.")


def device() -> Decorator:
    """``--device``: where training runs (parameter ``device``; None = CUDA when available)."""
    return click.option("--device", default=None,
                        help="cpu, cuda or cuda:N. Default: cuda when available, else cpu (under torchrun each "
                             "process takes its LOCAL_RANK GPU).")


def threads(what: str, default: int | None = None) -> Decorator:
    """``--threads N`` (parameter ``threads``): CPU threads for ``what``; ``default`` None leaves the library's."""
    extra = {"show_default": True} if default is not None else {}
    text = f"CPU threads for {what}." + ("" if default is not None else " Default: the library's own choice.")
    return click.option("--threads", type=click.IntRange(min=1), default=default, help=text, **extra)


def jobs(what: str) -> Decorator:
    """``--jobs N`` (parameter ``jobs``): processes ``what`` is spread over; None = up to 2, as the CPUs allow."""
    return click.option("--jobs", type=click.IntRange(min=1), default=None,
                        help=f"Processes {what} is spread over. Default: 2 where 2 CPUs are free, else 1.")


def seed(what: str, default: int | None = None) -> Decorator:
    """``--seed N`` (parameter ``seed``)."""
    extra = {"show_default": True} if default is not None else {}
    text = f"Random seed of {what}." + ("" if default is not None else " Default: the configuration's.")
    return click.option("--seed", type=int, default=default, help=text, **extra)


def verbose(where: str) -> Decorator:
    """``--verbose``: show third-party output instead of capturing it (parameter ``verbose``)."""
    return click.option("--verbose", is_flag=True,
                        help=f"Show library and runtime output (default: captured to {where}, shown if the command "
                             f"fails).")


def quiet() -> Decorator:
    """``--quiet``: no progress bars (parameter ``quiet``)."""
    return click.option("--quiet", is_flag=True, help="No progress bars.")


def json_stdout(what: str) -> Decorator:
    """``--json``: print ``what`` to stdout as JSON instead of the human summary (parameter ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON on stdout.")


def json_file(what: str) -> Decorator:
    """``--json-out FILE``: also write ``what`` as a JSON document (parameter ``json_out``)."""
    return click.option("--json-out", "json_out", type=click.Path(dir_okay=False),
                        help=f"Write {what} as a JSON document to this file.")


def pad() -> Decorator:
    """``--pad``: accept recordings shorter than one model window (parameter ``pad``)."""
    return click.option("--pad", is_flag=True,
                        help="Accept a recording shorter than one model window by zero-padding it (default: refuse "
                             "it as too short).")


__all__ = ["OLD_SPELLINGS", "device", "frontend", "json_file", "json_stdout", "pad", "quiet", "restart", "seed",
           "threads", "verbose"]
