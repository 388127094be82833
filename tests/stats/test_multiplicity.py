"""Multiplicity adjustment against statsmodels' ``multipletests`` (the reference)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.stats.multiplicity import (
    METHODS,
    adjust_p,
    adjust_table,
    family_note,
)

REFERENCE_METHODS = [m for m in METHODS if m != "none"]


@pytest.mark.parametrize("method", REFERENCE_METHODS)
@pytest.mark.parametrize("seed", range(5))
def test_adjust_p_equals_statsmodels(method: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.05, 6), rng.uniform(0, 1, 30)])
    p[rng.integers(0, p.size, 4)] = p[0]  # ties
    rng.shuffle(p)
    expected = multipletests(p, method=method)[1]
    np.testing.assert_allclose(adjust_p(p, method), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", REFERENCE_METHODS)
def test_nan_p_values_stay_nan_and_do_not_count(method: str) -> None:
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan])
    out = adjust_p(p, method)
    assert np.isnan(out[[1, 4]]).all()
    finite = [0, 2, 3]
    np.testing.assert_allclose(out[finite], multipletests(p[finite], method=method)[1])


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.02, 0.04 -> 3*0.01, max(2*0.02, 0.03), max(1*0.04, 0.04)
    np.testing.assert_allclose(adjust_p([0.04, 0.01, 0.02], "holm"), [0.04, 0.03, 0.04])


def test_none_keeps_the_values_and_empty_families_are_all_nan() -> None:
    np.testing.assert_array_equal(adjust_p([0.2, 0.01], "none"), [0.2, 0.01])
    assert np.isnan(adjust_p([np.nan, np.nan], "holm")).all()
    assert adjust_p([], "holm").size == 0


def test_bad_inputs_name_what_was_expected() -> None:
    with pytest.raises(ParameterError, match="multiplicity.method.*holm"):
        adjust_p([0.1], "sidak")
    with pytest.raises(ContractError, match=r"\[0, 1\].*1.5"):
        adjust_p([0.1, 1.5], "holm")


def _paired() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "variant": ["a", "b", "c", "a", "b", "c"],
            "task": ["T1"] * 3 + ["T2"] * 3,
            "auroc": [0.1, 0.2, 0.3, 0.1, 0.2, 0.3],
            "auroc_p": [0.01, 0.02, 0.5, 0.03, np.nan, 0.002],
            "gap": [0.0] * 6,
            "gap_p": [0.2, 0.04, 0.001, 0.6, 0.7, 0.8],
        },
        index=[10, 11, 12, 13, 14, 15],
    )


def test_metric_families_within_groups() -> None:
    table = _paired()
    out = adjust_table(table, ["auroc", "gap"], method="holm", family="metric", groups=["task"])
    for _task, rows in table.groupby("task"):
        for m in ("auroc", "gap"):
            p = rows[f"{m}_p"].to_numpy()
            keep = np.isfinite(p)
            expected = np.full(p.size, np.nan)
            expected[keep] = multipletests(p[keep], method="holm")[1]
            np.testing.assert_allclose(out.loc[rows.index, f"{m}_p_adj"], expected)
    assert list(out.columns) == [
        "variant",
        "task",
        "auroc",
        "auroc_p",
        "auroc_p_adj",
        "gap",
        "gap_p",
        "gap_p_adj",
    ]
    assert list(out.index) == list(table.index)
    assert "auroc_p_adj" not in table.columns  # the input is left as it was


def test_table_family_pools_every_p_value() -> None:
    table = _paired()
    out = adjust_table(table, ["auroc", "gap"], method="fdr_bh", family="table")
    p = table[["auroc_p", "gap_p"]].to_numpy().ravel()
    keep = np.isfinite(p)
    expected = np.full(p.size, np.nan)
    expected[keep] = multipletests(p[keep], method="fdr_bh")[1]
    np.testing.assert_allclose(out[["auroc_p_adj", "gap_p_adj"]].to_numpy().ravel(), expected)
    # Holm's smallest p-value is multiplied by the family size: 11 finite p-values in the
    # table family, 6 in the gap family (no groups)
    pooled = adjust_table(table, ["auroc", "gap"], method="holm", family="table")
    per_metric = adjust_table(table, ["auroc", "gap"], method="holm", family="metric")
    assert pooled.loc[12, "gap_p_adj"] == pytest.approx(0.011)
    assert per_metric.loc[12, "gap_p_adj"] == pytest.approx(0.006)


def test_missing_columns_and_unknown_family_are_refused() -> None:
    with pytest.raises(ContractError, match="headline.*missing column.*'x_p'"):
        adjust_table(_paired(), ["x"], source="headline")
    with pytest.raises(ParameterError, match="multiplicity.family"):
        adjust_table(_paired(), ["auroc"], family="row")


def test_empty_table_gets_the_columns() -> None:
    out = adjust_table(_paired().iloc[:0], ["auroc", "gap"])
    assert "auroc_p_adj" in out.columns and out.empty


def test_family_note_names_method_and_scope() -> None:
    assert family_note("holm", "metric", ["task"]) == (
        "p_adj: Holm (family-wise error) over each metric and task; the intervals are not adjusted"
    )
    assert "every p-value of the table" in family_note("fdr_bh", "table")
    assert "equal to p" in family_note("none", "metric")
