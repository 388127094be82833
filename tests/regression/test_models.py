import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

from cxr_spurious.regression.features import mask_features
from cxr_spurious.regression.models import (
    feature_regressions,
    logistic_hit,
    minmax,
    mixed_effects,
    spearman_fisher,
)


def _table(n=40, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "image_id": [f"c{i // 2}" for i in range(n)],
            "task": ["Edema", "Cardiomegaly"] * (n // 2),
            "n_instances": rng.integers(1, 3, n).astype(float),
            "area_ratio": rng.random(n),
            "elongation": 1 + rng.random(n) * 3,
            "irrectangularity": rng.random(n),
        }
    )
    df["iou_tp"] = 0.2 + 0.5 * df["area_ratio"] + rng.normal(0, 0.05, n)
    df["hit"] = (rng.random(n) < 0.3 + 0.5 * df["area_ratio"]).astype(float)
    return df


def test_pooled_ols_matches_statsmodels_directly():
    df = _table()
    res = feature_regressions(df, ["iou_tp"], features=["area_ratio"])
    x = sm.add_constant(minmax(df["area_ratio"]))
    fit = sm.OLS(df["iou_tp"], x).fit()
    row = res.iloc[0]
    assert np.isclose(row.coef, fit.params["area_ratio"]) and np.isclose(
        row.coef_pval, fit.pvalues["area_ratio"]
    )
    assert np.allclose([row.coef_lo, row.coef_hi], fit.conf_int().loc["area_ratio"])
    rho = stats.spearmanr(df["iou_tp"], df["area_ratio"])[0]
    assert np.isclose(row["corr"], rho)


def test_cluster_robust_matches_statsmodels():
    """Cluster-robust errors with t(G - 1) quantiles (statsmodels' ``use_t=True``)."""
    df = _table()  # 20 CXRs
    res = feature_regressions(
        df, ["iou_tp"], features=["area_ratio"], cluster="image_id", min_clusters=20
    ).iloc[0]
    fit = sm.OLS(df["iou_tp"], sm.add_constant(minmax(df["area_ratio"]))).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(df["image_id"])[0]}, use_t=True
    )
    assert np.allclose([res.coef_lo, res.coef_hi], fit.conf_int().loc["area_ratio"])
    # by hand: t quantile with G - 1 = 19 degrees of freedom on the cluster-robust SE
    se, q = fit.bse["area_ratio"], stats.t.ppf(0.975, 19)
    assert np.allclose([res.coef_lo, res.coef_hi], [res.coef - q * se, res.coef + q * se])
    assert res.coef_pval == pytest.approx(2 * stats.t.sf(abs(res.coef / se), 19), rel=1e-10)
    assert (
        res.se_type == "cluster-robust (image_id)" and res.cluster == "image_id" and res.n_cxr == 20
    )


def test_few_clusters_use_ols_errors_and_are_never_flagged(caplog):
    import logging

    rng = np.random.default_rng(7)
    df = pd.DataFrame(
        {
            "image_id": ["a", "a", "b", "b"],
            "task": ["Edema", "Cardiomegaly"] * 2,
            "area_ratio": [0.15, 0.13, 0.02, 0.01],
        }
    )
    df["iou_tp"] = 0.1 + 2.0 * df["area_ratio"] + rng.normal(0, 0.01, 4)
    x = sm.add_constant(minmax(df["area_ratio"]))
    clustered = sm.OLS(df["iou_tp"], x).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(df["image_id"])[0]}
    )
    assert (
        clustered.pvalues["area_ratio"] < 0.05 / 4
    )  # what the old code reported as Bonferroni-significant
    with caplog.at_level(logging.DEBUG, logger="cxr_spurious.regression.models"):
        res = feature_regressions(df, ["iou_tp"], features=["area_ratio"], cluster="image_id").iloc[
            0
        ]
    ols = sm.OLS(df["iou_tp"], x).fit()
    assert np.allclose([res.coef_lo, res.coef_hi], ols.conf_int().loc["area_ratio"], rtol=1e-12)
    assert np.isclose(res.coef_pval, ols.pvalues["area_ratio"])
    assert res.se_type == "ols (2 image_id clusters < min_clusters 30)" and res.cluster == "none"
    assert not res.bonferroni_significant
    assert res.significance_note == "not flagged: 2 CXRs (4 observations) < min_clusters 30"
    assert "ordinary OLS errors, not cluster-robust" in caplog.text


