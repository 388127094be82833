"""``compute_test_metrics``' CIs against a slow patient bootstrap (patients with 3 images)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from tests.stats.slow_bootstrap import patient_replicates, percentile_interval

from cxr_spurious.training.outputs import compute_test_metrics

TASK = "Pneumothorax"


def _data(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """60 test patients (and 10 validation patients) with 3 images alike within the patient."""
    rng = np.random.default_rng(seed)
    manifest, preds = [], []
    for p in range(70):
        label = float(rng.random() < 0.5)
        level = rng.normal(0.5 * label, 0.3)
        for k in range(3):
            image = f"p{p:02d}_{k}"
            manifest.append(
                {
                    "image_id": image,
                    "patient_id": f"P{p:02d}",
                    "split": "test" if p < 60 else "val",
                    TASK: label,
                    "tube": float(rng.random() < 0.3 + 0.4 * label),
                }
            )
            preds.append({"image_id": image, f"p_{TASK}": level + rng.normal(0, 0.1)})
    return pd.DataFrame(preds), pd.DataFrame(manifest)


def _auroc(y: np.ndarray, s: np.ndarray, keep: np.ndarray):
    def statistic(rows: list[int]) -> float:
        kept = [r for r in rows if keep[r]]
        yy = y[kept]
        return float(roc_auc_score(yy, s[kept])) if 0 < yy.sum() < len(yy) else np.nan

    return statistic


def test_test_metric_cis_resample_patients() -> None:
    preds, manifest = _data()
    out = compute_test_metrics(preds, manifest, [TASK], "tube", n_boot=300, seed=5)[TASK]
    test = manifest[manifest["split"] == "test"].merge(preds, on="image_id")
    y, s, t = test[TASK].to_numpy(), test[f"p_{TASK}"].to_numpy(), test["tube"].to_numpy()
    patients = list(test["patient_id"])
    for name, keep in (
        ("auroc", np.ones(len(y), bool)),
        ("robust_auroc", ((y == 1) & (t == 0)) | ((y == 0) & (t == 1))),
        ("reverse_auroc", ((y == 1) & (t == 1)) | ((y == 0) & (t == 0))),
    ):
        assert out[name] == pytest.approx(roc_auc_score(y[keep], s[keep])), name
        reps = patient_replicates(_auroc(y, s, keep), patients, 300, 5)
        lo, hi = percentile_interval(reps)
        assert out[f"{name}_lo"] == pytest.approx(lo, abs=1e-12), name
        assert out[f"{name}_hi"] == pytest.approx(hi, abs=1e-12), name
    assert out["ci_note"] == ""
