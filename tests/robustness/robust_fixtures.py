"""A tiny synthetic evaluation table for the robustness tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
)

TASK = "Pneumothorax"


def fairlearn_gaps(y: object, y_pred: object, groups: object, names: list) -> dict[str, float]:
    """The three gaps as Fairlearn computes them (the tests' reference): FNR and FPR gaps
    (``MetricFrame.difference``) and the equalized-odds difference; a gap that needs a class
    one of ``names`` lacks is NaN, as the project reports it."""
    yy, gg = np.asarray(y), np.asarray(groups)
    has_pos = all(((gg == g) & (yy == 1)).any() for g in names)
    has_neg = all(((gg == g) & (yy == 0)).any() for g in names)
    diff = MetricFrame(
        metrics={"fnr": false_negative_rate, "fpr": false_positive_rate},
        y_true=y,
        y_pred=y_pred,
        sensitive_features=groups,
    ).difference()
    return {
        "equalized_odds_difference": float(
            equalized_odds_difference(y, y_pred, sensitive_features=groups)
        )
        if has_pos and has_neg
        else np.nan,
        "fnr_gap": float(diff["fnr"]) if has_pos else np.nan,
        "fpr_gap": float(diff["fpr"]) if has_neg else np.nan,
    }


def make_table(n_patients: int = 150, seed: int = 0) -> pd.DataFrame:
    """Scores good for sex M, poor for F; tube confounded with the label."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        sex = "F" if p % 3 == 0 else "M"
        split = "val" if p % 2 else "test"
        for k in range(1 + p % 2):
            y = float(rng.random() < 0.4)
            tube = float(rng.random() < (0.8 if y else 0.2))
            signal = 1.5 if sex == "M" else 0.3
            logit = signal * (2 * y - 1) + 1.5 * (2 * tube - 1) + rng.normal()
            rows.append(
                {
                    "image_id": f"p{p}_{k}",
                    "patient_id": f"p{p}",
                    "split": split,
                    TASK: y,
                    f"p_{TASK}": 1 / (1 + np.exp(-logit)),
                    "sex": sex,
                    "site": "a" if rng.random() < 0.5 else "b",
                    "tube": tube,
                }
            )
    return pd.DataFrame(rows)


def outlier_data(
    n: int, n_features: int, n_outliers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores and embeddings: ``n`` images, half positives scored 0.9 and half
    negatives scored 0.1 (no errors), except ``n_outliers`` negatives far away in embedding
    space (``n_features`` dimensions) that the model calls positive (0.99)."""
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(float)
    x = rng.normal(size=(n, n_features))
    p = np.where(y == 1, 0.9, 0.1)
    odd = np.flatnonzero(y == 0)[:n_outliers]
    x[odd] += 60.0
    p[odd] = 0.99
    return y, p, x