def test_min_clusters_is_validated():
    import pytest

    from cxr_spurious.errors import ParameterError

    with pytest.raises(ParameterError, match="regression.min_clusters"):
        feature_regressions(_table(), ["iou_tp"], features=["area_ratio"], min_clusters=1)


def test_chexlocalize_env_reproduces_the_reference_ols_on_the_sample():
    """The shared 2-CXR sample: 4 positive (CXR, task) pairs, the reference's own segmentations."""
    from pathlib import Path

    import statsmodels.formula.api as smf

    from cxr_spurious.datasets.chexlocalize import CheXlocalizeJSONDataset
    from cxr_spurious.localization.metrics import segmentation_table
    from cxr_spurious.pipelines.regression import nodes

    root = Path(__file__).resolve().parents[2]
    sample = root / "tests" / "fixtures" / "chexlocalize_sample"
    gt = CheXlocalizeJSONDataset(str(sample / "gt_segmentations_val.json")).load()
    ann = CheXlocalizeJSONDataset(str(sample / "gt_annotations_val.json")).load()
    seg = CheXlocalizeJSONDataset(str(sample / "gradcam_segmentations_val_sample.json")).load()
    per_cxr = segmentation_table(seg, gt).assign(
        set="chexlocalize.gradcam", prob=np.nan, hit=np.nan
    )
    table = nodes.build_regression_table(
        per_cxr, nodes.compute_geometric_features(gt, ann), pd.DataFrame()
    )
    from cxr_spurious.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    loader = CONFIG_LOADER_CLASS(
        conf_source=str(root / "conf"),
        env="chexlocalize",
        runtime_params={"chexlocalize_dir": str(sample)},
        **CONFIG_LOADER_ARGS,
    )
    params = loader["parameters"]["regression"]
    res = nodes.regress_on_features(table, params["cluster_robust"], params["min_clusters"])
    row = res[
        (res["task"] == "pooled") & (res["outcome"] == "iou_tp") & (res["feature"] == "area_ratio")
    ].iloc[0]
    data = table.dropna(subset=["iou_tp", "area_ratio"]).assign(x=lambda d: minmax(d["area_ratio"]))
    fit = smf.ols("iou_tp ~ x", data=data).fit()  # the reference's call
    assert row.n == 4 and row.n_cxr == 2 and row.se_type == "ols"
    assert np.allclose(
        [row.coef, row.coef_lo, row.coef_hi],
        [fit.params["x"], *fit.conf_int().loc["x"]],
        rtol=1e-12,
    )
    assert (round(row.coef_lo, 3), round(row.coef_hi, 3)) == (0.225, 0.658)
    assert not row.bonferroni_significant and row.significance_note.startswith(
        "not flagged: 2 CXRs"
    )


def test_spearman_fisher_ci():
    y, x = np.arange(10.0), np.array([1, 3, 2, 5, 4, 7, 6, 9, 8, 10.0])
    rho, _, lo, hi = spearman_fisher(y, x)
    assert np.isclose(lo, np.tanh(np.arctanh(rho) - 1.96 / np.sqrt(7)))
    assert np.isclose(hi, np.tanh(np.arctanh(rho) + 1.96 / np.sqrt(7)))


def test_logistic_and_mixed_models_match_statsmodels():
    df = _table(60)
    out = logistic_hit(df, features=["area_ratio"])
    fit = sm.Logit(df["hit"], sm.add_constant(minmax(df["area_ratio"]))).fit(disp=0)
    assert np.isclose(out.iloc[0].coef, fit.params["area_ratio"])
    mixed = mixed_effects(df, "iou_tp", features=["area_ratio"])
    assert len(mixed) == 1 and mixed.iloc[0].coef_lo < mixed.iloc[0].coef < mixed.iloc[0].coef_hi
    # the same random-intercept model fitted by statsmodels directly, on min-max features
    ref = smf.mixedlm(
        "iou_tp ~ area_ratio", data=df.assign(area_ratio=minmax(df["area_ratio"])),
        groups=df["image_id"],
    ).fit()  # fmt: skip
    row = mixed.iloc[0]
    assert np.allclose(
        [row.coef, row.coef_lo, row.coef_hi],
        [ref.params["area_ratio"], *ref.conf_int().loc["area_ratio"]],
        rtol=1e-10,
    )
    assert row.p_value == pytest.approx(ref.pvalues["area_ratio"], rel=1e-10)


