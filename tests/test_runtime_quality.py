"""Window quality checks and window aggregation / hysteresis (pure numpy, no runtime needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from acula_edge.errors import ConfigError
from acula_edge.frontend import preset
from acula_edge.runtime.aggregation import Aggregator, DecisionConfig, Hysteresis, RecordingAccumulator
from acula_edge.runtime.quality import QualityConfig, spectral_flatness, window_quality
from acula_edge.runtime.results import WindowEvent, WindowQuality

FE, WIN = preset("heart")
N = WIN.window_samples(FE)


def tone(amp: float, hz: float = 60.0) -> np.ndarray:
    t = np.arange(N) / FE.sample_rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def flags(x: np.ndarray, cfg: QualityConfig = QualityConfig()) -> tuple[str, ...]:
    return window_quality(x, FE, cfg).flags


def test_quality_flags():
    rng = np.random.default_rng(0)
    assert flags(tone(0.1)) == ()
    assert flags(np.zeros(N, np.float32)) == ("silence",)
    assert flags(tone(1e-4)) == ("silence",)  # -83 dBFS
    clipped = np.clip(tone(3.0), -1.0, 1.0)
    assert "clipping" in flags(clipped) and "too_loud" in flags(clipped)
    assert flags(tone(0.1) + np.float32(0.5)) == ("dc_offset",)
    assert flags((0.05 * rng.standard_normal(N)).astype(np.float32)) == ("noise",)
    q = window_quality(tone(0.1), FE, QualityConfig())
    assert q.rms_dbfs == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.01)
    assert q.clip_fraction == 0.0 and q.ok
    off = QualityConfig(enabled=False)
    assert flags(np.zeros(N, np.float32), off) == ()
    assert flags(tone(1e-4), dataclasses.replace(QualityConfig(), silence_dbfs=-100.0)) == ()


def test_spectral_flatness_white_vs_tonal():
    rng = np.random.default_rng(1)
    assert spectral_flatness(rng.standard_normal(N), FE, 16) > 0.95
    assert spectral_flatness(tone(0.1), FE, 16) < 0.1
    assert spectral_flatness(np.zeros(N), FE, 16) == 0.0


def test_aggregators_and_hysteresis():
    ps = [np.array([0.8, 0.2]), np.array([0.2, 0.8]), np.array([0.4, 0.6])]
    mean, ema = Aggregator("mean"), Aggregator("ema", ema_alpha=0.5)
    for p in ps:
        mean.update(p)
        ema.update(p)
    np.testing.assert_allclose(mean.value, [1.4 / 3, 1.6 / 3], atol=1e-6)
    np.testing.assert_allclose(ema.value, [0.5 * 0.4 + 0.25 * 0.2 + 0.25 * 0.8, 0.5 * 0.6 + 0.25 * 0.8 + 0.25 * 0.2],
                               atol=1e-6)
    with pytest.raises(ConfigError, match="ema_alpha"):
        Aggregator("ema", ema_alpha=0.0)
    h = Hysteresis(0.5, DecisionConfig(margin=0.1, debounce=2))
    seq = [0.3, 0.55, 0.65, 0.62, 0.45, 0.35, 0.38, 0.59, 0.7, 0.7]
    assert [h.update(p) for p in seq] == [False, False, False, True, True, True, False, False, False, True]
    with pytest.raises(ConfigError, match="debounce"):
        DecisionConfig(debounce=0)


def _event(i: int, p_pos: float, ok: bool = True) -> WindowEvent:
    q = WindowQuality(-30.0, 0.0, 0.0, 0.1, () if ok else ("silence",))
    return WindowEvent(i, float(i), i + 4.0, ("no", "yes"), np.array([1 - p_pos, p_pos], np.float32),
                       np.full(3, float(i), np.float32), q)


def test_accumulator_excludes_bad_windows_and_debounces():
    acc = RecordingAccumulator(("no", "yes"), 0.5, decision=DecisionConfig(margin=0.05, debounce=2))
    u0 = acc.add(_event(0, 0.9, ok=False))
    assert u0.decision is None and u0.raw_decision is None and u0.n_excluded == 1
    np.testing.assert_allclose(u0.probabilities, [0.1, 0.9], atol=1e-6)  # all-window fallback
    u1 = acc.add(_event(1, 0.7))
    assert u1.decision is True and u1.raw_decision is True
    np.testing.assert_allclose(u1.probabilities, [0.3, 0.7], atol=1e-6)  # the excluded window is left out
    u2 = acc.add(_event(2, 0.1))  # mean 0.4: raw flips, the debounced decision waits
    assert (u2.raw_decision, u2.decision) == (False, True)
    u3 = acc.add(_event(3, 0.1))
    assert (u3.raw_decision, u3.decision) == (False, False)
    r = acc.result(duration_s=7.0)
    assert r.n_windows == 4 and r.n_excluded == 1 and r.decision is False and r.label == "no"
    np.testing.assert_allclose(r.embedding, [2.0, 2.0, 2.0])  # windows 1..3
    lean = RecordingAccumulator(("no", "yes"), 0.5, keep_windows=False)
    for i, p in enumerate((0.9, 0.7, 0.1, 0.1)):
        lean.add(_event(i, p, ok=i > 0))
    slim = lean.result(duration_s=7.0)
    assert slim.windows == () and (slim.n_windows, slim.n_excluded) == (4, 1)
    np.testing.assert_allclose(slim.probabilities, r.probabilities)
