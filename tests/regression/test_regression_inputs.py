"""What ``feature_regressions``, ``with_human_gap``, ``spearman_fisher`` and the geometric
features take as input: no row, outcome or score dropped without a word."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

from cxr_spurious.errors import ContractError
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.regression.features import geometric_features, mask_features
from cxr_spurious.regression.models import (
    feature_regressions,
    minmax,
    ols_single,
    spearman_fisher,
    with_human_gap,
)


def test_rows_without_patient_id_are_kept() -> None:
    rng = np.random.default_rng(1)
    n = 60
    df = pd.DataFrame(
        {"image_id": [f"c{i}" for i in range(n)], "task": "Edema", "area_ratio": rng.random(n)}
    )
    df["iou_tp"] = 0.2 + 0.5 * df["area_ratio"] + rng.normal(0, 0.1, n)
    df["patient_id"] = [f"p{i}" if i % 3 else None for i in range(n)]  # a third unknown
    row = feature_regressions(df, ["iou_tp"], ["area_ratio"]).iloc[0]
    fit = sm.OLS(df["iou_tp"], sm.add_constant(minmax(df["area_ratio"]))).fit()
    assert row.n == n  # the old code dropped the 20 rows without patient_id: n 40
    assert row.coef == pytest.approx(fit.params["area_ratio"], rel=1e-10)


def _sites(n: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "image_id": [f"c{i}" for i in range(n)],
            "task": "Edema",
            "site": [f"s{i % 40}" for i in range(n)],
            "area_ratio": rng.random(n),
        }
    )
    df["iou_tp"] = df["area_ratio"] + rng.normal(0, 0.1, n)
    return df


def test_any_cluster_column_of_the_table_can_be_used() -> None:
    df = _sites()
    # the old code raised KeyError: "['site'] not in index"
    row = feature_regressions(df, ["iou_tp"], ["area_ratio"], cluster="site").iloc[0]
    fit = smf.ols("iou_tp ~ area_ratio", df.assign(area_ratio=minmax(df["area_ratio"]))).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(df["site"])[0]}, use_t=True
    )
    assert row.se_type == "cluster-robust (site)" and row.cluster == "site"
    assert np.allclose([row.coef_lo, row.coef_hi], fit.conf_int().loc["area_ratio"])
    # a row without a cluster label cannot be clustered: it is left out, and n says so
    gapped = df.assign(site=df["site"].where(df.index % 8 != 0))
    assert feature_regressions(gapped, ["iou_tp"], ["area_ratio"], cluster="site").iloc[0].n == 70


def test_a_cluster_column_that_is_not_there_is_named() -> None:
    with pytest.raises(ContractError, match=r"cluster column 'hospital' is not in the table"):
        feature_regressions(_sites(), ["iou_tp"], ["area_ratio"], cluster="hospital")


def test_cluster_robust_inference_uses_t_with_clusters_minus_one_df() -> None:
    """The auditor's r13 data: G = 30 clusters, a borderline slope."""
    rng = np.random.default_rng(2)
    g = 30
    df = pd.DataFrame(
        {"image_id": np.repeat([f"c{i}" for i in range(g)], 3), "x": rng.random(3 * g)}
    )
    df["y"] = 0.15 * df["x"] + np.repeat(rng.normal(0, 0.1, g), 3) + rng.normal(0, 0.1, 3 * g)
    res = ols_single(df, "y", "x", cluster="image_id", min_clusters=30)
    normal = smf.ols("y ~ x", df).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(df["image_id"])[0]}
    )
    se = normal.bse["x"]  # the same cluster-robust SE; only the quantiles differ
    q = stats.t.ppf(0.975, g - 1)
    assert res["coef_lo"] == pytest.approx(res["coef"] - q * se, rel=1e-10)
    assert res["coef_hi"] == pytest.approx(res["coef"] + q * se, rel=1e-10)
    assert res["coef_pval"] == pytest.approx(2 * stats.t.sf(abs(res["coef"]) / se, g - 1))
    # normal quantiles (the old code) call this slope significant; t(29) does not
    assert normal.pvalues["x"] < 0.05 < res["coef_pval"]
    assert res["coef_lo"] < 0 < normal.conf_int().loc["x", 0]


