"""A sweep model's row against references: AUROC CIs resample patients (slow patient
bootstrap, scikit-learn AUROC) and per-image saliency values are matched by ``image_id``
whatever the order of the saliency table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from tests.stats.slow_bootstrap import patient_replicates, percentile_interval

from cxr_spurious.sweep.metrics import model_metrics

N = 120  # 40 patients with 3 test images each


def _table(seed: int = 0) -> pd.DataFrame:
    """Test images whose label, artefact and scores are alike within the patient."""
    rng = np.random.default_rng(seed)
    patient = np.arange(N) // 3
    per_patient = (rng.random(N // 3) < 0.5).astype(float)
    label = per_patient[patient]
    has = rng.random(N) < 0.3 + 0.4 * label
    level = rng.normal(0.3 * per_patient, 0.2)[patient]
    original = level + rng.normal(0, 0.05, N)
    return pd.DataFrame(
        {
            "image_id": [f"t{i:03d}" for i in range(N)],
            "patient_id": [f"p{k:02d}" for k in patient],
            "label": label,
            "has_artefact": has,
            "p_original": original,
            "p_with_artefact": original + 0.2 + 0.05 * rng.random(N),
            "p_no_lesion": original - 0.3 * label,
        }
    )


def _auroc_statistic(y: np.ndarray, s: np.ndarray):
    def statistic(rows: list[int]) -> float:
        yy = y[rows]
        return float(roc_auc_score(yy, s[rows])) if 0 < yy.sum() < len(yy) else np.nan

    return statistic


def _nanmean_statistic(values: np.ndarray):
    def statistic(rows: list[int]) -> float:
        kept = [values[r] for r in rows if np.isfinite(values[r])]
        return sum(kept) / len(kept) if kept else np.nan

    return statistic


def _assert_ci(row: dict, name: str, reps: np.ndarray) -> None:
    lo, hi = percentile_interval(reps)
    assert row[f"{name}_lo"] == pytest.approx(lo, abs=1e-12), name
    assert row[f"{name}_hi"] == pytest.approx(hi, abs=1e-12), name


def test_auroc_cis_resample_patients() -> None:
    table = _table()
    row = model_metrics(table, n_boot=300, seed=4)
    y, has = table["label"].to_numpy(), table["has_artefact"].to_numpy()
    score = np.where(has, table["p_with_artefact"], table["p_original"])
    robust = ((y == 1) & ~has) | ((y == 0) & has)
    patients = list(table["patient_id"])
    reps = patient_replicates(_auroc_statistic(y, score), patients, 300, 4)
    assert row["auroc"] == pytest.approx(roc_auc_score(y, score))
    _assert_ci(row, "auroc", reps)
    robust_score = np.where(robust, score, np.nan)
    robust_y = np.where(robust, y, np.nan)

    def robust_statistic(rows: list[int]) -> float:
        kept = [r for r in rows if robust[r]]
        return _auroc_statistic(robust_y, robust_score)(kept)

    _assert_ci(row, "robust_auroc", patient_replicates(robust_statistic, patients, 300, 4))


def test_saliency_values_are_matched_by_image_id() -> None:
    table = _table()
    has = table["has_artefact"].to_numpy()
    rng = np.random.default_rng(1)
    values: dict[str, pd.DataFrame] = {}
    frames = []
    for k, method in enumerate(("gradcam", "occlusion")):
        frame = pd.DataFrame(
            {
                "image_id": table["image_id"],
                "method": method,
                "iou": np.where(table["label"] == 1, rng.random(N), np.nan),
                "hit": np.where(table["label"] == 1, rng.integers(0, 2, N), np.nan),
                "artefact_mass": rng.random(N),
                "artefact_auroc": rng.random(N),
                "artefact_area": np.where(has, rng.uniform(0.01, 0.1, N), 0.0),
            }
        )
        values[method] = frame.set_index("image_id")
        frames.append(frame.sample(frac=1.0, random_state=10 + k))  # any row order
    row = model_metrics(table, pd.concat(frames, ignore_index=True), n_boot=200, seed=2)
    patients = list(table["patient_id"])
    ids = table["image_id"]
    for method, by_id in values.items():
        for column, suffix in (
            ("iou", "miou"),
            ("hit", "hit_rate"),
            ("artefact_mass", "artefact_mass"),
            ("artefact_auroc", "artefact_auroc"),
        ):
            v = by_id.loc[ids, column].to_numpy(dtype=float)
            if column.startswith("artefact"):
                v = np.where(has, v, np.nan)  # only images that carry the artefact
            name = f"{method}_{suffix}"
            assert row[name] == pytest.approx(np.nanmean(v)), name
            _assert_ci(row, name, patient_replicates(_nanmean_statistic(v), patients, 200, 2))
    # the artefact's area is a property of the image: the first method's value per image
    area = values["gradcam"].loc[ids, "artefact_area"].to_numpy()[has]
    assert row["artefact_area"] == pytest.approx(area.mean())
