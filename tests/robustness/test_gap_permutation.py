"""The fairness gaps' test of "no gap" (``p_no_gap``): a permutation test over patients.

A gap is a max - min difference (>= 0), so its percentile bootstrap interval lies above 0
even when the groups do not differ; ``p_no_gap`` is the test. Checked here: calibrated
under a true null (groups drawn at random from one population, several correlated images
per patient), small for a planted gap, equal to a slow Fairlearn reference that permutes
whole patients, and independent of the row order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.robustness.robust_fixtures import TASK, fairlearn_gaps

from cxr_spurious.robustness.fairness import GAP_METRICS, fairness_tables, permutation_p_values

N_PERM = 200


def _population(seed: int, planted: float = 0.0, n_patients: int = 240) -> pd.DataFrame:
    """Patients of 1-4 images, group A or B at random (one per patient), labels and scores
    correlated within a patient. ``planted`` > 0 lowers the scores of group B's positives
    (more missed positives in B: an FNR gap); 0: both groups from one population."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_patients):
        group = "A" if rng.random() < 0.5 else "B"
        sick, effect = rng.random() < 0.35, rng.normal(0, 1.0)
        for j in range(int(rng.integers(1, 5))):
            y = float(sick if rng.random() < 0.85 else not sick)
            shift = -planted if group == "B" and y == 1 else 0.0
            logit = 1.5 * (2 * y - 1) + effect + shift + rng.normal()
            rows.append(
                {
                    "image_id": f"p{k}_{j}",
                    "patient_id": f"p{k}",
                    TASK: y,
                    f"p_{TASK}": 1 / (1 + np.exp(-logit)),
                    "grp": group,
                }
            )
    return pd.DataFrame(rows)


def _p_values(t: pd.DataFrame, seed: int) -> dict[str, float]:
    y = t[TASK].astype(int).to_numpy()
    yp = (t[f"p_{TASK}"] >= 0.5).astype(int).to_numpy()
    codes = pd.Categorical(t["grp"]).codes
    res = permutation_p_values(
        y, yp, codes, 2, t["patient_id"].to_numpy(), n_perm=N_PERM, seed=seed
    )
    return {metric: p for metric, (p, _) in res.items()}


def test_p_no_gap_is_not_systematically_small_when_there_is_no_gap() -> None:
    p_values = pd.DataFrame([_p_values(_population(seed), seed) for seed in range(100)])
    for metric in GAP_METRICS:
        v = p_values[metric].to_numpy()
        assert np.isfinite(v).all() and ((v > 0) & (v <= 1)).all(), metric
        assert np.mean(v < 0.05) <= 0.1, (metric, np.mean(v < 0.05))  # about 5 % expected
        assert 0.4 < np.mean(v) < 0.6, (metric, np.mean(v))  # uniform: mean 0.5


