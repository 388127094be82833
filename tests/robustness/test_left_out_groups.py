"""Small or undefined groups are said, not dropped or mis-counted in silence.

Robust / reverse AUROC rows count the rows they compare and say why they are undefined;
fairness gaps, ECE rows and the reliability diagram name the groups they leave out; a
one-image cluster is no hidden stratum, and a class too small to cluster is warned about.
References: scikit-learn's ``roc_auc_score``, Fairlearn's ``equalized_odds_difference``
and ``MetricFrame``, and counts written out from the definitions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
)
from sklearn.metrics import roc_auc_score
from tests.robustness.robust_fixtures import TASK, make_table, outlier_data

from cxr_spurious.errors import ParameterError
from cxr_spurious.robustness.calibration import (
    calibration_table,
    expected_calibration_error,
    plot_reliability,
)
from cxr_spurious.robustness.fairness import fairness_tables
from cxr_spurious.robustness.strata import find_strata
from cxr_spurious.robustness.subgroups import subgroup_auroc

# metric -> (tube value of its positives, tube value of its negatives) (Saab et al.)
PAIRING = {"robust_auroc": (0, 1), "reverse_auroc": (1, 0)}


@pytest.mark.parametrize("metric", sorted(PAIRING))
def test_robust_and_reverse_rows_count_the_rows_they_compare(metric: str) -> None:
    t = make_table()
    pos_tube, neg_tube = PAIRING[metric]
    positives = (t[TASK] == 1) & (t["tube"] == pos_tube)
    negatives = (t[TASK] == 0) & (t["tube"] == neg_tube)
    used = t[positives | negatives]
    out = subgroup_auroc(t, TASK, [], n_boot=20, seed=0)
    row = out[out["metric"] == metric].iloc[0]
    assert row["estimate"] == pytest.approx(roc_auc_score(used[TASK], used[f"p_{TASK}"]))
    assert (row["n"], row["n_pos"]) == (len(used), int(positives.sum()))
    assert row["n"] < len(t)  # the split's other cells are not counted
    assert row["ci_note"] == ""


def test_undefined_robust_auroc_says_which_side_is_empty(caplog) -> None:
    t = make_table()
    t.loc[t[TASK] == 1, "tube"] = 1.0  # every positive has a tube: none without
    with caplog.at_level("WARNING", logger="cxr_spurious.robustness.subgroups"):
        out = subgroup_auroc(t, TASK, [], n_boot=20, seed=0)
    robust = out[out["metric"] == "robust_auroc"].iloc[0]
    n_neg = int(((t[TASK] == 0) & (t["tube"] == 1)).sum())
    note = f"undefined: 0 positives without 'tube' / {n_neg} negatives with it"
    assert np.isnan(robust["estimate"]) and robust["ci_note"] == note
    assert (robust["n"], robust["n_pos"]) == (n_neg, 0)
    assert f"robust_auroc {TASK}/tube: {note}" in caplog.text
    # the reverse pairing is still defined, and says nothing
    reverse = out[out["metric"] == "reverse_auroc"].iloc[0]
    keep = ((t[TASK] == 1) & (t["tube"] == 1)) | ((t[TASK] == 0) & (t["tube"] == 0))
    assert reverse["estimate"] == pytest.approx(
        roc_auc_score(t.loc[keep, TASK], t.loc[keep, f"p_{TASK}"])
    )
    assert reverse["ci_note"] == "" and "reverse_auroc" not in caplog.text


def test_unlabelled_spurious_column_is_said_not_a_blank_nan(caplog) -> None:
    t = make_table().assign(tube=np.nan)  # a dataset without tube labels
    with caplog.at_level("WARNING", logger="cxr_spurious.robustness.subgroups"):
        out = subgroup_auroc(t, TASK, [], n_boot=20, seed=0)
    rows = out.set_index("metric")
    assert rows.loc[["robust_auroc", "reverse_auroc"], "estimate"].isna().all()
    unknown = f"({len(t)} labelled rows have no 'tube' value)"
    assert rows.loc["robust_auroc", "ci_note"] == (
        f"undefined: 0 positives without 'tube' / 0 negatives with it {unknown}"
    )
    assert rows.loc["reverse_auroc", "ci_note"] == (
        f"undefined: 0 positives with 'tube' / 0 negatives without it {unknown}"
    )
    assert (rows.loc[["robust_auroc", "reverse_auroc"], "n"] == 0).all()
    assert caplog.text.count(unknown) == 2


def _with_tiny_site(t: pd.DataFrame, n_pos: int, n_neg: int) -> pd.DataFrame:
    """``site = "tiny"`` on the first ``n_pos`` positive and ``n_neg`` negative rows."""
    rows = [*t.index[t[TASK] == 1][:n_pos], *t.index[t[TASK] == 0][:n_neg]]
    out = t.copy()
    out.loc[rows, "site"] = "tiny"
    return out


def test_fairness_gaps_name_the_groups_they_leave_out(caplog) -> None:
    t = _with_tiny_site(make_table(), n_pos=2, n_neg=4)
    with caplog.at_level("WARNING", logger="cxr_spurious.robustness.fairness"):
        by, gaps = fairness_tables(t, TASK, 0.5, ["site", "sex"], n_boot=40, seed=0)
    left = "left out (fewer than 5 positives or negatives): tiny (2 pos, 4 neg)"
    site = gaps[gaps["attribute"] == "site"].set_index("metric")
    assert (site["ci_note"] == left).all() and (site["n_groups"] == 2).all()
    assert f"fairness {TASK} / site: gaps over 2 groups; {left}" in caplog.text
    # the gaps are Fairlearn's over the groups that remain
    kept = t[t["site"] != "tiny"]
    y, yp = kept[TASK].astype(int), (kept[f"p_{TASK}"] >= 0.5).astype(int)
    assert site.loc["equalized_odds_difference", "estimate"] == pytest.approx(
        equalized_odds_difference(y, yp, sensitive_features=kept["site"])
    )
    diff = MetricFrame(
        metrics={"fnr": false_negative_rate, "fpr": false_positive_rate},
        y_true=y,
        y_pred=yp,
        sensitive_features=kept["site"],
    ).difference()
    assert site.loc["fnr_gap", "estimate"] == pytest.approx(diff["fnr"])
    assert site.loc["fpr_gap", "estimate"] == pytest.approx(diff["fpr"])
    assert "tiny" not in set(by["group"])
    # an attribute with every group reported has an empty note and no warning
    assert (gaps.loc[gaps["attribute"] == "sex", "ci_note"] == "").all()
    assert f"fairness {TASK} / sex" not in caplog.text


def test_calibration_and_reliability_diagram_leave_out_the_same_small_groups(caplog) -> None:
    t = _with_tiny_site(make_table(), n_pos=3, n_neg=9)
    with caplog.at_level("WARNING", logger="cxr_spurious.robustness.calibration"):
        table = calibration_table(t, TASK, ["site"], min_rows=20, n_boot=20)
        fig = plot_reliability(t, TASK, "site", min_rows=20)
    note = "left out (fewer than 20 labelled rows): tiny (n=12)"
    assert f"calibration {TASK} / site: {note}" in caplog.text
    assert f"reliability diagram {TASK} / site: {note}" in caplog.text
    site = table[table["attribute"] == "site"].set_index("group")
    assert list(site.index) == ["a", "b"]
    for g in ("a", "b"):
        sub = t[t["site"] == g]
        assert site.loc[g, "n"] == len(sub)
        assert site.loc[g, "ece"] == pytest.approx(
            expected_calibration_error(sub[TASK], sub[f"p_{TASK}"])
        )
    # the diagram draws the groups that have an ECE (plus the diagonal) and names the rest
    labels = [line.get_label() for line in fig.axes[0].lines[1:]]
    assert labels == [f"{g} (n={site.loc[g, 'n']})" for g in ("a", "b")]
    assert [text.get_text() for text in fig.texts] == [note]


def test_no_groups_left_out_means_no_warning_and_every_line(caplog) -> None:
    t = make_table()
    with caplog.at_level("WARNING", logger="cxr_spurious.robustness.calibration"):
        table = calibration_table(t, TASK, ["sex"], min_rows=20, n_boot=20)
        fig = plot_reliability(t, TASK, "sex", min_rows=20)
    assert list(table["group"]) == ["all", "F", "M"] and caplog.text == ""
    assert len(fig.axes[0].lines) == 3 and not fig.texts


def _outlier_data(n_outliers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 images in 5 dimensions, ``n_outliers`` of them misclassified outliers."""
    return outlier_data(200, 5, n_outliers)


