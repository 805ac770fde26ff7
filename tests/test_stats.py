"""Bootstrap statistics and behaviour aggregates: correct values, determinism, json-safe output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safety_prune.errors import ConfigError
from safety_prune.evaluation import behaviour_aggregates, bootstrap_ci, paired_bootstrap_diff, summarize


def test_bootstrap_ci_covers_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(5, 1, 30), rng.normal(5, 1, 3000)
    lo, hi = bootstrap_ci(small, seed=1)
    assert lo < small.mean() < hi and (lo, hi) == bootstrap_ci(small, seed=1)
    lo2, hi2 = bootstrap_ci(large, seed=1, n_boot=500)
    assert hi2 - lo2 < (hi - lo) / 5  # width ~ 1/sqrt(n)
    assert hi2 - lo2 == pytest.approx(2 * 1.96 / np.sqrt(3000), rel=0.2)
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0)
    med_lo, med_hi = bootstrap_ci(small, stat=np.median, seed=1)
    assert med_lo < np.median(small) < med_hi


def test_paired_diff_detects_shift_and_null():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 200)
    shifted = paired_bootstrap_diff(a, a + 0.1, seed=0)
    assert shifted["delta"] == pytest.approx(0.1)
    assert shifted["ci_low"] == pytest.approx(0.1) and shifted["ci_high"] == pytest.approx(0.1)
    assert shifted["p_value"] < 0.01
    same = paired_bootstrap_diff(a, a, seed=0)
    assert same == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    # pairing matters: a paired shift is clear although the two samples overlap heavily
    assert paired_bootstrap_diff(a, a + 0.01, seed=0)["p_value"] < 0.01


def test_paired_diff_is_calibrated_under_null():
    """Under the null (both sides drawn from one distribution) a test at alpha 0.05 rejects about 5% of the time.
    Over 1000 seeds the binomial sd is 0.007, so [0.02, 0.09] holds for a calibrated test and fails one that never
    rejects (0), always rejects (1) or drops the two-sided factor of 2 (about 0.10); the same for the share of
    95% intervals that miss 0 (a 90% interval misses about 0.10)."""
    rng = np.random.default_rng(1)
    runs = [paired_bootstrap_diff(rng.normal(0, 1, 40), rng.normal(0, 1, 40), n_boot=200, seed=i)
            for i in range(1000)]
    rejected = np.mean([r["p_value"] < 0.05 for r in runs])
    missed = np.mean([not r["ci_low"] <= 0 <= r["ci_high"] for r in runs])
    assert 0.02 <= rejected <= 0.09, rejected
    assert 0.02 <= missed <= 0.09, missed


def test_summarize_and_errors():
    s = summarize([1.0, 2.0, 3.0], seed=0)
    assert s["value"] == 2.0 and s["n"] == 3 and s["ci_low"] <= 2.0 <= s["ci_high"]
    with pytest.raises(ConfigError, match="NaN"):
        summarize([1.0, float("nan")])
    with pytest.raises(ConfigError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ConfigError, match="pair the same items"):
        paired_bootstrap_diff([1.0, 2.0], [1.0])


def test_behaviour_aggregates_values():
    scores = [[0.9, 0.1], [0.2, 0.3], [0.6, 0.7]]
    agg = behaviour_aggregates(scores, threshold=0.5, seed=0)
    assert set(agg) == {"behaviour_mean", "behaviour_rate", "behaviour_expected_max", "behaviour_probability"}
    assert agg["behaviour_mean"]["value"] == pytest.approx(np.mean([0.5, 0.25, 0.65]))
    assert agg["behaviour_rate"]["value"] == pytest.approx(np.mean([0.5, 0.0, 1.0]))
    assert agg["behaviour_expected_max"]["value"] == pytest.approx(np.mean([0.9, 0.3, 0.7]))
    assert agg["behaviour_probability"]["value"] == pytest.approx(2 / 3)
    assert all(v["n"] == 3 for v in agg.values())
    json.dumps(agg, allow_nan=False)  # json-safe
    assert all(type(v[k]) is float for v in agg.values() for k in ("value", "ci_low", "ci_high"))
    single = behaviour_aggregates([[0.9], [0.1]])
    assert set(single) == {"behaviour_mean", "behaviour_rate"}
    assert behaviour_aggregates(scores, seed=4) == behaviour_aggregates(scores, seed=4)
    with pytest.raises(ConfigError):
        behaviour_aggregates([[0.1], []])