def test_the_gaps_table_carries_the_test_beside_an_interval_that_excludes_zero() -> None:
    """Under no gap the percentile interval of a max - min gap lies above 0 (what a reader
    would take for a disparity); ``p_no_gap`` beside it does not call it one."""
    lo_above_zero, small_p = 0, 0
    for seed in range(10):
        t = _population(seed)
        _, gaps = fairness_tables(t, TASK, 0.5, ["grp"], n_boot=N_PERM, seed=seed)
        assert dict(zip(gaps["metric"], gaps["p_no_gap"], strict=True)) == _p_values(t, seed)
        lo_above_zero += int((gaps["lo"] > 0).sum())
        small_p += int((gaps["p_no_gap"] < 0.05).sum())
    assert lo_above_zero >= 0.9 * 10 * len(GAP_METRICS)
    assert small_p <= 0.2 * 10 * len(GAP_METRICS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p_no_gap_is_small_for_a_planted_gap(seed: int) -> None:
    t = _population(seed, planted=2.0)
    _, gaps = fairness_tables(t, TASK, 0.5, ["grp"], n_boot=N_PERM, seed=seed)
    g = gaps.set_index("metric")
    for metric in ("fnr_gap", "equalized_odds_difference"):
        assert g.loc[metric, "p_no_gap"] <= 0.01, metric
        # never 0: the smallest p-value N_PERM permutations can show
        assert g.loc[metric, "p_no_gap"] >= 1 / (N_PERM + 1)
    cols = list(gaps.columns)
    assert cols[cols.index("hi") + 1] == "p_no_gap"  # beside the interval


def _slow_permutation_p(
    t: pd.DataFrame, attr: str, threshold: float, n_perm: int, seed: int
) -> dict[str, float]:
    """Reference: units are (patient, group) pairs in sorted order (one per patient when
    the attribute is constant within patients); each permutation shuffles their group
    labels with the same generator, rebuilds the rows' groups and scores the gaps with
    Fairlearn; a gap some group lacks the class for is undefined and not counted."""
    y = t[TASK].astype(int).to_numpy()
    yp = (t[f"p_{TASK}"] >= threshold).astype(int).to_numpy()
    groups = sorted(t[attr].astype(str).unique())
    code = t[attr].astype(str).map({g: k for k, g in enumerate(groups)}).to_numpy()
    patients = sorted(t["patient_id"].unique())
    pidx = t["patient_id"].map({p: k for k, p in enumerate(patients)}).to_numpy()
    units = sorted(set(zip(pidx.tolist(), code.tolist(), strict=True)))
    unit_of_row = [units.index((a, b)) for a, b in zip(pidx, code, strict=True)]
    unit_group = np.array([g for _, g in units])

    def gaps(c: np.ndarray) -> dict[str, float]:
        return fairlearn_gaps(y, yp, c, list(range(len(groups))))

    observed = gaps(code)
    rng = np.random.default_rng((seed, 1))
    perms = [gaps(rng.permutation(unit_group)[unit_of_row]) for _ in range(n_perm)]
    out = {}
    for metric in GAP_METRICS:
        v = np.array([r[metric] for r in perms])
        v = v[np.isfinite(v)]
        out[metric] = (1 + int((v >= observed[metric] - 1e-12).sum())) / (1 + v.size)
    return out


def test_p_no_gap_equals_a_slow_fairlearn_permutation_of_whole_patients() -> None:
    t = _population(3, planted=0.7, n_patients=60)
    # a patient whose images fall in two groups (an age bin that changed between visits)
    two = t.index[t["patient_id"] == t.groupby("patient_id").size().idxmax()]
    assert len(two) >= 2
    t["visit_grp"] = t["grp"]
    t.loc[two[: len(two) // 2], "visit_grp"] = "A"
    t.loc[two[len(two) // 2 :], "visit_grp"] = "B"
    for attr in ("grp", "visit_grp"):
        _, gaps = fairness_tables(t, TASK, 0.5, [attr], min_per_class=1, n_boot=60, seed=4)
        ref = _slow_permutation_p(t, attr, 0.5, 60, 4)
        g = gaps.set_index("metric")
        for metric, p in ref.items():
            assert g.loc[metric, "p_no_gap"] == pytest.approx(p, abs=1e-12), (attr, metric)


def _clustered_null(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """80 patients of 6 images, group per patient at random (no gap), labels and
    predictions strongly correlated within a patient."""
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(80), 6)
    group = (rng.random(80) < 0.5).astype(int)[patient]
    sick = rng.random(80) < 0.4
    y = np.where(rng.random(patient.size) < 0.85, sick[patient], ~sick[patient]).astype(int)
    effect = rng.normal(0, 2, 80)[patient]
    y_pred = ((2 * y - 1) + effect + rng.normal(size=patient.size) > 0).astype(int)
    return y, y_pred, group, patient


def test_permuting_whole_patients_keeps_the_test_calibrated_with_correlated_images() -> None:
    """Shuffling rows instead of patients counts a patient's correlated images as
    independent evidence: too many small p-values under no gap."""
    by_patient, by_row = [], []
    for seed in range(60):
        y, y_pred, group, patient = _clustered_null(seed)
        kw = {"n_perm": N_PERM, "seed": seed}
        by_patient.append(permutation_p_values(y, y_pred, group, 2, patient, **kw))
        by_row.append(permutation_p_values(y, y_pred, group, 2, np.arange(y.size), **kw))
    share = {
        name: np.mean([r["fnr_gap"][0] < 0.05 for r in runs])
        for name, runs in (("patient", by_patient), ("row", by_row))
    }
    assert share["patient"] <= 0.1 and share["row"] >= 0.15, share
    assert all(r[m][1] == 0 for r in by_patient for m in GAP_METRICS)  # none undefined


def test_p_no_gap_does_not_depend_on_row_order_and_follows_the_seed() -> None:
    t = _population(6, planted=0.5)
    _, a = fairness_tables(t, TASK, 0.5, ["grp"], n_boot=100, seed=7)
    shuffled = t.sample(frac=1.0, random_state=0).reset_index(drop=True)
    _, b = fairness_tables(shuffled, TASK, 0.5, ["grp"], n_boot=100, seed=7)
    pd.testing.assert_frame_equal(a, b)
    _, c = fairness_tables(t, TASK, 0.5, ["grp"], n_boot=100, seed=8)
    assert not np.array_equal(a["p_no_gap"].to_numpy(), c["p_no_gap"].to_numpy())
