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
from tests.robustness.robust_fixtures import TASK, fairlearn_gaps, make_table

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


@pytest.mark.parametrize("target", [0.99, 1.0])
def test_fixed_specificity_holds_when_negatives_score_exactly_one(target: float) -> None:
    # a float32 sigmoid rounds logits above ~16.6 to exactly 1.0: 2 of 100 negatives here,
    # so only "nothing positive" reaches specificity 0.99 or 1.0
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(0, 0.9, 98), 1.0, 1.0, rng.uniform(0.3, 1.0, 50), np.ones(10)]
    y = np.r_[np.zeros(100), np.ones(60)]
    thr = choose_threshold(y, p, "fixed_specificity", target)
    assert (p[y == 0] < thr).mean() >= target
    assert thr > 1.0 and not (p >= thr).any()
    # a reachable target still gets the lowest threshold that reaches it, at most 1
    thr_97 = choose_threshold(y, p, "fixed_specificity", 0.97)
    assert thr_97 <= 1.0 and (p[y == 0] < thr_97).mean() >= 0.97


def test_fairness_equals_fairlearn_directly() -> None:
    t = make_table()
    thr = 0.5
    by, gaps = fairness_tables(t, TASK, thr, ["sex", "site"], n_boot=40, seed=0)
    for attr in ("sex", "site"):
        y, yp, s = t[TASK].astype(int), (t[f"p_{TASK}"] >= thr).astype(int), t[attr]
        mf = MetricFrame(
            metrics={
                "tpr": true_positive_rate,
                "fpr": false_positive_rate,
                "fnr": false_negative_rate,
                "ppv": lambda a, b: precision_score(a, b, zero_division=np.nan),
            },
            y_true=y,
            y_pred=yp,
            sensitive_features=s,
        )
        mine = by[by["attribute"] == attr].set_index("group")
        for col in ("tpr", "fpr", "fnr", "ppv"):
            np.testing.assert_allclose(
                mine.loc[mf.by_group.index, col].to_numpy(dtype=float),
                mf.by_group[col].to_numpy(dtype=float),
            )
        g = gaps[gaps["attribute"] == attr].set_index("metric")
        assert np.isclose(
            g.loc["equalized_odds_difference", "estimate"],
            equalized_odds_difference(y, yp, sensitive_features=s),
        )
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
        assert np.isclose(
            fast["equalized_odds_difference"],
            equalized_odds_difference(y, yp, sensitive_features=g),
        )
        mf = MetricFrame(
            metrics={"fnr": false_negative_rate, "fpr": false_positive_rate},
            y_true=y,
            y_pred=yp,
            sensitive_features=g,
        )
        assert np.isclose(fast["fnr_gap"], mf.difference()["fnr"]) and np.isclose(
            fast["fpr_gap"], mf.difference()["fpr"]
        )


def test_fairness_deterministic_and_skips_single_group(caplog) -> None:
    t = make_table()
    t["one"] = "x"
    with caplog.at_level("WARNING", logger="cxr_spurious.robustness.fairness"):
        a = fairness_tables(t, TASK, 0.5, ["sex", "one"], n_boot=20, seed=2)
    b = fairness_tables(t, TASK, 0.5, ["sex", "one"], n_boot=20, seed=2)
    pd.testing.assert_frame_equal(a[1], b[1])
    assert set(a[1]["attribute"]) == {"sex"}
    # the skipped attribute is said, not only a NaN gap in the model's summary
    assert f"fairness {TASK} / one: no gaps, 1 group(s)" in caplog.text
    assert "one group only" in caplog.text and f"fairness {TASK} / sex" not in caplog.text


