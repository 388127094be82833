"""Across-seed statistics against scipy: the t interval and the paired t-test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cxr_spurious.stats.seeds import paired_difference, paired_p, t_interval


@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("level", [0.9, 0.95])
def test_t_interval_and_paired_test_equal_scipy(n: int, level: float) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        a, b = rng.normal(0.7, 0.05, n), rng.normal(0.65, 0.05, n)
        mean, lo, hi = t_interval(a, level)
        ref_lo, ref_hi = stats.t.interval(level, n - 1, loc=a.mean(), scale=stats.sem(a))
        assert np.isclose(mean, a.mean()) and np.isclose(lo, ref_lo) and np.isclose(hi, ref_hi)
        d_mean, _, _, p = paired_difference(a - b, level)
        assert np.isclose(d_mean, (a - b).mean())
        assert np.isclose(p, stats.ttest_rel(a, b).pvalue)


def test_degenerate_differences_follow_scipy() -> None:
    """No spread: all-zero differences have no p-value; one non-zero value repeated (a metric
    saturated on both sides, e.g. 1.0 against 0.0 on every seed) has p = 0, as in scipy."""
    saturated_a, saturated_b = np.ones(3), np.zeros(3)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert stats.ttest_rel(saturated_a, saturated_b).pvalue == 0.0
        assert np.isnan(stats.ttest_rel(saturated_a, saturated_a).pvalue)
    assert paired_p(saturated_a - saturated_b) == 0.0
    assert np.isnan(paired_p(saturated_a - saturated_a))
    assert np.isnan(paired_p(np.array([0.3])))  # one seed: no test
    assert np.isnan(paired_p(np.array([0.3, np.nan])))  # NaN differences are left out
