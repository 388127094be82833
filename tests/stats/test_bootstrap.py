"""The shared bootstrap: determinism, coverage, clustering, paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.stats.bootstrap import (
    bootstrap,
    bootstrap_indices,
    paired_bootstrap,
    percentile_ci,
)
from cxr_spurious.stats.metrics import auroc, reverse_auroc, robust_auroc


def test_same_seed_same_numbers_and_different_seed_differs() -> None:
    values = np.random.default_rng(0).normal(size=200)
    a = bootstrap(lambda i: values[i].mean(), len(values), n_boot=200, seed=7)
    b = bootstrap(lambda i: values[i].mean(), len(values), n_boot=200, seed=7)
    c = bootstrap(lambda i: values[i].mean(), len(values), n_boot=200, seed=8)
    np.testing.assert_array_equal(a.replicates, b.replicates)
    assert not np.array_equal(a.replicates, c.replicates)


def test_mean_ci_matches_normal_theory() -> None:
    values = np.random.default_rng(1).normal(loc=2.0, scale=1.0, size=400)
    res = bootstrap(lambda i: values[i].mean(), len(values), n_boot=2000, seed=0)
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert res.estimate == pytest.approx(values.mean())
    assert res.lo == pytest.approx(values.mean() - 1.96 * se, abs=0.25 * se)
    assert res.hi == pytest.approx(values.mean() + 1.96 * se, abs=0.25 * se)


def test_cluster_bootstrap_keeps_clusters_whole() -> None:
    clusters = np.repeat(np.arange(10), 3)
    for idx in bootstrap_indices(30, 20, seed=0, clusters=clusters):
        assert len(idx) == 30
        picked = clusters[idx]
        for c in np.unique(picked):
            assert (picked == c).sum() % 3 == 0


def test_cluster_bootstrap_is_wider_for_correlated_rows() -> None:
    rng = np.random.default_rng(2)
    cluster_means = rng.normal(size=40)
    clusters = np.repeat(np.arange(40), 10)
    values = cluster_means[clusters] + 0.1 * rng.normal(size=400)
    rows = bootstrap(lambda i: values[i].mean(), 400, n_boot=500, seed=0)
    clustered = bootstrap(lambda i: values[i].mean(), 400, n_boot=500, seed=0, clusters=clusters)
    assert (clustered.hi - clustered.lo) > 2 * (rows.hi - rows.lo)


def test_paired_bootstrap_detects_a_real_difference() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 1.0, 300)
    b = a - 0.5 + 0.1 * rng.normal(size=300)
    res, p = paired_bootstrap(lambda i: a[i].mean(), lambda i: b[i].mean(), 300, n_boot=500, seed=0)
    assert res.lo > 0.4 and res.hi < 0.6 and p < 0.01
    _, p_same = paired_bootstrap(lambda i: a[i].mean(), lambda i: a[i].mean() + 0 * b[i].mean(), 300, n_boot=200, seed=0)
    assert p_same == 1.0


def test_percentile_ci_ignores_nan_and_validates_level() -> None:
    assert percentile_ci(np.array([np.nan, np.nan])) == (pytest.approx(np.nan, nan_ok=True), pytest.approx(np.nan, nan_ok=True))
    lo, hi = percentile_ci(np.array([np.nan, *range(101)]))
    assert (lo, hi) == (pytest.approx(2.5), pytest.approx(97.5))
    with pytest.raises(ParameterError, match="ci_level"):
        percentile_ci(np.arange(5.0), level=1.5)


def test_auroc_variants() -> None:
    y = np.array([1, 1, 0, 0, 1, 0, np.nan])
    tube = np.array([1, 0, 1, 0, 0, 0, 1])
    score = np.array([0.9, 0.2, 0.8, 0.1, 0.3, 0.4, 0.5])
    assert auroc(y, score) == pytest.approx(5 / 9)  # 5 of 9 positive/negative pairs ordered right
    # robust: positives without tube (idx 1, 4) vs negatives with tube (idx 2): 0 of 2 pairs ranked right
    assert robust_auroc(y, score, tube) == pytest.approx(0.0)
    # reverse: positives with tube (0) vs negatives without (3, 5): both right
    assert reverse_auroc(y, score, tube) == pytest.approx(1.0)
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_count_matrix_replicates_equal_the_index_replicates() -> None:
    from cxr_spurious.stats.bootstrap import bootstrap_count_matrix, replicate_nanmeans

    rng = np.random.default_rng(5)
    values = rng.normal(size=60)
    values[::7] = np.nan
    clusters = np.repeat(np.arange(20), 3)
    counts = bootstrap_count_matrix(60, 100, seed=4, clusters=clusters)
    expected = [np.nanmean(values[i]) for i in bootstrap_indices(60, 100, seed=4, clusters=clusters)]
    np.testing.assert_allclose(replicate_nanmeans(counts, values), expected, rtol=1e-12)


def test_cluster_indices_are_the_picked_clusters_in_order() -> None:
    clusters = np.array(["b", "a", "b", "c", "a", "b"])
    rng = np.random.default_rng(11)
    picked = rng.integers(0, 3, size=3)  # what bootstrap_indices draws first with seed 11
    members = {0: [1, 4], 1: [0, 2, 5], 2: [3]}  # a, b, c
    expected = np.concatenate([members[int(k)] for k in picked])
    np.testing.assert_array_equal(bootstrap_indices(6, 1, seed=11, clusters=clusters)[0], expected)


def test_auroc_equals_scikit_learn_with_ties_and_nans() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(8)
    for _ in range(20):
        y = rng.integers(0, 2, 80).astype(float)
        s = np.round(rng.normal(size=80) + y, 1)  # rounding creates ties
        y[rng.integers(0, 80, 5)] = np.nan
        keep = np.isfinite(y)
        assert auroc(y, s) == pytest.approx(roc_auc_score(y[keep], s[keep]), abs=1e-12)