def test_mask_features_on_rectangle():
    mask = np.zeros((20, 30), np.uint8)
    mask[5:9, 2:22] = 1
    f = mask_features(mask)
    assert np.isclose(f["area_ratio"], 80 / 600)
    assert np.isclose(f["elongation"], 19 / 3)  # contour through pixel centres: 19 x 3
    assert abs(f["irrectangularity"]) < 1e-9
    assert np.isnan(mask_features(np.zeros((3, 3), np.uint8))["elongation"])


def test_human_gap_is_benchmark_minus_saliency_on_shared_pairs():
    from cxr_spurious.regression.models import with_human_gap

    table = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "task": ["Edema"] * 3,
            "iou_tp": [0.2, 0.5, 0.1],
            "hit": [0.0, 1.0, 1.0],
        }
    )
    human = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "task": ["Edema", "Edema"],
            "iou_tp": [0.6, 0.4],
            "hit": [1.0, 1.0],
        }
    )
    out = with_human_gap(table, human)
    assert np.allclose(out["iou_gap"].to_numpy()[:2], [0.4, -0.1]) and np.isnan(
        out["iou_gap"].iloc[2]
    )
    assert out["hit_gap"].tolist()[:2] == [1.0, 0.0] and np.isnan(out["hit_gap"].iloc[2])
    empty = with_human_gap(table, pd.DataFrame(columns=["image_id", "task", "iou_tp", "hit"]))
    assert empty["iou_gap"].isna().all() and len(empty) == 3


def test_human_gap_rejects_duplicate_benchmark_rows():
    import pytest

    from cxr_spurious.errors import ContractError
    from cxr_spurious.regression.models import with_human_gap

    table = pd.DataFrame({"image_id": ["a"], "task": ["Edema"], "iou_tp": [0.2], "hit": [0.0]})
    human = pd.DataFrame(
        {
            "image_id": ["a", "a"],
            "task": ["Edema", "Edema"],
            "iou_tp": [0.6, 0.5],
            "hit": [1.0, 1.0],
        }
    )
    with pytest.raises(
        ContractError, match=r"several rows for \(image_id, task\) \['a', 'Edema'\]"
    ):
        with_human_gap(table, human)


def test_gap_regression_matches_statsmodels_directly():
    from cxr_spurious.regression.models import with_human_gap

    df = _table(60, seed=3)
    rng = np.random.default_rng(4)
    human = df[["image_id", "task"]].assign(
        iou_tp=0.8 - 0.3 * df["area_ratio"] + rng.normal(0, 0.05, len(df)), hit=1.0
    )
    gap = with_human_gap(df, human)
    res = feature_regressions(gap, ["iou_gap"], features=["area_ratio"], cluster="image_id").iloc[0]
    y = human["iou_tp"] - df["iou_tp"]
    fit = sm.OLS(y, sm.add_constant(minmax(df["area_ratio"]))).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(df["image_id"])[0]}, use_t=True
    )
    assert np.isclose(res.coef, fit.params["area_ratio"]) and np.isclose(
        res.coef_pval, fit.pvalues["area_ratio"]
    )
    assert np.allclose([res.coef_lo, res.coef_hi], fit.conf_int().loc["area_ratio"])
    assert res.coef < 0  # the benchmark's advantage shrinks on larger findings in this table


def test_convergence_is_recorded_in_the_tables_not_warned():
    """Statsmodels' convergence warnings become ``converged`` / ``fit_warnings`` columns."""
    import warnings

    df = _table(60)
    separated = df.assign(hit=(df["area_ratio"] > 0.5).astype(float))  # perfect separation
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        good = logistic_hit(df, features=["area_ratio"])
        bad = logistic_hit(separated, features=["area_ratio"])
        # no random-intercept variance in this table: the MLE sits on the boundary
        mixed = mixed_effects(df, "iou_tp", features=["area_ratio"])
        ols = feature_regressions(df, ["iou_tp"], features=["area_ratio"])
    assert escaped == []
    assert good.iloc[0].converged and good.iloc[0].fit_warnings == ""
    assert not bad.iloc[0].converged
    assert bad.iloc[0].fit_warnings.startswith("ConvergenceWarning: ")
    assert not mixed.iloc[0].converged
    assert "ConvergenceWarning: The MLE may be on the boundary" in mixed.iloc[0].fit_warnings
    assert ols.iloc[0].fit_warnings == ""


