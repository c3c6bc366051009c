"""Every command's --help: each option explained, its default shown, and one name per idea across commands."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from acula_edge import cli_options
from acula_edge.cli import cli

# The options several commands share, by name -> the help text that every command must give it (cli_options).
SHARED = ("--restart", "--frontend", "--device", "--threads", "--seed", "--verbose", "--quiet", "--json",
          "--json-out", "--pad")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


COMMANDS = _commands(cli)


def test_every_command_is_walked():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"align", "distill", "export", "verify", "info", "classify", "stream", "features", "pipeline", "adapt",
            "bench latency", "bench accuracy"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_help_and_shows_its_default(path, command):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or "--help" in param.opts:
            continue
        name = param.opts[0]
        assert param.help, f"acula-edge {' '.join(path)} {name}: no help text"
        default = param.default
        unset = default is None or default == () or type(default).__name__ == "Sentinel"  # click 8.2+: UNSET
        if param.is_flag or unset or param.required:
            continue
        shown = param.show_default or "[default:" in param.help or "Default:" in param.help
        assert shown, f"acula-edge {' '.join(path)} {name}: default {default!r} not shown in --help"


def test_shared_options_mean_the_same_everywhere():
    """A shared option has one help text per meaning: the same name never means two things."""
    helps: dict[str, set[str]] = {}
    for path, command in COMMANDS:
        for param in command.params:
            if isinstance(param, click.Option) and param.opts[0] in SHARED:
                helps.setdefault(param.opts[0], set()).add(param.name)
    for name, dests in helps.items():  # one parameter name each: --json never takes a FILE in one command
        assert len(dests) == 1, f"{name} maps to several parameters: {sorted(dests)}"
    assert helps["--json"] == {"as_json"} and helps["--json-out"] == {"json_out"}


def test_old_spellings_are_second_names_only():
    for path, command in COMMANDS:
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            for current, old in cli_options.OLD_SPELLINGS.items():
                for spelling in old:
                    if spelling in param.opts:
                        assert param.opts[0] == current, f"{' '.join(path)}: {spelling} is not an alias of {current}"


def test_align_cli_lists_the_registries_it_mirrors():
    from acula_edge.align import cli as align_cli
    from acula_edge.align.losses import ALIGN_LOSSES
    from acula_edge.align.train import PRESETS

    assert set(align_cli.PRESET_NAMES) == set(PRESETS)
    assert set(align_cli.LOSS_NAMES) == set(ALIGN_LOSSES)


def test_options_that_would_be_ignored_are_refused(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    runner = CliRunner()
    result = runner.invoke(cli, ["classify", str(tmp_path), str(audio), "--windows"])
    assert result.exit_code == 2 and "--windows prints per-window results in JSON: add --format json" in result.output
    result = runner.invoke(cli, ["stream", str(tmp_path), str(audio), "--sample-rate", "8000"])
    assert result.exit_code == 2 and "--sample-rate describes raw PCM on stdin" in result.output


def test_old_spellings_still_parse():
    result = CliRunner().invoke(cli, ["features", "--frontend-preset", "no-such-preset", "missing.wav"])
    assert "--frontend-preset" not in result.output  # accepted as an option name (the file error comes first)