@pytest.mark.parametrize(("n_outliers", "flagged"), [(1, False), (4, False), (5, True)])
def test_a_stratum_needs_min_stratum_size_rows_to_be_flagged(
    n_outliers: int, flagged: bool
) -> None:
    y, p, x = _outlier_data(n_outliers)
    ids, _, table = find_strata(y, p, x, 0.5, k=2, margin=0.1, seed=0)
    outliers = table[(table["class"] == 0) & (table["size"] == n_outliers)]
    assert len(outliers) == 1  # k-means gives the outliers their own cluster
    row = outliers.iloc[0]
    assert row["error_rate"] == 1.0 and row["class_error_rate"] == pytest.approx(n_outliers / 100)
    assert bool(row["flagged"]) is flagged  # default min_stratum_size 5
    assert table["flagged"].sum() == int(flagged)
    # the size rule is a parameter: 1 flags any cluster that clears the margin
    _, _, loose = find_strata(y, p, x, 0.5, k=2, margin=0.1, seed=0, min_stratum_size=1)
    assert loose.set_index("cluster").loc[row["cluster"], "flagged"]


def test_min_stratum_size_below_one_is_refused() -> None:
    y, p, x = _outlier_data(1)
    with pytest.raises(ParameterError, match=r"robustness\.strata\.min_stratum_size.*got 0"):
        find_strata(y, p, x, 0.5, k=2, min_stratum_size=0)


def test_a_class_too_small_to_cluster_is_warned_about(caplog) -> None:
    y, p, x = _outlier_data(0)
    y[np.flatnonzero(y == 1)[2:]] = np.nan  # two labelled positives remain
    with caplog.at_level("WARNING", logger="cxr_spurious.robustness.strata"):
        ids, coords, table = find_strata(y, p, x, 0.5, k=2, seed=0)
    assert set(table["class"]) == {0}
    assert (ids[y == 1] == -1).all() and np.isnan(coords[y == 1]).all()
    assert "class 1 (positives) has 2 labelled row(s), fewer than 3; not clustered" in caplog.text
