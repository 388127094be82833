"""Operating points and fairness gaps, checked against Fairlearn and scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    true_positive_rate,
)
from sklearn.metrics import precision_score, roc_curve
from tests.robustness.robust_fixtures import TASK, make_table

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.robustness.fairness import _fast_gaps, choose_threshold, fairness_tables


def test_youden_and_fixed_points() -> None:
    t = make_table()
    y, p = t[TASK].to_numpy(), t[f"p_{TASK}"].to_numpy()
    fpr, tpr, thr = roc_curve(y, p)
    thr_y = choose_threshold(y, p, "youden")
    pred = p >= thr_y
    j = pred[y == 1].mean() - pred[y == 0].mean()
    assert np.isclose(j, np.max(tpr - fpr))
    thr_s = choose_threshold(y, p, "fixed_sensitivity", 0.9)
    sens = (p[y == 1] >= thr_s).mean()
    assert sens >= 0.9 and (p[y == 1] > thr_s).mean() < 0.9
    thr_f = choose_threshold(y, p, "fixed_specificity", 0.8)
    assert (p[y == 0] < thr_f).mean() >= 0.8
    with pytest.raises(ParameterError, match="valid names are: fixed_sensitivity"):
        choose_threshold(y, p, "max_f1")  # type: ignore[arg-type]
    with pytest.raises(ContractError, match="single class"):
        choose_threshold(np.ones(4), p[:4])


def test_fairness_equals_fairlearn_directly() -> None:
    t = make_table()
    thr = 0.5
    by, gaps = fairness_tables(t, TASK, thr, ["sex", "site"], n_boot=40, seed=0)
    for attr in ("sex", "site"):
        y, yp, s = t[TASK].astype(int), (t[f"p_{TASK}"] >= thr).astype(int), t[attr]
        mf = MetricFrame(metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "fnr": false_negative_rate, "ppv": lambda a, b: precision_score(a, b, zero_division=np.nan)}, y_true=y, y_pred=yp, sensitive_features=s)
        mine = by[by["attribute"] == attr].set_index("group")
        for col in ("tpr", "fpr", "fnr", "ppv"):
            np.testing.assert_allclose(mine.loc[mf.by_group.index, col].to_numpy(dtype=float), mf.by_group[col].to_numpy(dtype=float))
        g = gaps[gaps["attribute"] == attr].set_index("metric")
        assert np.isclose(g.loc["equalized_odds_difference", "estimate"], equalized_odds_difference(y, yp, sensitive_features=s))
        assert np.isclose(g.loc["fnr_gap", "estimate"], mf.difference()["fnr"])
        assert np.isclose(g.loc["fpr_gap", "estimate"], mf.difference()["fpr"])
        assert (g["lo"] <= g["estimate"] + 1e-12).all() and (g["estimate"] <= g["hi"] + 1e-12).all()
    # the poorly served group (F) misses more positives
    sex = by[by["attribute"] == "sex"].set_index("group")
    assert sex.loc["F", "fnr"] > sex.loc["M", "fnr"]


def test_fast_gaps_equal_fairlearn_on_random_data() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(40, 200))
        y, yp = rng.integers(0, 2, n), rng.integers(0, 2, n)
        g = rng.integers(0, 4, n)
        fast = _fast_gaps(y, yp, g, 4)
        assert np.isclose(fast["equalized_odds_difference"], equalized_odds_difference(y, yp, sensitive_features=g))
        mf = MetricFrame(metrics={"fnr": false_negative_rate, "fpr": false_positive_rate}, y_true=y, y_pred=yp, sensitive_features=g)
        assert np.isclose(fast["fnr_gap"], mf.difference()["fnr"]) and np.isclose(fast["fpr_gap"], mf.difference()["fpr"])


def test_fairness_deterministic_and_skips_single_group() -> None:
    t = make_table()
    t["one"] = "x"
    a = fairness_tables(t, TASK, 0.5, ["sex", "one"], n_boot=20, seed=2)
    b = fairness_tables(t, TASK, 0.5, ["sex", "one"], n_boot=20, seed=2)
    pd.testing.assert_frame_equal(a[1], b[1])
    assert set(a[1]["attribute"]) == {"sex"}
