"""Metrics of acula_edge.bench.metrics against hand-computed values, and the seeded bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acula_edge.bench.metrics import (Estimate, auprc, auroc, average_ranks, bootstrap, point_metrics, roc_curve,
                                      sensitivity, specificity)
from acula_edge.errors import ConfigError


def test_average_ranks_share_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auroc_hand_computed():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats one, 0.8 beats both -> 3 of 4 pairs
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auroc_counts_ties_as_half():
    # positive 0.5 ties negative 0.5 (1/2) and beats 0.2; positive 0.9 beats both -> 3.5 / 4
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert auroc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_auroc_perfect_inverted_and_undefined():
    y = [0, 0, 0, 1, 1]
    assert auroc(y, [0.1, 0.2, 0.3, 0.8, 0.9]) == 1.0
    assert auroc(y, [0.9, 0.8, 0.7, 0.2, 0.1]) == 0.0
    assert math.isnan(auroc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(auroc([0, 0], [0.1, 0.5]))


def test_auprc_hand_computed():
    # thresholds 0.9: P=1, R=.5; 0.8: P=.5, R=.5; 0.7: P=2/3, R=1 -> AP = .5 * 1 + .5 * 2/3
    assert auprc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert auprc([0, 1], [0.1, 0.9]) == 1.0
    assert math.isnan(auprc([0, 0], [0.1, 0.9]))


def test_auprc_ties_form_one_threshold():
    # both scores tie: one threshold with P = 1/2, R = 1
    assert auprc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_roc_curve_points():
    fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thr[0] == np.inf and thr[1:].tolist() == [0.8, 0.4, 0.35, 0.1]
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([1, 1], [0.2, 0.3])


def test_sensitivity_specificity_macc():
    y = np.array([1, 1, 1, 0, 0], dtype=bool)
    pred = np.array([1, 0, 1, 0, 1], dtype=bool)
    assert sensitivity(y, pred) == pytest.approx(2 / 3)
    assert specificity(y, pred) == pytest.approx(1 / 2)
    m = point_metrics(y, np.array([0.9, 0.2, 0.8, 0.1, 0.7]), pred)
    assert m["macc"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert math.isnan(sensitivity(np.zeros(3, bool), np.ones(3, bool)))
    assert math.isnan(specificity(np.ones(3, bool), np.ones(3, bool)))


def _sample(n: int = 60, seed: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    s = y * 0.6 + rng.random(n)
    return y, s, s >= 0.8


def test_bootstrap_interval_contains_point_and_is_deterministic():
    y, s, d = _sample()
    a = bootstrap(y, s, d, n_boot=300, seed=7)
    b = bootstrap(y, s, d, n_boot=300, seed=7)
    c = bootstrap(y, s, d, n_boot=300, seed=8)
    assert set(a) == {"auroc", "auprc", "sensitivity", "specificity", "macc"}
    for k, e in a.items():
        assert e.lo <= e.value <= e.hi, k
        assert e.lo < e.hi, k
        assert e == b[k]
    assert a["auroc"].value == pytest.approx(auroc(y, s))
    assert (a["auroc"].lo, a["auroc"].hi) != (c["auroc"].lo, c["auroc"].hi)


def test_bootstrap_strata_keep_group_sizes_and_skip_undefined_resamples():
    y = np.array([1, 0, 0, 0], dtype=bool)  # one positive: many resamples have none
    s = np.array([0.9, 0.1, 0.2, 0.3])
    est = bootstrap(y, s, s > 0.5, n_boot=200, seed=0)
    assert 0 < est["auroc"].n_boot < 200  # resamples without the positive are left out
    assert est["specificity"].n_boot == 200
    # stratified by group: each group keeps its size, so group "b" (only positives) never loses them all
    strata = np.array(["b", "a", "a", "a"])
    est_s = bootstrap(y, s, s > 0.5, n_boot=50, seed=0, strata=strata)
    assert est_s["auroc"].n_boot == 50 and est_s["auroc"].lo == est_s["auroc"].hi == 1.0


def test_estimate_json_uses_null_for_undefined():
    assert Estimate(math.nan, math.nan, math.nan, 0).to_dict() == {"value": None, "ci95": [None, None], "n_boot": 0}


def test_bootstrap_rejects_bad_settings():
    y, s, d = _sample(10)
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap(y, s, d, n_boot=0)
    with pytest.raises(ConfigError, match="confidence"):
        bootstrap(y, s, d, confidence=1.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=30))
def test_auroc_symmetry_and_monotone_invariance(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], dtype=float)
    if y.all() or not y.any():
        assert math.isnan(auroc(y, s))
        return
    a = auroc(y, s)
    assert a == pytest.approx(1.0 - auroc(~y, s))
    assert a == pytest.approx(auroc(y, np.exp(s) * 3 + 1))  # a monotone transform keeps the ranks
    # brute force over all pairs
    pos, neg = s[y], s[~y]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert a == pytest.approx(brute)
