"""Subgroup, robust and worst-group AUROC; the paired test; the evaluation table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from tests.robustness.robust_fixtures import TASK, make_table

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.robustness.evaluation import evaluation_table
from cxr_spurious.robustness.subgroups import paired_auroc_test, subgroup_auroc


def test_subgroup_auroc_matches_sklearn() -> None:
    t = make_table()
    out = subgroup_auroc(t, TASK, ["sex", "site"], n_boot=30, seed=0)
    overall = out.query("metric == 'auroc' and attribute == 'all'").iloc[0]
    assert np.isclose(overall["estimate"], roc_auc_score(t[TASK], t[f"p_{TASK}"]))
    assert overall["lo"] <= overall["estimate"] <= overall["hi"]
    per = {}
    for sex in ("F", "M"):
        sub = t[t["sex"] == sex]
        per[sex] = roc_auc_score(sub[TASK], sub[f"p_{TASK}"])
        assert np.isclose(
            out.query(f"attribute == 'sex' and group == '{sex}'")["estimate"].iloc[0], per[sex]
        )
    worst = out.query("metric == 'worst_group_auroc' and attribute == 'sex'").iloc[0]
    assert np.isclose(worst["estimate"], min(per.values())) and per["F"] < per["M"]
    keep = ((t[TASK] == 1) & (t["tube"] == 0)) | ((t[TASK] == 0) & (t["tube"] == 1))
    robust = out.query("metric == 'robust_auroc'")["estimate"].iloc[0]
    assert np.isclose(robust, roc_auc_score(t.loc[keep, TASK], t.loc[keep, f"p_{TASK}"]))
    assert robust < out.query("metric == 'reverse_auroc'")["estimate"].iloc[0]


def test_subgroup_auroc_deterministic_and_small_groups_skipped() -> None:
    t = make_table()
    t.loc[t.index[:3], "site"] = "tiny"
    a = subgroup_auroc(t, TASK, ["site"], n_boot=20, seed=4)
    b = subgroup_auroc(t, TASK, ["site"], n_boot=20, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert "tiny" not in set(a["group"])


def test_worst_group_names_left_out_groups_and_counts_only_the_scored_ones(caplog) -> None:
    t = make_table()
    small = t.index[:6]
    t.loc[small, "site"] = "C"  # 6 rows: too few positives or negatives at min_per_class 5
    y = t.loc[small, TASK]
    with caplog.at_level("WARNING", logger="cxr_spurious.robustness.subgroups"):
        out = subgroup_auroc(t, TASK, ["site"], n_boot=20, seed=0, min_per_class=5)
    worst = out.query("metric == 'worst_group_auroc'").iloc[0]
    scored = out.query("metric == 'auroc' and attribute == 'site'")
    assert "C" not in set(scored["group"]) and len(scored) >= 2
    assert np.isclose(worst["estimate"], scored["estimate"].min())
    assert worst["n"] == len(t) - 6  # the scored groups' rows, not site C's
    assert worst["n_pos"] == int(t[TASK].sum() - y.sum())
    left = f"C ({int(y.sum())} pos, {int((y == 0).sum())} neg)"
    assert f"left out (fewer than 5 positives or negatives): {left}" in worst["ci_note"]
    assert left in caplog.text and "site" in caplog.text


def test_one_scorable_group_is_no_worst_group() -> None:
    """Only one group of the attribute can be scored: its AUROC would read as the worst
    group's although it may be the best; the row says why it is NaN instead."""
    t = make_table()
    groups = sorted(t["site"].unique())
    keep, rest = groups[0], t.index[t["site"] != groups[0]]
    t.loc[rest[5:], "site"] = keep  # every site but one shrinks to 5 rows in all
    t.loc[rest[:5], "site"] = "small"
    out = subgroup_auroc(t, TASK, ["site"], n_boot=20, seed=0, min_per_class=5)
    worst = out.query("metric == 'worst_group_auroc'").iloc[0]
    assert np.isnan(worst["estimate"]) and np.isnan(worst["lo"]) and worst["n"] == 0
    assert worst["ci_note"].startswith("no worst group: 1 group(s) of 'site' scorable")
    assert "left out (fewer than 5 positives or negatives): small (" in worst["ci_note"]


def test_paired_test_detects_better_model() -> None:
    t = make_table()
    noisy = t.copy()
    noisy[f"p_{TASK}"] = np.random.default_rng(0).random(len(t))
    res = paired_auroc_test(t, noisy, TASK, n_boot=50, seed=0)
    assert res["difference"] > 0.2 and res["difference_lo"] > 0 and res["p_value"] < 0.05
    same = paired_auroc_test(t, t, TASK, n_boot=20)
    assert same["difference"] == 0
    with pytest.raises(ContractError, match="same images"):
        paired_auroc_test(t, t.iloc[1:], TASK)


def test_evaluation_table_alignment_and_errors() -> None:
    t = make_table()
    manifest = t.drop(columns=[f"p_{TASK}"]).assign(age_years=np.linspace(1, 90, len(t)))
    preds = t[["image_id", f"p_{TASK}"]].sample(frac=1.0, random_state=0)
    out = evaluation_table(manifest, preds, [TASK], ["sex", "age_bin"])
    np.testing.assert_allclose(out[f"p_{TASK}"], t[f"p_{TASK}"])
    assert out["age_bin"].iloc[0] == "0-20" and out["age_bin"].iloc[-1] == "80+"
    with pytest.raises(ContractError, match="misaligned"):
        evaluation_table(manifest, preds.iloc[2:], [TASK], ["sex"])
    with pytest.raises(ParameterError, match="'insurance'"):
        evaluation_table(manifest, preds, [TASK], ["insurance"])
    logits = preds.assign(**{f"p_{TASK}": np.log(preds[f"p_{TASK}"] / (1 - preds[f"p_{TASK}"]))})
    with pytest.raises(ContractError, match=rf"p_{TASK} is outside \[0, 1\] for \d+ image"):
        evaluation_table(manifest, logits, [TASK], ["sex"])
