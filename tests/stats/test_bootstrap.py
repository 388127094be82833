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
    _, p_same = paired_bootstrap(
        lambda i: a[i].mean(), lambda i: a[i].mean() + 0 * b[i].mean(), 300, n_boot=200, seed=0
    )
    assert p_same == 1.0


def test_percentile_ci_leaves_out_few_nan_and_validates_level() -> None:
    nan_pair = percentile_ci(np.array([np.nan, np.nan]), max_dropped_share=None)
    assert nan_pair == (pytest.approx(np.nan, nan_ok=True), pytest.approx(np.nan, nan_ok=True))
    lo, hi = percentile_ci(np.array([np.nan, *range(101)]))  # 1 of 102 undefined: under 5 %
    assert (lo, hi) == (pytest.approx(2.5), pytest.approx(97.5))
    with pytest.raises(ParameterError, match="ci_level"):
        percentile_ci(np.arange(5.0), level=1.5)
    with pytest.raises(ParameterError, match="max_dropped_share"):
        percentile_ci(np.arange(5.0), max_dropped_share=1.5)


def test_percentile_ci_fails_loudly_above_the_dropped_share() -> None:
    from cxr_spurious.stats.bootstrap import BootstrapDropError

    reps = np.r_[np.full(6, np.nan), np.arange(94.0)]  # 6 % undefined
    with pytest.raises(
        BootstrapDropError,
        match=r"auroc M: 6 of 100 bootstrap replicates are undefined \(NaN\), "
        r"6.0% > max_dropped_share 5.0%",
    ):
        percentile_ci(reps, label="auroc M")
    assert percentile_ci(reps, max_dropped_share=0.06) == (
        pytest.approx(np.quantile(np.arange(94.0), 0.025)),
        pytest.approx(np.quantile(np.arange(94.0), 0.975)),
    )
    with pytest.raises(BootstrapDropError):
        percentile_ci(np.full(10, np.nan))  # all undefined is an error unless the caller opts out


def test_bootstrap_counts_dropped_and_skips_the_check_for_an_undefined_estimate() -> None:
    from cxr_spurious.stats.bootstrap import BootstrapDropError

    y = np.r_[np.ones(3), np.zeros(37)]
    share_pos = lambda i: float(y[i].mean()) if y[i].any() else np.nan  # noqa: E731 - undefined without a positive
    res = bootstrap(share_pos, 40, n_boot=500, seed=0, max_dropped_share=0.5)
    expected = sum(not y[i].any() for i in bootstrap_indices(40, 500, seed=0))
    assert res.n_dropped == expected > 0  # (37/40)^40 = 4 % of the replicates
    with pytest.raises(BootstrapDropError, match=f"share: {expected} of 500"):
        bootstrap(share_pos, 40, n_boot=500, seed=0, max_dropped_share=0.001, desc="share")
    import logging

    from cxr_spurious.stats import bootstrap as module

    records = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    module.logger.addHandler(handler)
    y2 = np.r_[np.ones(2), np.zeros(38)]  # (38/40)^40 = 13 % of the replicates draw no positive
    rare = lambda i: float(y2[i].mean()) if y2[i].any() else np.nan  # noqa: E731
    try:
        res2 = bootstrap(
            rare, 40, n_boot=500, seed=0, desc="legacy caller"
        )  # no limit given: a warning, not silence
    finally:
        module.logger.removeHandler(handler)
    assert res2.n_dropped > 25
    assert [r.getMessage() for r in records] == [
        f"legacy caller: {res2.n_dropped} of 500 bootstrap replicates are undefined (NaN) "
        "and left out of the CI (> 5%)"
    ]
    none = bootstrap(lambda i: np.nan, 10, n_boot=20, seed=0)
    assert np.isnan(none.estimate) and np.isnan(none.lo) and none.n_dropped == 20


def test_nanmean_cis_equal_a_slow_patient_loop() -> None:
    from cxr_spurious.stats.bootstrap import nanmean_cis

    rng = np.random.default_rng(9)
    patients = np.array([f"p{k}" for k in rng.integers(0, 15, 70)])
    values = rng.normal(size=70)
    values[rng.random(70) < 0.3] = np.nan
    res = nanmean_cis({"v": values}, patients, n_boot=250, seed=6)["v"]
    # slow reference: draw patients (sorted labels) with the same generator, take all their rows
    gen = np.random.default_rng(6)
    labels = sorted(set(patients))
    reps = []
    for _ in range(250):
        picked = gen.integers(0, len(labels), size=len(labels))
        drawn = np.concatenate([values[patients == labels[k]] for k in picked])
        reps.append(np.nanmean(drawn) if np.isfinite(drawn).any() else np.nan)
    reps = np.array(reps)
    np.testing.assert_allclose(res.replicates, reps, rtol=1e-12)
    assert res.lo == pytest.approx(np.quantile(reps[np.isfinite(reps)], 0.025), abs=1e-12)
    assert res.hi == pytest.approx(np.quantile(reps[np.isfinite(reps)], 0.975), abs=1e-12)
    assert res.estimate == pytest.approx(np.nanmean(values))


def test_auroc_variants() -> None:
    y = np.array([1, 1, 0, 0, 1, 0, np.nan])
    tube = np.array([1, 0, 1, 0, 0, 0, 1])
    score = np.array([0.9, 0.2, 0.8, 0.1, 0.3, 0.4, 0.5])
    assert auroc(y, score) == pytest.approx(5 / 9)  # 5 of 9 positive/negative pairs ordered right
    # robust: positives without tube (idx 1, 4) vs negatives with tube (idx 2):
    # 0 of 2 pairs ranked right
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
    expected = [
        np.nanmean(values[i]) for i in bootstrap_indices(60, 100, seed=4, clusters=clusters)
    ]
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
