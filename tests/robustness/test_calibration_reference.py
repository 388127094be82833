"""ECE against a by-hand computation: only test rows, only labelled rows, patient CIs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from tests.stats.slow_bootstrap import patient_replicates, percentile_interval

from cxr_spurious.pipelines.robustness.nodes import compute_calibration
from cxr_spurious.robustness.calibration import calibration_table

TASK = "Pneumothorax"


def _ece(labels: list[float], scores: list[float], n_bins: int = 10) -> float:
    """ECE written out: bin m holds scores in (m / n_bins, (m + 1) / n_bins], 0.0 in bin 0."""
    bins: dict[int, list[tuple[float, float]]] = {}
    for y, p in zip(labels, scores):
        if math.isnan(y) or math.isnan(p):
            continue
        m = min(max(math.ceil(p * n_bins) - 1, 0), n_bins - 1)
        bins.setdefault(m, []).append((y, p))
    n = sum(len(v) for v in bins.values())
    if n == 0:
        return float("nan")
    return sum(
        len(v) / n * abs(sum(y for y, _ in v) / len(v) - sum(p for _, p in v) / len(v))
        for v in bins.values()
    )


def _table(seed: int = 0) -> pd.DataFrame:
    """Test rows fairly calibrated, validation rows badly (scores far above the labels)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(80):
        split = "test" if p < 50 else "val"
        for k in range(2):
            score = float(rng.uniform(0.02, 0.98))
            label = float(rng.random() < (score if split == "test" else 0.1 * score))
            rows.append(
                {
                    "image_id": f"i{p:02d}_{k}",
                    "patient_id": f"P{p:02d}",
                    "split": split,
                    "sex": "F" if p % 2 else "M",
                    TASK: label,
                    f"p_{TASK}": score,
                }
            )
    return pd.DataFrame(rows)


def test_ece_is_computed_on_the_test_split_only() -> None:
    table = _table()
    out = compute_calibration(
        table, [TASK], ["sex"], n_bins=10, min_rows=5, n_boot=200, seed=3, ci_level=0.95
    )
    test = table[table["split"] == "test"].reset_index(drop=True)
    y, p = test[TASK].tolist(), test[f"p_{TASK}"].tolist()
    whole = _ece(table[TASK].tolist(), table[f"p_{TASK}"].tolist())
    row = out[out["group"] == "all"].iloc[0]
    assert row["n"] == len(test)
    assert row["ece"] == pytest.approx(_ece(y, p), abs=1e-12)
    assert abs(whole - _ece(y, p)) > 0.05  # the validation rows would change it
    reps = patient_replicates(
        lambda rows: _ece([y[r] for r in rows], [p[r] for r in rows]),
        list(test["patient_id"]),
        200,
        3,
    )
    lo, hi = percentile_interval(reps)
    assert (row["ece_lo"], row["ece_hi"]) == (
        pytest.approx(lo, abs=1e-12),
        pytest.approx(hi, abs=1e-12),
    )
    for sex in ("F", "M"):
        sub = test[test["sex"] == sex]
        group = out[(out["attribute"] == "sex") & (out["group"] == sex)].iloc[0]
        assert group["n"] == len(sub)
        assert group["ece"] == pytest.approx(
            _ece(sub[TASK].tolist(), sub[f"p_{TASK}"].tolist()), abs=1e-12
        )


def test_rows_without_a_label_are_left_out() -> None:
    table = _table()
    table = table[table["split"] == "test"].reset_index(drop=True)
    unlabelled = np.random.default_rng(4).random(len(table)) < 0.3
    table.loc[unlabelled, TASK] = np.nan
    out = calibration_table(table, TASK, ["sex"], n_bins=10, min_rows=5, n_boot=100, seed=0)
    labelled = table[~unlabelled]
    row = out[out["group"] == "all"].iloc[0]
    assert row["n"] == len(labelled) < len(table)
    assert row["ece"] == pytest.approx(
        _ece(labelled[TASK].tolist(), labelled[f"p_{TASK}"].tolist()), abs=1e-12
    )
    for sex in ("F", "M"):
        group = out[(out["attribute"] == "sex") & (out["group"] == sex)].iloc[0]
        assert group["n"] == int((labelled["sex"] == sex).sum())
