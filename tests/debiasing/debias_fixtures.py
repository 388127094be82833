"""Tiny synthetic manifests for the debiasing tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

TASK = "Pneumothorax"


def make_manifest(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    """A small manifest: 1-3 images per patient, unbalanced sex, patient-disjoint splits."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        split = (
            "train"
            if p < int(0.6 * n_patients)
            else ("val" if p < int(0.8 * n_patients) else "test")
        )
        sex = "F" if rng.random() < 0.3 else "M"
        age = float(rng.integers(5, 95))
        for k in range(int(rng.integers(1, 4))):
            rows.append(
                {
                    "image_id": f"patient{p:05d}_study1_view{k + 1}_frontal",
                    "patient_id": f"patient{p:05d}",
                    "study_id": f"patient{p:05d}_study1",
                    "source": "phantom",
                    "split": split,
                    "path": f"/x/{p}_{k}.png",
                    "view": "PA",
                    "width": 96,
                    "height": 96,
                    TASK: float(rng.random() < 0.4),
                    "sex": sex,
                    "age_years": age,
                    "race": "A" if rng.random() < 0.5 else "B",
                    "insurance": "public",
                    "site": "s1" if p % 2 else "s2",
                    "tube": float(rng.random() < 0.5),
                }
            )
    df = pd.DataFrame(rows)
    df.attrs["tasks"] = [TASK]
    return df
