"""Tests of grouping: age bins, keys, ids and the bad-input checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.debiasing.debias_fixtures import TASK, make_manifest

from cxr_spurious.debiasing.groups import assign_groups, check_groups, group_keys
from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.sources.contract import age_bin_labels, bin_ages


def test_age_bins_default_edges() -> None:
    assert age_bin_labels([0, 20, 40, 60, 80]) == ["0-20", "20-40", "40-60", "60-80", "80+"]
    out = bin_ages(pd.Series([0, 19.9, 20, 79, 80, 101, np.nan, -1]))
    assert out.tolist()[:6] == ["0-20", "0-20", "20-40", "60-80", "80+", "80+"]
    assert pd.isna(out.iloc[6]) and pd.isna(out.iloc[7])


def test_age_bins_must_increase() -> None:
    with pytest.raises(ParameterError, match="age_bins"):
        bin_ages(pd.Series([1.0]), [0, 40, 20])
    for bad in ([], [0, float("nan")], ["a"]):
        with pytest.raises(ParameterError, match="increasing list of finite lower edges"):
            bin_ages(pd.Series([1.0]), bad)


def test_bad_age_bins_name_the_key_each_pipeline_reads() -> None:
    """``age_bins`` exists under debiasing, robustness and the comparison: the error names
    the one the failing node read (the comparison's through ``with_parameter_keys``)."""
    from cxr_spurious.pipelines.comparison.pipeline import _dfr_function
    from cxr_spurious.robustness.evaluation import evaluation_table

    m = make_manifest()
    with pytest.raises(ParameterError) as info:
        group_keys(m, ["age_bin"], age_edges=[40, 20])
    assert info.value.key == "debiasing.age_bins"
    dfr = _dfr_function()
    with pytest.raises(ParameterError) as info:
        dfr(m, pd.DataFrame(), [TASK], ["age_bin"], [40, 20], 1.0, 0)
    assert info.value.key == "comparison.debiasing.age_bins"
    preds = m[["image_id"]].assign(**{f"p_{TASK}": 0.5})
    with pytest.raises(ParameterError) as info:
        evaluation_table(m, preds, [TASK], ["age_bin"], age_edges=[40, 20])
    assert info.value.key == "robustness.age_bins"


def test_keys_crossed_with_label_and_missing_values() -> None:
    m = make_manifest()
    m.loc[0, "sex"] = np.nan
    m.loc[1, TASK] = np.nan
    keys = group_keys(m, ["sex", "age_bin"], task=TASK, cross_label=True)
    assert pd.isna(keys.iloc[0]) and pd.isna(keys.iloc[1])
    row = m.iloc[2]
    expected_bin = bin_ages(pd.Series([row["age_years"]])).iloc[0]
    assert keys.iloc[2] == f"sex={row['sex']}|age_bin={expected_bin}|label={int(row[TASK])}"
    ids, names = assign_groups(keys)
    assert ids.iloc[0] == -1 and ids.iloc[1] == -1
    assert names[int(ids.iloc[2])] == keys.iloc[2]
    assert sorted(names.values()) == list(names.values())


def test_unknown_attribute_names_key_and_columns() -> None:
    with pytest.raises(ParameterError, match=r"group_by.*\['ethnicity'\].*available columns"):
        group_keys(make_manifest(), ["ethnicity"])


def test_group_with_one_patient_is_rejected() -> None:
    m = make_manifest()
    first = m.index[m["split"] == "train"][0]
    pid = m.loc[first, "patient_id"]
    m.loc[m["patient_id"] == pid, "sex"] = "X"
    keys = group_keys(m, ["sex"])
    with pytest.raises(DataFormatError, match=rf"group 'sex=X' has 1 patient\(s\) \({pid}\)"):
        check_groups(m, keys, TASK)


def test_group_with_all_labels_missing_is_rejected() -> None:
    m = make_manifest()
    m.loc[m["sex"] == "F", TASK] = np.nan
    with pytest.raises(DataFormatError, match=f"every '{TASK}' label of group 'sex=F' is missing"):
        check_groups(m, group_keys(m, ["sex"]), TASK)


def test_valid_groups_pass() -> None:
    m = make_manifest()
    check_groups(m, group_keys(m, ["sex", "tube"]), TASK)
