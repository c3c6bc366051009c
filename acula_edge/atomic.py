"""Atomic writes: a reader sees the old artifact or the new one, never half of one.

Files are written to a temporary sibling and ``os.replace``-d into place; folders (bundles, checkpoints) are built
in a temporary sibling folder and swapped with the target in one step (Linux ``renameat2`` RENAME_EXCHANGE) only
after the caller's checks passed.

A folder write replaces only a folder this project wrote (a bundle's ``manifest.json`` or a checkpoint's
``config.json``) or an empty one; anything else at that path is refused, never deleted (:func:`check_replaceable`).

Temporary names carry the writer's process id (``.<name>.<pid>.<random>.partial`` / ``.tmp``): a writer killed
mid-write (SIGKILL, power loss) leaves its temporary behind, and the next write of the same target on this machine
removes temporaries whose process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# Files that mark a folder as written by acula-edge, and the key/value each JSON object must hold.
_MARKERS = (("manifest.json", "schema_version", None), ("config.json", "format", "acula-edge-checkpoint"))
_MARKER_MAX_BYTES = 64 * 1024 * 1024


def written_by_acula_edge(folder: Path) -> bool:
    """True if ``folder`` is an exported bundle or a checkpoint folder (its marker file parses and says so)."""
    from acula_edge import typed

    for name, key, value in _MARKERS:
        try:
            _, data = typed.read_json_file(folder / name, _MARKER_MAX_BYTES)
        except (OSError, ValueError):  # missing, unreadable or not our JSON
            continue
        if isinstance(data, dict) and key in data and (value is None or data[key] == value):
            return True
    return False


def check_replaceable(target: str | os.PathLike) -> Path:
    """``target`` as a Path after checking that writing a folder there loses no user file: it must not exist, be
    an empty folder, or be a folder acula-edge wrote. Never the current folder or one above it. ConfigError
    otherwise (callers check before long work, e.g. training, so the refusal comes first)."""
    from acula_edge.errors import ConfigError

    target = Path(target)
    resolved = target.resolve()
    here = Path.cwd().resolve()
    if resolved == here or resolved in here.parents or not target.name or target.name in (".", ".."):
        raise ConfigError(f"{target}: refusing to write an output folder at the current folder or above it "
                          f"(it would replace {resolved}); give a new folder name, e.g. --out ./bundle")
    if target.is_symlink():
        raise ConfigError(f"{target}: is a symbolic link; give the output folder's real path or a new name")
    if not target.exists():
        return target
    if not target.is_dir():
        raise ConfigError(f"{target}: exists and is a file, not a folder; refusing to replace it (choose another "
                          f"output folder or remove it yourself)")
    if any(target.iterdir()) and not written_by_acula_edge(target):
        raise ConfigError(f"{target}: exists, is not empty and was not written by acula-edge (no bundle "
                          f"manifest.json or checkpoint config.json); refusing to replace it and lose its files: "
                          f"choose a new output folder or remove it yourself")
    return target


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on normal exit it replaces ``target``.

    ``target`` must pass :func:`check_replaceable` (missing, empty, or a folder acula-edge wrote). On any
    exception the temporary folder is removed and ``target`` (if it existed) is untouched.
    """
    target = check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        check_replaceable(target)  # again: the folder may have been filled while the caller worked
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists() and _exchange(tmp, target):  # one atomic step; tmp now holds the old folder
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # Fallback (no renameat2): two renames; a kill between them leaves the old folder at .<name>.old-<pid>.
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's live process, or not a pid at all
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``target`` left by writers that no longer run; returns what was removed.

    A folder write killed between its two fallback renames leaves the previous folder at ``.<name>.old-<pid>``
    and no ``target``: that folder is put back. Temporaries of running writers are never touched."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    prefix = f".{target.name}."
    for entry in target.parent.iterdir():
        name = entry.name
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        if rest.startswith("old-") and rest[4:].isdigit():
            if not _pid_alive(int(rest[4:])):
                if not target.exists():
                    os.replace(entry, target)  # the interrupted write's previous folder, back in place
                else:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            continue
        pid = rest.split(".", 1)[0]
        if not (name.endswith(".partial") or name.endswith(".tmp")) or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the OS, libc or file system
    lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28)
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
