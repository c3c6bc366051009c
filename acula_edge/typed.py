"""Strict reading of untrusted JSON (bundle manifests, checkpoint configs): bounded size and depth, exact types,
finite numbers in range.

``json.loads`` alone turns ``32.0`` into a float n_mels, ``NaN`` into a threshold that is never crossed and a
100,000-deep nesting into a RecursionError; the readers here turn each of those into one :class:`SchemaError`
line that the caller wraps in its own user error (BundleError, CheckpointError) naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

# Deepest nesting of objects/arrays accepted in a manifest or config (the real ones are 4 deep).
MAX_JSON_DEPTH = 16


class SchemaError(ValueError):
    """A JSON value has the wrong type, is out of range or not finite; the message names the field."""


def read_json_file(path: str | os.PathLike, max_bytes: int) -> tuple[bytes, Any]:
    """(raw bytes, parsed value) of a JSON file no larger than ``max_bytes``, refusing NaN/Infinity, duplicate
    keys and nesting deeper than :data:`MAX_JSON_DEPTH`. The size is checked before anything is parsed, and the
    file is read once (at most ``max_bytes + 1`` bytes, so a file growing meanwhile is caught too).

    Raises OSError when unreadable, SchemaError for everything else.
    """
    raw = read_regular_file(path, max_bytes)
    return raw, parse_json(raw)


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of ``path``, read once, if it is a regular file of at most ``max_bytes`` (SchemaError otherwise).

    Opened non-blocking and checked on the open descriptor, so a FIFO or device put in a file's place can neither
    block the reader nor be swapped in between a check and the read. OSError when missing or unreadable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SchemaError("is not a regular file (a FIFO, device or folder)")
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise SchemaError(f"is larger than the {max_bytes:,}-byte limit; this is not a file acula-edge wrote")
    return raw


def parse_json(raw: bytes) -> Any:
    """Strict JSON from bytes (UTF-8, finite numbers, unique keys, bounded depth)."""

    def no_constant(name: str) -> None:
        raise SchemaError(f"holds the non-finite number {name}; only finite numbers are allowed")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(pairs)
        if len(d) != len(pairs):
            dup = sorted({k for k, _ in pairs if sum(1 for j, _ in pairs if j == k) > 1})
            raise SchemaError(f"repeats the key(s) {dup}; each key may appear once")
        return d

    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=no_constant, object_pairs_hook=unique)
    except UnicodeDecodeError as e:
        raise SchemaError(f"is not UTF-8 text ({e})") from e
    except RecursionError as e:
        raise SchemaError(f"is nested deeper than {MAX_JSON_DEPTH} levels") from e
    except json.JSONDecodeError as e:
        raise SchemaError(f"is not valid JSON ({e})") from e
    check_depth(value)
    return value


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise SchemaError if ``value`` nests lists/dicts more than ``limit`` deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                raise SchemaError(f"is nested deeper than {limit} levels")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))


def integer(v: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as an int (a JSON integer, not a bool or ``32.0``) within [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise SchemaError(f"{what} must be an integer, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise SchemaError(f"{what} must be in {lo}..{hi}, got {v}")
    return v


def number(v: Any, what: str, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
           open_hi: bool = False) -> float:
    """``v`` as a finite float within [lo, hi] (``open_lo``/``open_hi``: the bound itself is excluded)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SchemaError(f"{what} must be a finite number, got {v!r}")
    v = float(v)
    bad_lo = lo is not None and (v <= lo if open_lo else v < lo)
    bad_hi = hi is not None and (v >= hi if open_hi else v > hi)
    if bad_lo or bad_hi:
        interval = f"{'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
        raise SchemaError(f"{what} must be in {interval}, got {v}")
    return v


def string(v: Any, what: str, max_len: int = 1000, non_empty: bool = False) -> str:
    if not isinstance(v, str):
        raise SchemaError(f"{what} must be a string, got {type(v).__name__}")
    if len(v) > max_len or (non_empty and not v):
        raise SchemaError(f"{what} must be {'a non-empty' if non_empty else 'a'} string of at most {max_len} "
                          f"characters, got {len(v)}")
    return v


def array(v: Any, what: str, max_len: int, min_len: int = 0) -> list[Any]:
    if not isinstance(v, list):
        raise SchemaError(f"{what} must be a list, got {type(v).__name__}")
    if not min_len <= len(v) <= max_len:
        raise SchemaError(f"{what} must have {min_len}..{max_len} entries, got {len(v)}")
    return v


def mapping(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise SchemaError(f"{what} must be a JSON object, got {type(v).__name__}")
    return v


# Field annotation (as written in the dataclass: ``from __future__ import annotations`` keeps it a string) -> check.
_SCALARS = {"int": lambda v, w: integer(v, w), "float": lambda v, w: number(v, w), "str": lambda v, w: string(v, w),
            "bool": lambda v, w: _boolean(v, w)}


def _boolean(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise SchemaError(f"{what} must be true or false, got {v!r}")
    return v


def scalar_fields(cls: type, data: Any, what: str) -> dict[str, Any]:
    """Check ``data`` against a frozen dataclass of scalar fields (int, float, str, bool): known keys only, each
    value of its field's type (floats finite; an int is accepted for a float field). Returns a plain dict for
    ``cls(**d)``; ranges stay the dataclass's own checks."""
    data = mapping(data, what)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SchemaError(f"{what} has unknown keys {unknown}; allowed: {sorted(fields)}")
    out = {}
    for key, value in data.items():
        check = _SCALARS.get(str(fields[key].type))
        out[key] = check(value, f"{what}.{key}") if check else value
    return out


def is_plain_name(name: str) -> bool:
    """True for a file name that stays inside its folder: no separators, no '..', not absolute, not hidden."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
            and not name.startswith(".") and Path(name).name == name and not Path(name).is_absolute())
