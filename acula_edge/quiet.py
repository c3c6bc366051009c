"""Quiet stages: third-party output goes to a log file, the user sees one line per step.

Converters and runtimes print a lot that is not meant for the user of a stage (torchao's missing optional kernels,
cpuinfo, pytree FutureWarnings, the LiteRT converter's trace, absl / oneDNN banners, TFLite Micro's allocation
messages on C-level stderr). :func:`captured` sends all of it to a log file: file descriptors 1 and 2 (so C
libraries are caught too), Python warnings and the logging module. What the stage itself wants to say goes through
:meth:`Console.line`, to the terminal. With ``verbose`` nothing is captured. When the stage fails on an unexpected
exception, the log's tail is shown with its path; on a typed acula-edge error (one line that says what to do) the
log is only named.

numpy-free and torch-free: the device CLI uses it too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import IO, Iterator

from acula_edge.errors import AculaEdgeError

FAILURE_TAIL_LINES = 40  # lines of the log shown when the stage fails


class Console:
    """Where a stage's own lines go while third-party output is captured: the terminal's stderr."""

    def __init__(self, stream: IO[str], log_path: Path | None) -> None:
        self._stream = stream
        self.log_path = log_path

    def line(self, text: str) -> None:
        """Print one line for the user (flushed: progress lines must show while the stage runs)."""
        self._stream.write(text + "\n")
        self._stream.flush()


def _real_fd(stream: IO[str], fd: int) -> bool:
    """Whether ``stream`` writes to file descriptor ``fd`` (False for test captures such as click's CliRunner)."""
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def captured(log_path: str | Path | None = None, verbose: bool = False, what: str = "stage",
             progress_bars: bool = False) -> Iterator[Console]:
    """Capture third-party output of the block into ``log_path`` (None: a temporary file, removed after a success).

    Yields a :class:`Console` for the stage's own lines. ``verbose``: capture nothing (everything shows).
    ``progress_bars``: Python's ``sys.stderr`` stays on the terminal (tqdm bars of align / distill keep showing);
    file descriptors, warnings and logging are still captured. On an exception the log's last lines go to stderr,
    with the log's path, before the exception propagates.
    """
    if verbose:
        yield Console(sys.stderr, None)
        return
    temporary = log_path is None
    if temporary:
        fd, name = tempfile.mkstemp(prefix="acula-edge-", suffix=".log")
        os.close(fd)
        path = Path(name)
    else:
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
    console_stream = sys.stderr
    saved: dict[int, int] = {}
    failed = user_error = False
    log = open(path, "w", encoding="utf-8", errors="replace")
    handler = logging.StreamHandler(log)
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    old_stdout, old_stderr = sys.stdout, sys.stderr
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        if _real_fd(sys.stderr, 2):
            # the terminal, kept on a duplicate of fd 2 for the stage's own lines
            console_stream = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
        for fd in (1, 2):  # C libraries write to the descriptors directly
            saved[fd] = os.dup(fd)
            os.dup2(log.fileno(), fd)
        sys.stdout = log
        sys.stderr = console_stream if progress_bars else log
        root.handlers = [handler]
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda msg, cat, filename, lineno, file=None, line=None: log.write(
                warnings.formatwarning(msg, cat, filename, lineno, line))
            yield Console(console_stream, None if temporary else path)
    except AculaEdgeError:
        failed = user_error = True  # a typed error says what went wrong in one line; the log is only named
        raise
    except BaseException:
        failed = True
        raise
    finally:
        log.flush()
        sys.stdout, sys.stderr = old_stdout, old_stderr
        for fd, dup in saved.items():
            os.dup2(dup, fd)
            os.close(dup)
        root.handlers, root.level = old_handlers, old_level
        log.close()
        if failed and not user_error:
            _show_tail(path, console_stream, what)
        elif failed and not temporary and path.stat().st_size:
            console_stream.write(f"({what}: library output in {path})\n")
            console_stream.flush()
        if console_stream is not sys.stderr:
            console_stream.close()
        if temporary and (user_error or not failed):
            path.unlink(missing_ok=True)


def rank_log(path: Path) -> Path:
    """``path`` for the main process; ``<stem>.rank<N><suffix>`` beside it for the other ranks of a torchrun job
    (so ranks do not write over each other's log)."""
    rank = int(os.environ.get("RANK", "0") or 0)
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _show_tail(path: Path, stream: IO[str], what: str) -> None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    if not lines:
        return
    tail = lines[-FAILURE_TAIL_LINES:]
    stream.write(f"{what} failed; last {len(tail)} of {len(lines)} lines of its captured output ({path}):\n")
    stream.write("".join(f"  | {line}\n" for line in tail))
    stream.flush()
