"""Counterfactual findings' CIs against a slow patient bootstrap (patients with 3 images)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from tests.stats.slow_bootstrap import patient_replicates, percentile_interval

from cxr_spurious.study.counterfactual import counterfactual_findings

TASK = "Pneumothorax"


def _data(seed: int = 0, n_patients: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drops that vary from patient to patient, alike within the patient."""
    rng = np.random.default_rng(seed)
    manifest, rows = [], []
    for p in range(n_patients):
        reliance = rng.uniform(0.0, 0.6)  # how much this patient's scores lean on the tube
        label = float(rng.random() < 0.5)
        for k in range(3):
            image = f"p{p:02d}_{k}"
            tube = float(rng.random() < 0.6)
            base = 0.2 + 0.3 * label + rng.normal(0, 0.15)
            p_orig = base + reliance * tube
            manifest.append(
                {"image_id": image, "patient_id": f"P{p:02d}", TASK: label, "tube": tube}
            )
            for render, value in (
                ("original", p_orig),
                ("no_tube", base + rng.normal(0, 0.02)),
                ("no_lesion", p_orig - (0.1 + reliance) * label),
            ):
                rows.append({"image_id": image, "render": render, f"p_{TASK}": value})
    return pd.DataFrame(rows), pd.DataFrame(manifest)


def _mean(values: np.ndarray):
    return lambda rows: sum(values[r] for r in rows) / len(rows)


def test_cis_resample_patients() -> None:
    preds, manifest = _data()
    out = counterfactual_findings(preds, manifest, TASK, n_boot=300, seed=6)
    wide = preds.pivot(index="image_id", columns="render", values=f"p_{TASK}")
    meta = manifest.set_index("image_id").loc[wide.index]
    for render, condition in (("no_tube", meta["tube"] == 1), ("no_lesion", meta[TASK] == 1)):
        kept = wide[condition.to_numpy()]
        drop = (kept["original"] - kept[render]).to_numpy()
        patients = list(meta.loc[kept.index, "patient_id"])
        name = f"cf_drop_{render}"
        assert out[name] == pytest.approx(drop.mean())
        lo, hi = percentile_interval(patient_replicates(_mean(drop), patients, 300, 6))
        assert out[f"{name}_lo"] == pytest.approx(lo, abs=1e-12), name
        assert out[f"{name}_hi"] == pytest.approx(hi, abs=1e-12), name
    y, score = meta[TASK].to_numpy(), wide["no_tube"].to_numpy()

    def auroc(rows: list[int]) -> float:
        yy = y[rows]
        return float(roc_auc_score(yy, score[rows])) if 0 < yy.sum() < len(yy) else np.nan

    reps = patient_replicates(auroc, list(meta["patient_id"]), 300, 6)
    lo, hi = percentile_interval(reps)
    assert out["cf_auroc_no_tube"] == pytest.approx(roc_auc_score(y, score))
    assert out["cf_auroc_no_tube_lo"] == pytest.approx(lo, abs=1e-12)
    assert out["cf_auroc_no_tube_hi"] == pytest.approx(hi, abs=1e-12)
