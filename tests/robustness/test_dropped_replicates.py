"""Undefined bootstrap replicates in the robustness tables: counted next to each CI, an error
above ``max_dropped_share`` for overall statistics, a NaN CI with a note for group statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.robustness.robust_fixtures import TASK, make_table

from cxr_spurious.pipelines.robustness.pipeline import create_robustness_template
from cxr_spurious.robustness.calibration import calibration_table
from cxr_spurious.robustness.subgroups import paired_auroc_test, subgroup_auroc
from cxr_spurious.stats.bootstrap import BootstrapDropError, bootstrap_indices

N_BOOT = 200


def _slow_undefined(y: np.ndarray, clusters: np.ndarray, seed: int = 0) -> int:
    """Replicates of the same draws without a positive or without a negative (AUROC undefined)."""
    count = 0
    for idx in bootstrap_indices(len(y), N_BOOT, seed, clusters):
        if not ((y[idx] == 1).any() and (y[idx] == 0).any()):
            count += 1
    return count


def _with_rare_site() -> pd.DataFrame:
    """``make_table`` with a site ``rare`` of one positive and eight negative patients."""
    t = make_table()
    single = t.groupby("patient_id").filter(lambda g: len(g) == 1)
    pos = single[single[TASK] == 1].index[:1]
    neg = single[single[TASK] == 0].index[:8]
    t.loc[pos.union(neg), "site"] = "rare"
    return t


def test_subgroup_rows_count_dropped_replicates_like_a_slow_count() -> None:
    t = _with_rare_site()
    out = subgroup_auroc(
        t, TASK, ["site"], min_per_class=1, n_boot=N_BOOT, seed=0, max_dropped_share=1.0
    )
    y, pid = t[TASK].to_numpy(float), t["patient_id"].to_numpy()
    rare = (t["site"] == "rare").to_numpy()
    row = out.query("attribute == 'site' and group == 'rare'").iloc[0]
    expected = _slow_undefined(y[rare], pid[rare])
    assert expected > 0.05 * N_BOOT
    assert row["n_dropped"] == expected and row["ci_note"] == ""
    assert np.isfinite(row["lo"]) and np.isfinite(row["hi"])
    overall = out.query("metric == 'auroc' and attribute == 'all'").iloc[0]
    assert overall["n_dropped"] == _slow_undefined(y, pid) == 0
    # worst group: undefined whenever any eligible group is (not the minimum of the others)
    codes = {g: (t["site"] == g).to_numpy() for g in ("a", "b", "rare")}
    slow_worst = 0
    for idx in bootstrap_indices(len(y), N_BOOT, 0, pid):
        if any(
            not ((y[idx][m[idx]] == 1).any() and (y[idx][m[idx]] == 0).any())
            for m in codes.values()
        ):
            slow_worst += 1
    worst = out.query("metric == 'worst_group_auroc'").iloc[0]
    assert worst["n_dropped"] == slow_worst > 0
    robust = out.query("metric == 'robust_auroc'").iloc[0]
    keep = ((y == 1) & (t["tube"].to_numpy() == 0)) | ((y == 0) & (t["tube"].to_numpy() == 1))
    slow_robust = sum(
        not ((y[idx][keep[idx]] == 1).any() and (y[idx][keep[idx]] == 0).any())
        for idx in bootstrap_indices(len(y), N_BOOT, 0, pid)
    )
    assert robust["n_dropped"] == slow_robust


def test_rare_subgroup_above_threshold_gets_nan_ci_and_a_note() -> None:
    t = _with_rare_site()
    out = subgroup_auroc(
        t, TASK, ["site"], min_per_class=1, n_boot=N_BOOT, seed=0, max_dropped_share=0.05
    )
    row = out.query("attribute == 'site' and group == 'rare'").iloc[0]
    assert np.isfinite(row["estimate"]) and np.isnan(row["lo"]) and np.isnan(row["hi"])
    assert (
        f"{int(row['n_dropped'])} of {N_BOOT}" in row["ci_note"]
        and "max_dropped_share" in row["ci_note"]
    )
    worst = out.query("metric == 'worst_group_auroc'").iloc[0]
    assert np.isnan(worst["lo"]) and "undefined" in worst["ci_note"]
    big = out.query("attribute == 'site' and group == 'a'").iloc[0]
    assert big["ci_note"] == "" and np.isfinite(big["lo"])  # other groups keep their CI


def test_overall_auroc_above_threshold_is_an_error_naming_it() -> None:
    t = make_table(n_patients=12, seed=1)
    t[TASK] = 0.0
    t.loc[t.index[0], TASK] = 1.0  # one positive patient: most resamples have none
    with pytest.raises(BootstrapDropError, match=f"AUROC {TASK}: .* undefined"):
        subgroup_auroc(t, TASK, [], spurious=None, n_boot=N_BOOT, seed=0, max_dropped_share=0.05)


def test_paired_difference_counts_and_fails_above_threshold() -> None:
    t = make_table(n_patients=12, seed=1)
    t[TASK] = 0.0
    t.loc[t.index[0], TASK] = 1.0
    other = t.assign(**{f"p_{TASK}": np.linspace(0, 1, len(t))})
    res = paired_auroc_test(t, other, TASK, n_boot=N_BOOT, seed=0, max_dropped_share=1.0)
    y, pid = t[TASK].to_numpy(float), t["patient_id"].to_numpy()
    assert res["difference_dropped"] == _slow_undefined(y, pid) > 0
    with pytest.raises(BootstrapDropError, match=f"paired auroc difference {TASK}"):
        paired_auroc_test(t, other, TASK, n_boot=N_BOOT, seed=0, max_dropped_share=0.05)


def _sparse_scores() -> pd.DataFrame:
    """Scores missing for all but two patients: many resamples have no scored row."""
    t = make_table(n_patients=40, seed=2)
    keep = t["patient_id"].isin(["p0", "p1"])
    t.loc[~keep, f"p_{TASK}"] = np.nan
    return t


def test_calibration_counts_dropped_replicates() -> None:
    t = _sparse_scores()
    out = calibration_table(t, TASK, [], min_rows=1, n_boot=N_BOOT, seed=0, max_dropped_share=1.0)
    p, pid = t[f"p_{TASK}"].to_numpy(float), t["patient_id"].to_numpy()
    slow = sum(not np.isfinite(p[idx]).any() for idx in bootstrap_indices(len(t), N_BOOT, 0, pid))
    assert out.iloc[0]["ece_dropped"] == slow > 0.05 * N_BOOT
    full = calibration_table(make_table(), TASK, ["sex"], n_boot=50, seed=0)
    assert (full["ece_dropped"] == 0).all()


def test_calibration_above_threshold_is_an_error_naming_the_group() -> None:
    with pytest.raises(BootstrapDropError, match=f"ECE {TASK}/all=all"):
        calibration_table(
            _sparse_scores(), TASK, [], min_rows=1, n_boot=N_BOOT, seed=0, max_dropped_share=0.05
        )


def test_pipeline_threads_the_threshold_to_auroc_and_calibration() -> None:
    nodes = {n.name: n for n in create_robustness_template().nodes}
    for name in ("compute_subgroup_auroc", "compute_calibration", "compute_fairness"):
        assert "params:robustness.max_dropped_share" in nodes[name].inputs, name