def test_unreadable_benchmark_scores_are_an_error_naming_the_first() -> None:
    table = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "task": "Edema", "iou_tp": [0.2, 0.5, 0.1], "hit": 1.0}
    )
    human = table[["image_id", "task"]].assign(iou_tp=["0.6", "0,4", "x"], hit=[1.0, 0.0, 1.0])
    # the old code turned '0,4' and 'x' into NaN and the gap outcomes vanished
    with pytest.raises(
        ContractError,
        match=r"2 'iou_tp' value\(s\) are not numbers, e\.g\. \(image_id, task, iou_tp\) = "
        r"\('b', 'Edema', '0,4'\)",
    ):
        with_human_gap(table, human)
    with pytest.raises(ContractError, match=r"'hit' value\(s\) .* \('a', 'Edema', 'yes'\)"):
        with_human_gap(table, human.assign(iou_tp=0.5, hit=["yes", 1, 0]))


def test_missing_benchmark_scores_stay_missing() -> None:
    table = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "task": "Edema", "iou_tp": [0.2, 0.5, 0.1], "hit": 1.0}
    )
    human = table[["image_id", "task"]].assign(
        iou_tp=pd.Series(["0.6", None, " "], dtype=object), hit=[1.0, np.nan, "nan"]
    )
    out = with_human_gap(table, human)
    assert out["iou_gap"].iloc[0] == pytest.approx(0.4)
    assert out["iou_gap"].iloc[1:].isna().all() and out["hit_gap"].iloc[1:].isna().all()


def test_spearman_fisher_counts_only_rows_where_both_are_finite() -> None:
    rng = np.random.default_rng(0)
    x = rng.random(10)
    y = x + rng.normal(0, 0.3, 10)
    y_nan = np.r_[y, np.full(30, np.nan)]
    x_nan = np.r_[x, rng.random(30)]
    rho, p, lo, hi = spearman_fisher(y_nan, x_nan)
    ref_rho, ref_p = stats.spearmanr(y, x)
    d = 1.96 / math.sqrt(10 - 3)  # n = 10, not 40 (the old code's CI: 0.641 to 0.886)
    assert rho == pytest.approx(ref_rho) and p == pytest.approx(ref_p)
    assert (lo, hi) == pytest.approx(
        (math.tanh(math.atanh(rho) - d), math.tanh(math.atanh(rho) + d))
    )
    assert spearman_fisher(np.r_[y, np.inf], np.r_[x, 0.5]) == pytest.approx((rho, p, lo, hi))


def test_masks_one_pixel_wide_are_counted_in_a_warning(caplog) -> None:
    line = np.zeros((50, 50), np.uint8)
    line[10, 5:45] = 1
    diagonal = np.zeros((50, 50), np.uint8)
    np.fill_diagonal(diagonal[5:45, 5:45], 1)
    dot = np.zeros((50, 50), np.uint8)
    dot[20, 20] = 1
    block = np.zeros((50, 50), np.uint8)
    block[5:15, 5:25] = 1
    for m in (line, diagonal, dot):
        f = mask_features(m)
        assert f["area_ratio"] > 0 and np.isnan(f["elongation"]) and np.isnan(f["irrectangularity"])
    masks = {"a": line, "b": diagonal, "c": dot, "d": block}
    segs = {k: {"Edema": encode_rle(m)} for k, m in masks.items()}
    ann = {k: {"Edema": [[[0, 0], [1, 0], [1, 1]]]} for k in masks}
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.regression.features"):
        out = geometric_features(segs, ann)
    assert len(out) == 4 and out["elongation"].isna().sum() == 3
    [record] = caplog.records
    assert record.getMessage().startswith(
        "3 non-empty ground-truth mask(s) are one pixel wide (a line or a single pixel)"
    )
    assert record.getMessage().endswith("e.g. a/Edema, b/Edema, c/Edema")