def test_fit_joint_models_keeps_the_convergence_columns():
    from cxr_spurious.pipelines.regression.nodes import fit_joint_models

    out = fit_joint_models(_table(60).assign(set="m"))
    assert {"converged", "fit_warnings"} <= set(out.columns)
    assert set(out["model"]) == {"logit", "mixedlm:iou_tp"}
    assert out.loc[out["model"] == "logit", "converged"].all()
    empty = fit_joint_models(_table(60).iloc[:0].assign(set="m"))
    assert {"converged", "fit_warnings"} <= set(empty.columns) and empty.empty


def test_a_feature_with_one_value_keeps_its_place_in_the_bonferroni_family():
    """k is the features the study tests (the reference's bonferroni_correction=4): a
    feature that cannot be fitted (one polygon per lesion: n_instances is 1 everywhere) gets
    a row saying so and still counts, and the forest plot's legend states the k the flag
    used."""
    from cxr_spurious.pipelines.regression.nodes import plot_forest
    from cxr_spurious.regression.models import FEATURES

    df = _table(n=80, seed=3).assign(n_instances=1.0)
    rng = np.random.default_rng(0)
    # an outcome whose area_ratio p-value lies between 0.05/4 and 0.05/3
    for _ in range(2000):
        df["iou_tp"] = 0.3 + 0.08 * df["area_ratio"] + rng.normal(0, 0.1, len(df))
        p = sm.OLS(df["iou_tp"], sm.add_constant(minmax(df["area_ratio"]))).fit().pvalues
        if 0.05 / 4 < p["area_ratio"] < 0.05 / 3:
            break
    else:
        raise AssertionError("no draw with 0.05/4 < p < 0.05/3")
    res = feature_regressions(df, ["iou_tp"], min_clusters=20).set_index("feature")
    assert list(res.index) == list(FEATURES) and (res["bonferroni_k"] == 4).all()
    skipped = res.loc["n_instances"]
    assert np.isnan(skipped["coef"]) and not skipped["bonferroni_significant"]
    assert (
        skipped["significance_note"]
        == "not fitted: the feature takes one value on all 80 observations"
    )
    assert res.loc["area_ratio", "coef_pval"] > 0.05 / 4
    assert not res.loc["area_ratio", "bonferroni_significant"]  # 0.05/3 would have flagged it
    fig = plot_forest(res.reset_index().assign(set="s"))
    try:
        assert "p < 0.05/4" in fig.legends[0].get_texts()[0].get_text()
        assert len(fig.axes[0].get_yticklabels()) == 3  # the unfitted feature is not drawn
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_lesions_without_annotated_instances_are_left_out_as_the_reference_does(caplog):
    """The reference's regression_pathology_features.py keeps ``df[df.n_instance > 0]``."""
    import logging

    from cxr_spurious.pipelines.regression.nodes import build_regression_table

    df = _table(n=40, seed=5)
    df.loc[[3, 7, 11], "n_instances"] = 0
    per_cxr = df[["image_id", "task", "iou_tp", "hit"]].assign(
        set="s", prob=0.5, iou_full=df["iou_tp"]
    )
    features = df[
        ["image_id", "task", "n_instances", "area_ratio", "elongation", "irrectangularity"]
    ]
    with caplog.at_level(logging.INFO, logger="cxr_spurious.regression.models"):
        table = build_regression_table(per_cxr, features, pd.DataFrame())
    assert len(table) == 37 and (table["n_instances"] > 0).all()
    assert "3 lesion(s) without an annotated instance" in caplog.text
    reference = df[df["n_instances"] > 0]
    fit = sm.OLS(reference["iou_tp"], sm.add_constant(minmax(reference["area_ratio"]))).fit()
    row = feature_regressions(table, ["iou_tp"], features=["area_ratio"]).iloc[0]
    assert np.isclose(row["coef"], fit.params["area_ratio"])
