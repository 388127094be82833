"""``feature_regressions`` against statsmodels fitted by hand: the Bonferroni threshold over
the features, and one fit per task on the task's rows with the features scaled in the task."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from cxr_spurious.regression.models import FEATURES, feature_regressions


def _scaled(values: pd.Series) -> pd.Series:
    """Min-max scaling written out: (v - min) / (max - min)."""
    v = values.astype(float)
    return (v - v.min()) / (v.max() - v.min())


def _ols(y: pd.Series, x: pd.Series):
    return sm.OLS(y.to_numpy(float), sm.add_constant(x.to_numpy(float))).fit()


def _bonferroni_table() -> pd.DataFrame:
    """40 CXRs (one row each) with a weak and a strong outcome of ``area_ratio``."""
    rng = np.random.default_rng(8)
    n = 40
    x = rng.random(n)
    weak = 0.3 + 0.08 * x + rng.normal(0, 0.1, n)
    table = pd.DataFrame(
        {
            "image_id": [f"c{i:02d}" for i in range(n)],
            "task": "Edema",
            "area_ratio": x,
            "n_instances": rng.integers(1, 4, n).astype(float),
            "elongation": 1 + 3 * rng.random(n),
            "irrectangularity": rng.random(n),
            "weak": weak,
        }
    )
    table["strong"] = 0.3 + 0.5 * x + rng.normal(0, 0.1, n)
    return table


def test_bonferroni_divides_the_level_by_the_number_of_features() -> None:
    table = _bonferroni_table()
    out = feature_regressions(table, ["weak", "strong"], features=FEATURES).set_index(
        ["outcome", "feature"]
    )
    weak = out.loc[("weak", "area_ratio")]
    p = _ols(table["weak"], _scaled(table["area_ratio"])).pvalues[1]
    assert weak["n_cxr"] >= 30 and weak["significance_note"] == ""
    assert weak["coef_pval"] == pytest.approx(p, rel=1e-9)
    # significant at 0.05 but not at 0.05 / 4: not flagged
    assert 0.05 / len(FEATURES) < p < 0.05
    assert not weak["bonferroni_significant"]
    strong = out.loc[("strong", "area_ratio")]
    assert strong["coef_pval"] < 0.05 / len(FEATURES) and strong["bonferroni_significant"]


def _two_task_table() -> pd.DataFrame:
    """Two tasks with opposite slopes and different feature ranges, 30 CXRs each."""
    rng = np.random.default_rng(5)
    frames = []
    for task, (lo, hi), slope in (("Edema", (0.0, 0.4), 0.6), ("Cardiomegaly", (0.3, 1.0), -0.4)):
        n = 30
        area = rng.uniform(lo, hi, n)
        elong = rng.uniform(1 + lo, 2 + 3 * hi, n)
        frames.append(
            pd.DataFrame(
                {
                    "image_id": [f"{task[:3]}{i:02d}" for i in range(n)],
                    "task": task,
                    "area_ratio": area,
                    "elongation": elong,
                    "iou_tp": 0.4 + slope * area + 0.05 * elong + rng.normal(0, 0.05, n),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_each_task_is_fitted_on_its_rows_with_features_scaled_in_the_task() -> None:
    table = _two_task_table()
    features = ["area_ratio", "elongation"]
    out = feature_regressions(table, ["iou_tp"], features=features, by_task=True)
    assert sorted(out["task"].unique()) == ["Cardiomegaly", "Edema"]
    for task, rows in table.groupby("task"):
        for feature in features:
            fit = _ols(rows["iou_tp"], _scaled(rows[feature]))
            row = out[(out["task"] == task) & (out["feature"] == feature)].iloc[0]
            assert row["n"] == len(rows)
            assert row["coef"] == pytest.approx(fit.params[1], rel=1e-9), (task, feature)
            assert [row["coef_lo"], row["coef_hi"]] == pytest.approx(
                list(fit.conf_int(0.05)[1]), rel=1e-9
            )
            assert row["coef_pval"] == pytest.approx(fit.pvalues[1], rel=1e-9)


def test_without_normalise_each_feature_enters_in_its_own_units() -> None:
    table = _two_task_table()
    out = feature_regressions(
        table, ["iou_tp"], features=["elongation"], by_task=True, normalise=False
    )
    for task, rows in table.groupby("task"):
        fit = _ols(rows["iou_tp"], rows["elongation"])
        row = out[out["task"] == task].iloc[0]
        assert row["coef"] == pytest.approx(fit.params[1], rel=1e-9), task
        assert [row["coef_lo"], row["coef_hi"]] == pytest.approx(
            list(fit.conf_int(0.05)[1]), rel=1e-9
        )
