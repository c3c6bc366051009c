"""acula_edge.config: strict from_dict (unknown keys, wrong types, nesting), run-only fields left out of the key."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from acula_edge.config import Config, changed_fields, config_key, from_dict, read_json_config
from acula_edge.errors import ConfigError


@dataclass(frozen=True)
class Inner(Config):
    gain: float = 1.0
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Outer(Config):
    name: str = "a"
    steps: int = 3
    cap: int | None = None
    pair: tuple[float, float] = (0.0, 1.0)
    fast: bool = False
    threads: int = 1
    inner: Inner = field(default_factory=Inner)

    CONFIG_NAME = "outer config"
    RUN_ONLY = ("threads",)


def test_from_dict_builds_nested_tuples_and_over_a_base():
    cfg = Outer.from_dict({"pair": [1, 2], "cap": 4, "inner": {"gain": 2, "sizes": [3]}})
    assert cfg == Outer(pair=(1.0, 2.0), cap=4, inner=Inner(gain=2.0, sizes=(3,)))
    assert isinstance(cfg.pair[0], float) and isinstance(cfg.inner.gain, float)
    assert Outer.from_dict({"steps": 5}, base=Outer(name="b")) == Outer(name="b", steps=5)
    assert Outer.from_dict({"cap": None}).cap is None and from_dict(Outer, {"steps": 5}, "x") == Outer(steps=5)


@pytest.mark.parametrize("data, message", [
    ({"step": 1}, r"unknown outer config keys \['step'\]; allowed: \['cap', 'fast'"),
    ({"steps": "3"}, r"outer config.steps must be an integer, got '3'"),
    ({"steps": 3.0}, r"outer config.steps must be an integer, got 3.0"),
    ({"steps": True}, r"outer config.steps must be an integer, got True"),
    ({"fast": 1}, r"outer config.fast must be true or false, got 1"),
    ({"pair": [1]}, r"outer config.pair must have 2 entries, got 1"),
    ({"pair": "ab"}, r"outer config.pair must be a list, got 'ab'"),
    ({"cap": "all"}, r"outer config.cap must be an integer, got 'all'"),
    ({"inner": {"gian": 1}}, r"unknown inner config keys \['gian'\]"),
    ({"inner": {"sizes": [1, "x"]}}, r"inner config.sizes\[1\] must be an integer, got 'x'"),
    ({"inner": {"gain": float("nan")}}, r"inner config.gain must be a finite number, got nan"),
])
def test_from_dict_names_unknown_keys_and_wrong_types(data, message):
    with pytest.raises(ConfigError, match=message):
        Outer.from_dict(data)


def test_key_ignores_run_only_fields_and_names_what_changed():
    base = Outer()
    assert Outer(threads=8).key() == base.key()
    changed = Outer(steps=4, inner=Inner(gain=3.0))
    assert changed.key() != base.key()
    assert changed_fields(base.key_fields(), changed.key_fields()) == [
        "inner: {'gain': 1.0, 'sizes': [1, 2]} -> {'gain': 3.0, 'sizes': [1, 2]}", "steps: 3 -> 4"]
    with pytest.raises(ValueError, match=r"Outer has no fields \['thread'\] to leave out"):
        config_key(base, ("thread",))


def test_read_json_config_names_the_file(tmp_path):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"steps": 2}))
    assert read_json_config(good, "outer config") == {"steps": 2}
    bad = tmp_path / "bad.json"
    bad.write_text("{steps: 2}")
    with pytest.raises(ConfigError, match=r"bad.json: the outer config is not valid JSON \(Expecting property name"):
        read_json_config(bad, "outer config")
    bad.write_text('{"steps": 2, "steps": 3}')
    with pytest.raises(ConfigError, match=r"bad.json: the outer config repeats the key\(s\) \['steps'\]"):
        read_json_config(bad, "outer config")
    with pytest.raises(ConfigError, match=r"missing.json: cannot read the outer config \(\[Errno 2\]"):
        read_json_config(tmp_path / "missing.json", "outer config")
    bad.write_text("[1]")
    with pytest.raises(ConfigError, match="bad.json: the outer config must be a JSON object of its fields, got list"):
        read_json_config(bad, "outer config")
