"""The robustness nodes: hidden strata do not follow the manifest's row order, and the model
summary carries each gap's test of "no gap" beside its interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tests.robustness.robust_fixtures import TASK

from cxr_spurious.pipelines.robustness import nodes


def _strata_inputs() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """400 test images, a weakly separated hidden subgroup among positives (32 dims)."""
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.5).astype(float)
    hidden = rng.random(n) < 0.3
    x = rng.normal(size=(n, 32))
    x[:, 0] += 1.2 * hidden
    x[:, 1] += 1.0 * (rng.random(n) < 0.5)
    p = np.clip(np.where(y == 1, np.where(hidden, 0.45, 0.65), 0.35) + rng.normal(0, 0.15, n), 0, 1)
    ids = [f"img{k:04d}" for k in range(n)]
    table = pd.DataFrame(
        {"image_id": ids, "split": "test", TASK: y, f"p_{TASK}": p, "tube": y, "site": "a"}
    )
    emb = pd.DataFrame({"image_id": ids, **{f"e{j}": x[:, j] for j in range(32)}})
    return table, emb, pd.DataFrame({"task": [TASK], "threshold": [0.5]})


def test_hidden_strata_do_not_depend_on_the_manifest_order() -> None:
    table, emb, ops = _strata_inputs()
    strata = {"k": [2, 3, 4, 5], "seed": 0}
    assign, clusters, _ = nodes.find_hidden_strata(table, emb, ops, strata, ["site"])
    shuffled = table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again, clusters_again, _ = nodes.find_hidden_strata(shuffled, emb, ops, strata, ["site"])
    by_id = assign.set_index("image_id").sort_index()
    pd.testing.assert_frame_equal(again.set_index("image_id").sort_index(), by_id)
    pd.testing.assert_frame_equal(clusters_again, clusters)


def test_summary_has_the_gap_tests_beside_the_intervals() -> None:
    sub = pd.DataFrame(
        [
            {"task": TASK, "metric": m, "attribute": a, "group": "all", "estimate": 0.8,
             "lo": 0.7, "hi": 0.9}
            for m, a in (("auroc", "all"), ("worst_group_auroc", "site"), ("robust_auroc", "tube"))
        ]
    )  # fmt: skip
    gaps = pd.DataFrame(
        [
            {"task": TASK, "attribute": "site", "metric": m, "estimate": v, "lo": v - 0.1,
             "hi": v + 0.1, "p_no_gap": pv}
            for m, v, pv in (("fnr_gap", 0.3, 0.41), ("equalized_odds_difference", 0.35, 0.02))
        ]
    )  # fmt: skip
    row = nodes.summarise_model(sub, gaps, ["site"], "site", ["site", "tube"]).iloc[0]
    assert row["fnr_gap_p_no_gap"] == 0.41 and row["equalized_odds_difference_p_no_gap"] == 0.02
    cols = list(row.index)
    for gap in ("fnr_gap", "equalized_odds_difference"):
        assert cols[cols.index(f"{gap}_hi") + 1] == f"{gap}_p_no_gap"
    # a gaps table written before the test existed: NaN, not an error
    old = nodes.summarise_model(
        sub, gaps.drop(columns="p_no_gap"), ["site"], "site", ["site", "tube"]
    ).iloc[0]
    assert np.isnan(old["fnr_gap_p_no_gap"]) and old["fnr_gap"] == 0.3


def _fairness_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """600 test images of 300 patients; sites and sexes each with both classes."""
    rng = np.random.default_rng(5)
    n = 600
    y = (rng.random(n) < 0.5).astype(float)
    site = rng.choice(["A", "B", "C"], n)
    sex = rng.choice(["F", "M"], n)
    p = np.clip(0.5 * y + 0.25 + rng.normal(0, 0.2, n) - 0.15 * (site == "C") * y, 0, 1)
    table = pd.DataFrame(
        {
            "image_id": [f"img{k:04d}" for k in range(n)],
            "patient_id": [f"p{k // 2:03d}" for k in range(n)],
            "split": "test",
            TASK: y,
            f"p_{TASK}": p,
            "site": site,
            "sex": sex,
        }
    )
    return table, pd.DataFrame({"task": [TASK], "threshold": [0.5]})


def test_the_gap_tests_are_adjusted_for_the_attributes_tested() -> None:
    """``p_no_gap_adj``: Holm over the attributes, per gap metric and task (statsmodels'
    ``multipletests`` is the reference); ``method: none`` leaves the p-values as they are."""
    from statsmodels.stats.multitest import multipletests

    table, ops = _fairness_inputs()
    args = dict(min_per_class=5, n_boot=200, seed=0, ci_level=0.95)
    _, gaps = nodes.compute_fairness(table, ops, ["site", "sex"], **args)
    cols = list(gaps.columns)
    assert cols.index("p_no_gap_adj") == cols.index("p_no_gap") + 1
    for _, family in gaps.groupby(["task", "metric"]):
        assert sorted(family["attribute"]) == ["sex", "site"]
        expected = multipletests(family["p_no_gap"].to_numpy(), method="holm")[1]
        np.testing.assert_allclose(family["p_no_gap_adj"].to_numpy(), expected)
    assert (gaps["p_no_gap_adj"] >= gaps["p_no_gap"]).all()
    assert (gaps["p_no_gap_adj"] > gaps["p_no_gap"]).any()
    assert gaps["p_adj_note"].iloc[0].startswith("p_no_gap_adj: Holm (family-wise error)")
    _, plain = nodes.compute_fairness(
        table, ops, ["site", "sex"], **args, multiplicity={"method": "none"}
    )
    np.testing.assert_array_equal(plain["p_no_gap_adj"], plain["p_no_gap"])


def test_an_unknown_multiplicity_method_is_refused_naming_the_key() -> None:
    import pytest

    from cxr_spurious.errors import ParameterError

    table, ops = _fairness_inputs()
    with pytest.raises(ParameterError, match=r"robustness\.multiplicity\.method"):
        nodes.compute_fairness(
            table, ops, ["site"], 5, 20, 0, 0.95, multiplicity={"method": "holmes"}
        )
