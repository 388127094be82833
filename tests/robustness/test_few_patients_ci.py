"""A statistic of fewer than ``MIN_CI_CLUSTERS`` patients has no CI, and says why.

The patient bootstrap of a group of one patient draws the same rows in every replicate (an
interval of width 0 that claims certainty); the project's rule (``nanmean_cis``) gives no
CI below ``MIN_CI_CLUSTERS`` patients. The robustness tables apply it: subgroup and
worst-group AUROC, ECE, and the fairness gaps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from tests.robustness.robust_fixtures import TASK, make_table

from cxr_spurious.robustness.calibration import calibration_table, expected_calibration_error
from cxr_spurious.robustness.fairness import fairness_tables
from cxr_spurious.robustness.subgroups import subgroup_auroc
from cxr_spurious.stats.bootstrap import MIN_CI_CLUSTERS, few_clusters_note


def _with_site(n_patients: int, images: int = 24, seed: int = 0) -> pd.DataFrame:
    """``make_table`` plus a site ``solo`` of ``n_patients`` patients, each with ``images``
    images (half positive), scored noisily."""
    rng = np.random.default_rng(seed)
    parts = [make_table()]
    for k in range(n_patients):
        y = np.r_[np.ones(images // 2), np.zeros(images - images // 2)]
        parts.append(
            pd.DataFrame(
                {
                    "image_id": [f"solo{k}_{j}" for j in range(images)],
                    "patient_id": f"solo{k}",
                    "split": "test",
                    TASK: y,
                    f"p_{TASK}": np.clip(0.4 + 0.2 * y + rng.normal(0, 0.2, images), 0, 1),
                    "sex": "M",
                    "site": "solo",
                    "tube": 0.0,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_one_patient_group_has_an_auroc_and_an_ece_but_no_ci() -> None:
    t = _with_site(1)
    solo = t[t["site"] == "solo"]
    out = subgroup_auroc(t, TASK, ["site"], n_boot=50, seed=0)
    row = out.query("attribute == 'site' and group == 'solo'").iloc[0]
    assert row["estimate"] == pytest.approx(roc_auc_score(solo[TASK], solo[f"p_{TASK}"]))
    assert np.isnan(row["lo"]) and np.isnan(row["hi"])  # was lo == hi == estimate
    assert row["ci_note"] == f"no CI: 1 patient (fewer than {MIN_CI_CLUSTERS})"
    others = out.query("metric == 'auroc' and attribute == 'site' and group != 'solo'")
    assert others["lo"].notna().all() and (others["ci_note"] == "").all()
    # the worst group is a minimum over groups, one of which has no CI: none either
    worst = out.query("metric == 'worst_group_auroc'").iloc[0]
    assert worst["estimate"] == pytest.approx(out.query("attribute == 'site'")["estimate"].min())
    assert np.isnan(worst["lo"]) and np.isnan(worst["hi"])
    assert "no CI: group solo has 1 patient (fewer than 5)" in worst["ci_note"]
    cal = calibration_table(t, TASK, ["site"], n_boot=50, seed=0).set_index("group")
    assert cal.loc["solo", "ece"] == pytest.approx(
        expected_calibration_error(solo[TASK], solo[f"p_{TASK}"])
    )
    assert np.isnan(cal.loc["solo", "ece_lo"]) and np.isnan(cal.loc["solo", "ece_hi"])
    assert cal.loc["solo", "ci_note"] == "no CI: 1 patient (fewer than 5)"
    assert (cal.drop(index="solo")["ci_note"] == "").all()
    assert cal.drop(index="solo")[["ece_lo", "ece_hi"]].notna().all().all()


@pytest.mark.parametrize(
    ("n_patients", "has_ci"), [(MIN_CI_CLUSTERS - 1, False), (MIN_CI_CLUSTERS, True)]
)
def test_the_rule_is_min_ci_clusters_patients_not_images(n_patients: int, has_ci: bool) -> None:
    t = _with_site(n_patients, images=40 // n_patients)
    auc = subgroup_auroc(t, TASK, ["site"], n_boot=50, seed=0)
    auc_row = auc.query("attribute == 'site' and group == 'solo'").iloc[0]
    cal = calibration_table(t, TASK, ["site"], min_rows=20, n_boot=50, seed=0)
    cal_row = cal.query("group == 'solo'").iloc[0]
    if has_ci:
        assert np.isfinite(auc_row["lo"]) and auc_row["lo"] < auc_row["hi"]
        assert np.isfinite(cal_row["ece_lo"]) and cal_row["ci_note"] == ""
    else:
        note = f"no CI: {n_patients} patients (fewer than {MIN_CI_CLUSTERS})"
        assert np.isnan(auc_row["lo"]) and auc_row["ci_note"] == note
        assert np.isnan(cal_row["ece_lo"]) and cal_row["ci_note"] == note


def test_a_split_of_few_patients_has_no_overall_ci() -> None:
    t = _with_site(3)
    t = t[t["site"] == "solo"]
    out = subgroup_auroc(t, TASK, [], spurious=None, n_boot=50, seed=0)
    assert np.isfinite(out["estimate"].iloc[0]) and np.isnan(out["lo"].iloc[0])
    assert out["ci_note"].iloc[0] == "no CI: 3 patients (fewer than 5)"
    cal = calibration_table(t, TASK, [], n_boot=50, seed=0)
    assert np.isnan(cal["ece_lo"].iloc[0]) and cal["ci_note"].iloc[0].startswith("no CI: 3")


def test_gap_over_a_group_of_few_patients_has_no_ci_but_keeps_its_test() -> None:
    t = _with_site(2, images=30)
    _, gaps = fairness_tables(t, TASK, 0.5, ["site"], min_per_class=5, n_boot=100, seed=0)
    assert len(gaps) == 3 and gaps["estimate"].notna().all()
    assert gaps["lo"].isna().all() and gaps["hi"].isna().all()
    assert gaps["ci_note"].str.startswith("no CI: group solo has 2 patients (fewer than 5)").all()
    assert gaps["p_no_gap"].between(0, 1, inclusive="right").all()
    # a permutation that gives solo's 2 patient slots to patients without a positive (or
    # negative) has no gap: left out of p_no_gap, and counted in the note
    assert gaps["ci_note"].str.contains(r"p_no_gap over \d+ of 100 permutations").any()
    _, big = fairness_tables(t, TASK, 0.5, ["sex"], min_per_class=5, n_boot=100, seed=0)
    assert big["lo"].notna().all() and (big["ci_note"] == "").all()


def test_few_clusters_note_counts_distinct_clusters() -> None:
    assert few_clusters_note(["a"] * 10) == "no CI: 1 patient (fewer than 5)"
    assert few_clusters_note(["a", "b", "a"], what="group x") == (
        "no CI: group x has 2 patients (fewer than 5)"
    )
    assert few_clusters_note(list("abcde")) == ""
    assert few_clusters_note(list("abc"), min_clusters=3) == ""
    assert few_clusters_note(list("abcd"), min_clusters=5) == "no CI: 4 patients (fewer than 5)"
    # the localization comparisons' wording: CXRs as clusters, no CI and no p-value
    assert few_clusters_note(np.array(["c1", "c1"]), unit="cxr", lacks="CI or p-value") == (
        "no CI or p-value: 1 cxr (fewer than 5)"
    )
    # integer patient ids count the same way
    assert few_clusters_note([1, 2, 2, 3]) == "no CI: 3 patients (fewer than 5)"
