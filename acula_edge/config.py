"""One helper for every frozen dataclass config: a strict ``from_dict``, a resume key and a JSON config reader.

- :func:`from_dict` refuses unknown keys (a typo in a config file must not be silently ignored) and values of the
  wrong type, naming the field (``training config.lr must be a number, got 'fast'``); JSON lists become tuples and
  nested dicts become the nested dataclass.
- :func:`config_key` hashes the fields a run depends on, leaving out run-only ones (threads, logging, how far to
  train), so changing those never blocks a resume while any other change refuses it.
- :class:`Config` puts both on a dataclass: ``to_dict``, ``from_dict(d, base=...)``, ``key()`` and
  ``changed_from(old)``; the class says which fields are run-only in ``RUN_ONLY``.

No heavy imports: the device side may use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

from acula_edge import typed
from acula_edge.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few kB; anything this large is not one


def _boolean(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise typed.SchemaError(f"{what} must be true or false, got {v!r}")
    return v


# scalar annotation -> strict check (acula_edge.typed: ints are not bools or 3.0; floats finite; ints accepted)
_SCALAR_CHECKS = {int: typed.integer, float: typed.number, str: typed.string, bool: _boolean}


def from_dict(cls: type, data: Any, what: str | None = None, base: Any | None = None) -> Any:
    """The frozen dataclass ``cls`` built from ``data`` (a JSON object), over ``base`` when given (default: the
    dataclass defaults). Raises ConfigError naming unknown keys or the field whose value has the wrong type."""
    what = what or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object of {cls.__name__} fields, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kw = {k: _coerce(v, hints[k], f"{what}.{k}", f"{k} config") for k, v in data.items()}
    return dataclasses.replace(base, **kw) if base is not None else cls(**kw)


def config_key(config: Any, exclude: tuple[str, ...] = ()) -> str:
    """16-hex-digit SHA-256 of a dataclass config's fields (sorted JSON), leaving out the top-level ``exclude``."""
    return hash_fields(key_fields(config, exclude))


def key_fields(config: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields :func:`config_key` hashes, as a JSON-able dict."""
    d = dataclasses.asdict(config)
    missing = sorted(set(exclude) - set(d))
    if missing:  # a renamed field would otherwise silently start blocking resumes
        raise ValueError(f"{type(config).__name__} has no fields {missing} to leave out of its key")
    return json.loads(json.dumps({k: v for k, v in d.items() if k not in exclude}, sort_keys=True))


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"name: old -> new"`` for every top-level key whose value differs between two key-field dicts."""
    return [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in sorted(set(old) | set(new))
            if old.get(k, "(absent)") != new.get(k, "(absent)")]


def read_json_config(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON config file as a dict (one object of ``what``'s fields, read strictly by
    :func:`acula_edge.typed.read_json_file`); ConfigError naming the file otherwise."""
    try:
        _, data = typed.read_json_file(path, MAX_CONFIG_BYTES)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e})") from e
    except typed.SchemaError as e:
        raise ConfigError(f"{path}: the {what} {e}; give a JSON object of its fields") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the {what} must be a JSON object of its fields, got {type(data).__name__}")
    return data


class Config:
    """Mixin for frozen dataclass configs: ``to_dict``, strict ``from_dict``, ``key`` and ``changed_from``.

    ``RUN_ONLY``: fields that change how a run is carried out but not what it computes (threads, logging, how far
    to train); they are left out of :meth:`key`, so changing them never blocks a resume."""

    CONFIG_NAME: ClassVar[str] = ""  # how errors name it ("" = the class name)
    RUN_ONLY: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Any | None = None) -> Any:
        """Fields of ``data`` over ``base`` (default: the dataclass defaults); unknown keys and wrong types are
        refused with a ConfigError naming them."""
        return from_dict(cls, data, cls.CONFIG_NAME or cls.__name__, base)

    def key_fields(self) -> dict[str, Any]:
        return key_fields(self, self.RUN_ONLY)

    def key(self) -> str:
        """Hash of every field but the run-only ones: two configs with the same key compute the same run."""
        return config_key(self, self.RUN_ONLY)


def hash_fields(d: dict[str, Any]) -> str:
    """16-hex-digit SHA-256 of a JSON-able dict (sorted keys)."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _coerce(value: Any, tp: Any, where: str, nested_what: str) -> Any:
    """``value`` checked against the annotation ``tp`` (lists -> tuples, dicts -> nested dataclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where, nested_what)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where} must be one of {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return value if isinstance(value, tp) else from_dict(tp, value, nested_what)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(value)
        elif args:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} entries, got {len(value)}")
            kinds = list(args)
        else:
            return tuple(value)
        return tuple(_coerce(v, k, f"{where}[{i}]", nested_what) for i, (v, k) in enumerate(zip(value, kinds)))
    scalar = _SCALAR_CHECKS.get(tp)
    if scalar is not None:
        try:
            return scalar(value, where)
        except typed.SchemaError as e:
            raise ConfigError(str(e)) from None
    return value  # Any and other annotations: the dataclass's own checks apply