def _rare_group_table(seed: int = 0) -> pd.DataFrame:
    """Group R has 3 positive patients: some patient-bootstrap replicates draw none of them."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(80):
        group = "R" if p < 12 else ("A" if p % 2 else "B")
        y = float(p < 3) if group == "R" else float(rng.random() < 0.4)
        for k in range(1 + p % 2):
            score = float(np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.3), 0, 1))
            rows.append(
                {
                    "image_id": f"p{p}_{k}",
                    "patient_id": f"p{p}",
                    TASK: y,
                    f"p_{TASK}": score,
                    "grp": group,
                }
            )
    return pd.DataFrame(rows)


def _slow_fairlearn_bootstrap(
    t: pd.DataFrame, threshold: float, n_boot: int, seed: int
) -> dict[str, tuple[float, float, int]]:
    """Reference: per replicate draw patients (default_rng, sorted labels), rebuild the rows and
    score the gaps with Fairlearn itself; a gap that needs a class some group lacks is NaN."""
    rng = np.random.default_rng(seed)
    labels = sorted(t["patient_id"].unique())
    groups = sorted(t["grp"].unique())
    reps: dict[str, list[float]] = {"equalized_odds_difference": [], "fnr_gap": [], "fpr_gap": []}
    for _ in range(n_boot):
        picked = rng.integers(0, len(labels), size=len(labels))
        rep = pd.concat([t[t["patient_id"] == labels[k]] for k in picked])
        y, yp, s = rep[TASK].astype(int), (rep[f"p_{TASK}"] >= threshold).astype(int), rep["grp"]
        for metric, value in fairlearn_gaps(y, yp, s, groups).items():
            reps[metric].append(value)
    out = {}
    for metric, values in reps.items():
        v = np.array(values)
        f = v[np.isfinite(v)]
        out[metric] = (
            float(np.quantile(f, 0.025)),
            float(np.quantile(f, 0.975)),
            int((~np.isfinite(v)).sum()),
        )
    return out


def test_fast_gaps_are_undefined_not_zero_or_fewer_groups_when_a_group_lacks_a_class() -> None:
    y = np.array([1, 0, 1, 0, 0, 0])
    yp = np.array([1, 0, 0, 1, 1, 0])
    g = np.array(
        [0, 0, 1, 1, 2, 2]
    )  # group 2 has no positive: Fairlearn would score its TPR and FNR 0
    fast = _fast_gaps(y, yp, g, 3)
    assert np.isnan(fast["fnr_gap"]) and np.isnan(fast["equalized_odds_difference"])
    mf = MetricFrame(
        metrics={"fpr": false_positive_rate}, y_true=y, y_pred=yp, sensitive_features=g
    )
    assert fast["fpr_gap"] == pytest.approx(mf.difference()["fpr"])  # every group has negatives
    absent = _fast_gaps(y[:4], yp[:4], g[:4], 3)  # group 2 not drawn at all: no gap over 2 groups
    assert all(np.isnan(v) for v in absent.values())


def test_fairness_cis_equal_fairlearn_on_every_patient_replicate() -> None:
    t = _rare_group_table()
    _, gaps = fairness_tables(
        t, TASK, 0.5, ["grp"], min_per_class=3, n_boot=100, seed=1, max_dropped_share=1.0
    )
    ref = _slow_fairlearn_bootstrap(t, 0.5, 100, 1)
    g = gaps.set_index("metric")
    assert g.loc["fnr_gap", "n_dropped"] > 0  # the convention is exercised
    for metric, (lo, hi, dropped) in ref.items():
        assert g.loc[metric, "lo"] == pytest.approx(lo, abs=1e-12), metric
        assert g.loc[metric, "hi"] == pytest.approx(hi, abs=1e-12), metric
        assert g.loc[metric, "n_dropped"] == dropped, metric
    assert (g["n_patients"] == 80).all()
    again = fairness_tables(
        t, TASK, 0.5, ["grp"], min_per_class=3, n_boot=100, seed=1, max_dropped_share=1.0
    )[1]
    pd.testing.assert_frame_equal(gaps, again)


def test_fairness_fails_loudly_when_too_many_replicates_are_undefined() -> None:
    from cxr_spurious.stats.bootstrap import BootstrapDropError

    t = _rare_group_table()
    # seed 1: 6 of 100 replicates draw none of group R's 3 positive patients;
    # the default limit is 5 %
    with pytest.raises(
        BootstrapDropError,
        match=r"fairness Pneumothorax/grp/equalized_odds_difference: 6 of 100 bootstrap replicates",
    ):
        fairness_tables(t, TASK, 0.5, ["grp"], min_per_class=3, n_boot=100, seed=1)
    with pytest.raises(ParameterError, match="min_per_class"):
        fairness_tables(t, TASK, 0.5, ["grp"], min_per_class=0)
