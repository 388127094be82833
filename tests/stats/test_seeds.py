"""Across-seed statistics against scipy: the t interval (cut to the metric's range) and the
paired t-test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxr_spurious.errors import ContractError
from cxr_spurious.stats.seeds import (
    difference_range,
    metric_range,
    paired_difference,
    paired_over_seeds,
    paired_p,
    summarise_over_seeds,
    t_interval,
)


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


def test_intervals_are_cut_to_the_metric_range_and_keep_scipy_inside_it() -> None:
    """AUROCs near 1 on a few seeds: the plain t interval reaches past 1 (scipy's), the
    project's stops at 1; the lower bound and the mean stay scipy's."""
    values = np.array([0.99, 0.97, 0.72, 1.0, 0.98])
    ref_lo, ref_hi = stats.t.interval(0.95, 4, loc=values.mean(), scale=stats.sem(values))
    assert ref_hi > 1  # the case being fixed
    mean, lo, hi = t_interval(values, 0.95, bounds=metric_range("robust_auroc"))
    assert np.isclose(mean, values.mean()) and np.isclose(lo, ref_lo) and hi == 1.0
    # near 0 from below, e.g. a robust AUROC that collapsed on most seeds
    low = np.array([0.0, 0.01, 0.0, 0.09, 0.0])
    ref_lo, ref_hi = stats.t.interval(0.95, 4, loc=low.mean(), scale=stats.sem(low))
    assert ref_lo < 0
    _, lo, hi = t_interval(low, 0.95, bounds=metric_range("auroc"))
    assert lo == 0.0 and np.isclose(hi, ref_hi)
    # a paired difference of two [0, 1] metrics lies in [-1, 1]
    assert difference_range("worst_group_auroc") == (-1.0, 1.0)
    d = np.array([0.98, 0.99, 0.7])
    _, lo, hi, p = paired_difference(d, 0.95, bounds=difference_range("auroc"))
    assert hi == 1.0 and np.isclose(p, stats.ttest_1samp(d, 0).pvalue)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("auroc", (0.0, 1.0)),
        ("gradcam_artefact_auroc", (0.0, 1.0)),
        ("robust_tube_auroc", (0.0, 1.0)),
        ("gradcam_hit_rate", (0.0, 1.0)),
        ("occlusion_miou", (0.0, 1.0)),
        ("gradcam_artefact_mass", (0.0, 1.0)),
        ("fnr_gap", (0.0, 1.0)),
        ("equalized_odds_difference", (0.0, 1.0)),
        ("artefact_reliance", (-1.0, 1.0)),
        ("lesion_reliance", (-1.0, 1.0)),
        ("artefact_rise", (-1.0, 1.0)),
        ("expected_calibration_slope", None),  # unknown: the plain interval
    ],
)
def test_metric_ranges(name: str, expected: tuple[float, float] | None) -> None:
    assert metric_range(name) == expected


def test_a_value_outside_its_range_is_refused_by_name() -> None:
    with pytest.raises(ContractError, match=r"headline: auroc: value 1\.2 lies outside .*\[0, 1\]"):
        t_interval(np.array([0.9, 1.2]), bounds=(0.0, 1.0), name="headline: auroc")
    # float round-off at the edge is not an error
    assert t_interval(np.array([1.0 + 1e-12, 1.0]), bounds=(0.0, 1.0))[2] == 1.0


def test_summaries_cut_each_metric_to_its_range() -> None:
    per_seed = pd.DataFrame(
        {
            "variant": ["erm"] * 3 + ["seg"] * 3,
            "seed": [0, 1, 2] * 2,
            "auroc": [0.2, 0.0, 0.01, 0.99, 0.7, 1.0],
            "score": [5.0, -3.0, 1.0, 0.0, 1.0, 2.0],  # no known range: plain interval
        }
    )
    summary = summarise_over_seeds(per_seed, ["variant"], ["auroc", "score"]).set_index("variant")
    assert summary.loc["erm", "auroc_lo"] == 0.0 and summary.loc["seg", "auroc_hi"] == 1.0
    erm_scores = per_seed.loc[per_seed["variant"] == "erm", "score"]
    ref = stats.t.interval(0.95, 2, loc=erm_scores.mean(), scale=stats.sem(erm_scores))
    assert np.allclose(summary.loc["erm", ["score_lo", "score_hi"]].to_numpy(float), ref)
    paired = paired_over_seeds(per_seed, "variant", "erm", [], ["auroc"])
    assert paired["auroc_hi"].iloc[0] <= 1.0 and paired["auroc_lo"].iloc[0] >= -1.0
