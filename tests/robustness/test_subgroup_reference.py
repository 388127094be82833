"""Robustness AUROCs against references: the overall CI resamples patients (slow patient
bootstrap with scikit-learn's AUROC), and the paired test pairs rows by ``image_id``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from tests.stats.slow_bootstrap import patient_replicates, percentile_interval

from cxr_spurious.robustness.subgroups import paired_auroc_test, subgroup_auroc

TASK = "Pneumothorax"


def _table(seed: int = 0, n_patients: int = 40, per_patient: int = 3) -> pd.DataFrame:
    """Patients with several images whose labels and scores are alike within the patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(rng.random() < 0.5)
        level = rng.normal(0.6 * label, 0.3)
        for k in range(per_patient):
            rows.append(
                {
                    "image_id": f"i{p:02d}_{k}",
                    "patient_id": f"P{p:02d}",
                    TASK: label if rng.random() < 0.9 else 1 - label,
                    f"p_{TASK}": float(level + rng.normal(0, 0.1)),
                    "tube": int(rng.random() < 0.4 + 0.3 * label),
                }
            )
    return pd.DataFrame(rows)


def _auroc(y: np.ndarray, s: np.ndarray):
    def statistic(rows: list[int]) -> float:
        yy = y[rows]
        return float(roc_auc_score(yy, s[rows])) if 0 < yy.sum() < len(yy) else np.nan

    return statistic


def test_overall_auroc_ci_resamples_patients() -> None:
    table = _table()
    out = subgroup_auroc(table, TASK, [], spurious=None, n_boot=300, seed=3)
    row = out[(out["metric"] == "auroc") & (out["group"] == "all")].iloc[0]
    y, s = table[TASK].to_numpy(), table[f"p_{TASK}"].to_numpy()
    reps = patient_replicates(_auroc(y, s), list(table["patient_id"]), 300, 3)
    lo, hi = percentile_interval(reps)
    assert row["estimate"] == pytest.approx(roc_auc_score(y, s))
    assert (row["lo"], row["hi"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert row["n_dropped"] == int(np.isnan(reps).sum())


@pytest.mark.parametrize("metric", ["auroc", "robust_auroc"])
def test_paired_test_pairs_the_rows_by_image_id(metric: str) -> None:
    table_a = _table(seed=1)
    rng = np.random.default_rng(2)
    table_b = table_a.assign(
        **{f"p_{TASK}": table_a[f"p_{TASK}"] + rng.normal(0, 0.3, len(table_a))}
    )
    aligned = paired_auroc_test(table_a, table_b, TASK, metric=metric, n_boot=200, seed=0)
    shuffled = table_b.sample(frac=1.0, random_state=7).reset_index(drop=True)
    assert not shuffled["image_id"].equals(table_b["image_id"])
    out = paired_auroc_test(table_a, shuffled, TASK, metric=metric, n_boot=200, seed=0)
    assert out == pytest.approx(aligned, abs=1e-12)
    # and the difference itself is that of the paired scores
    y, t = table_a[TASK].to_numpy(), table_a["tube"].to_numpy()
    keep = (
        np.ones(len(y), bool)
        if metric == "auroc"
        else ((y == 1) & (t == 0)) | ((y == 0) & (t == 1))
    )
    expected = roc_auc_score(y[keep], table_a[f"p_{TASK}"][keep]) - roc_auc_score(
        y[keep], table_b[f"p_{TASK}"][keep]
    )
    assert out["difference"] == pytest.approx(expected, abs=1e-12)
