"""``regress_on_confidence`` (``regression_confidence_results``) against statsmodels by hand:
as CheXlocalize's ``regression_model_assurance.py``, the outcome on the model's raw
probability, pooled and per task, per heatmap set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from cxr_spurious.pipelines.regression.nodes import regress_on_confidence


def _per_map(seed: int = 0) -> pd.DataFrame:
    """Two sets, two tasks; IoU rises with the probability; CXRs outside the gt too."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, slope in (("erm.gradcam", 0.5), ("seg.gradcam", 0.2)):
        for task, offset in (("Edema", 0.0), ("Cardiomegaly", 0.3)):
            for i in range(36):
                prob = float(rng.uniform(offset, offset + 0.6))
                rows.append(
                    {
                        "set": name,
                        "image_id": f"c{i:02d}",
                        "task": task,
                        "in_gt": i < 32,
                        "prob": prob,
                        "iou_full": 0.1 + slope * prob + rng.normal(0, 0.05),
                        "hit": float(rng.random() < 0.2 + slope * prob),
                    }
                )
    return pd.DataFrame(rows)


def _row(out: pd.DataFrame, name: str, task: str, outcome: str) -> pd.Series:
    row = out[
        (out["set"] == name)
        & (out["task"] == task)
        & (out["outcome"] == outcome)
        & (out["feature"] == "prob")
    ]
    assert len(row) == 1, (name, task, outcome)
    return row.iloc[0]


def test_pooled_and_per_task_rows_match_ols_on_the_raw_probability() -> None:
    per_map = _per_map()
    out = regress_on_confidence(per_map, min_clusters=30)
    assert set(out["feature"]) == {"prob"}
    scored = per_map[per_map["in_gt"]]
    checked = 0
    for name, rows in scored.groupby("set"):
        groups = [("pooled", rows), *rows.groupby("task")]
        for task, sub in groups:
            for outcome in ("iou_full", "hit"):
                x = sm.add_constant(sub["prob"].to_numpy(float))  # the reference: raw prob
                fit = sm.OLS(sub[outcome].to_numpy(float), x).fit()
                row = _row(out, name, task, outcome)
                assert row["n"] == len(sub)
                assert row["coef"] == pytest.approx(fit.params[1], rel=1e-9), (name, task, outcome)
                assert [row["coef_lo"], row["coef_hi"]] == pytest.approx(
                    list(fit.conf_int(0.05)[1]), rel=1e-9
                )
                assert row["coef_pval"] == pytest.approx(fit.pvalues[1], rel=1e-9)
                # one predictor: the reference's Bonferroni over 1 is p < 0.05
                assert row["bonferroni_significant"] == (fit.pvalues[1] < 0.05)
                checked += 1
    assert checked == 2 * 3 * 2
    pooled = out[(out["task"] == "pooled") & (out["outcome"] == "iou_full")]
    assert (pooled["coef"] > 0).all()  # a higher probability, a higher IoU


def test_tasks_with_different_probability_ranges_share_the_true_slope() -> None:
    """IoU = 0.1 + 0.5 prob in both tasks, probabilities over different ranges.

    Per-task min-max scaling gave Edema 0.09 and Cardiomegaly 0.42 (pooled 0.44); on the raw
    probability every row estimates the common slope 0.5.
    """
    rng = np.random.default_rng(0)
    rows = []
    for task, (lo, hi) in {"Edema": (0.05, 0.25), "Cardiomegaly": (0.1, 0.95)}.items():
        for i in range(40):
            prob = float(rng.uniform(lo, hi))
            rows.append(
                {
                    "set": "s",
                    "image_id": f"c{i}",
                    "task": task,
                    "in_gt": True,
                    "prob": prob,
                    "iou_full": 0.1 + 0.5 * prob + rng.normal(0, 0.01),
                    "hit": np.nan,
                }
            )
    out = regress_on_confidence(pd.DataFrame(rows), min_clusters=30)
    iou = out[out["outcome"] == "iou_full"].set_index("task")
    assert sorted(iou.index) == ["Cardiomegaly", "Edema", "pooled"]
    for task in iou.index:
        row = iou.loc[task]
        assert row["coef"] == pytest.approx(0.5, abs=0.06), task
        assert row["coef_lo"] < 0.5 < row["coef_hi"], task
