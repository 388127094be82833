"""``regress_on_confidence`` (``regression_confidence_results``) against statsmodels by hand:
IoU on the min-max-scaled probability, pooled and per task, per heatmap set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from cxr_spurious.pipelines.regression.nodes import regress_on_confidence


def _scaled(values: pd.Series) -> np.ndarray:
    v = values.to_numpy(dtype=float)
    return (v - v.min()) / (v.max() - v.min())


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


def test_pooled_and_per_task_rows_match_ols_on_the_scaled_probability() -> None:
    per_map = _per_map()
    out = regress_on_confidence(per_map, min_clusters=30)
    scored = per_map[per_map["in_gt"]]
    checked = 0
    for name, rows in scored.groupby("set"):
        groups = [("pooled", rows), *rows.groupby("task")]
        for task, sub in groups:
            for outcome in ("iou_full", "hit"):
                fit = sm.OLS(
                    sub[outcome].to_numpy(float), sm.add_constant(_scaled(sub["prob"]))
                ).fit()
                row = out[
                    (out["set"] == name)
                    & (out["task"] == task)
                    & (out["outcome"] == outcome)
                    & (out["feature"] == "prob_norm")
                ]
                assert len(row) == 1, (name, task, outcome)
                row = row.iloc[0]
                assert row["n"] == len(sub)
                assert row["coef"] == pytest.approx(fit.params[1], rel=1e-9), (name, task, outcome)
                assert [row["coef_lo"], row["coef_hi"]] == pytest.approx(
                    list(fit.conf_int(0.05)[1]), rel=1e-9
                )
                assert row["coef_pval"] == pytest.approx(fit.pvalues[1], rel=1e-9)
                checked += 1
    assert checked == 2 * 3 * 2
    pooled = out[(out["task"] == "pooled") & (out["outcome"] == "iou_full")]
    assert (pooled["coef"] > 0).all()  # a higher probability, a higher IoU
