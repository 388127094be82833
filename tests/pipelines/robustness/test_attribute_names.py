"""The robustness block's attribute names are cross-checked before anything is computed.

A worst-group or fairness attribute that was not evaluated (a typo such as ``sites``), a
reliability / AMI attribute that is not a column, or a spurious column that does not exist
used to be dropped silently: another worst group, a NaN FNR gap, no robust AUROC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from tests.robustness.robust_fixtures import TASK, make_table

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.robustness import nodes
from cxr_spurious.robustness.subgroups import subgroup_auroc

ATTRIBUTES = ["sex", "age_bin", "race", "insurance", "site", "tube"]
WORST = ["sex", "age_bin", "race", "insurance", "site"]


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Worst groups by hand: sex 0.88, site 0.70 (the lowest); site's FNR gap 0.3."""
    rows = [
        ("auroc", "all", "all", 0.9),
        ("worst_group_auroc", "sex", "F", 0.88),
        ("worst_group_auroc", "site", "C", 0.70),
        ("robust_auroc", "tube", "robust", 0.5),
    ]
    sub = pd.DataFrame(
        [
            {"task": TASK, "metric": m, "attribute": a, "group": g, "estimate": e}
            for m, a, g, e in rows
        ]
    ).assign(lo=lambda d: d["estimate"] - 0.05, hi=lambda d: d["estimate"] + 0.05)
    gaps = pd.DataFrame(
        [
            {"task": TASK, "attribute": "site", "metric": m, "estimate": v, "lo": 0.1, "hi": 0.5}
            for m, v in (("fnr_gap", 0.3), ("equalized_odds_difference", 0.35))
        ]
    )
    return sub, gaps


def test_summary_reads_the_configured_attributes() -> None:
    sub, gaps = _tables()
    row = nodes.summarise_model(sub, gaps, WORST, "site", ATTRIBUTES).iloc[0]
    # by hand: min(0.88, 0.70) is site's
    assert row["worst_group_auroc"] == 0.70 and row["worst_group"] == "site"
    assert row["fnr_gap"] == 0.3


@pytest.mark.parametrize(
    ("worst", "fairness", "key", "name"),
    [
        ([*WORST[:-1], "sites"], "site", "robustness.worst_group_attributes", "sites"),
        (["sex", "ethnicity"], "site", "robustness.worst_group_attributes", "ethnicity"),
        (["sex", "site"], "Site", "robustness.fairness_attribute", "Site"),
    ],
)
def test_summary_refuses_attributes_that_were_not_evaluated(
    worst: list[str], fairness: str, key: str, name: str
) -> None:
    sub, gaps = _tables()
    with pytest.raises(ParameterError, match=rf"'{key}'.*{name}") as err:
        nodes.summarise_model(sub, gaps, worst, fairness, ATTRIBUTES)
    assert err.value.key == key


def _manifest() -> tuple[pd.DataFrame, pd.DataFrame]:
    t = make_table(n_patients=120, seed=1)
    rng = np.random.default_rng(1)
    manifest = t.drop(columns=[f"p_{TASK}"]).assign(
        age_years=rng.uniform(20, 90, len(t)), race="A", insurance="x"
    )
    return manifest, t[["image_id", f"p_{TASK}"]]


def _build(**over: object) -> pd.DataFrame:
    manifest, preds = _manifest()
    kw: dict[str, object] = {
        "tasks": [TASK],
        "attributes": ["sex", "site", "tube"],
        "age_bins": [0, 20, 40, 60, 80],
        "spurious": "tube",
        "worst_group_attributes": ["sex", "site"],
        "fairness_attribute": "site",
        "reliability_attribute": "site",
        "ami_attributes": ["tube", "site", "sex"],
    }
    kw.update(over)
    return nodes.build_evaluation_table(manifest, preds, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"worst_group_attributes": ["sex", "sites"]}, "robustness.worst_group_attributes"),
        ({"worst_group_attributes": ["sex", "race"]}, "robustness.worst_group_attributes"),
        ({"worst_group_attributes": "sex"}, "robustness.worst_group_attributes"),
        ({"fairness_attribute": "Site"}, "robustness.fairness_attribute"),
        ({"reliability_attribute": "sites"}, "robustness.reliability_attribute"),
        ({"ami_attributes": ["tube", "Sex"]}, "robustness.ami_attributes"),
        ({"spurious": "tubes"}, "robustness.spurious"),
        ({"spurious": "sex"}, "robustness.spurious"),
    ],
)
def test_first_node_refuses_bad_names(over: dict[str, object], key: str) -> None:
    with pytest.raises(ParameterError) as err:
        _build(**over)
    assert err.value.key == key


def test_spurious_column_outside_attributes_is_carried() -> None:
    """A 0/1 manifest column named by ``spurious`` but not in ``attributes`` gets its robust
    AUROC (it used to be absent from the table, so the robust AUROC was silently skipped)."""
    manifest, preds = _manifest()
    manifest["drain"] = manifest["tube"]
    table = nodes.build_evaluation_table(
        manifest,
        preds,
        [TASK],
        ["sex"],
        [0, 20, 40, 60, 80],
        spurious="drain",
        worst_group_attributes=["sex"],
        fairness_attribute="sex",
        reliability_attribute=None,
        ami_attributes=["sex"],
    )
    out = nodes.compute_subgroup_auroc(table, [TASK], ["sex"], "drain", 5, 20, 0, 0.95)
    test = table[table["split"] == "test"]
    keep = ((test[TASK] == 1) & (test["drain"] == 0)) | ((test[TASK] == 0) & (test["drain"] == 1))
    robust = out.query("metric == 'robust_auroc'")
    assert len(robust) == 1 and robust["attribute"].iloc[0] == "drain"
    assert np.isclose(
        robust["estimate"].iloc[0], roc_auc_score(test.loc[keep, TASK], test.loc[keep, f"p_{TASK}"])
    )


def test_subgroup_auroc_refuses_a_missing_spurious_column() -> None:
    t = make_table()
    with pytest.raises(ParameterError, match="robustness.spurious.*'tubes'"):
        subgroup_auroc(t, TASK, ["sex"], spurious="tubes", n_boot=10)
    skipped = subgroup_auroc(t, TASK, ["sex"], spurious=None, n_boot=10)
    assert "robust_auroc" not in set(skipped["metric"])


def test_strata_and_reliability_nodes_refuse_missing_columns() -> None:
    table = _build()
    with pytest.raises(ParameterError, match="robustness.reliability_attribute"):
        nodes.plot_reliability_diagram(table, [TASK], "Site", 10)
    with pytest.raises(ParameterError, match="robustness.ami_attributes"):
        nodes.find_hidden_strata(table, pd.DataFrame(), pd.DataFrame(), {}, ["tubes"])
