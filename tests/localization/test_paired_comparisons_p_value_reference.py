"""``paired_comparisons``' p-value column against a slow patient bootstrap of the differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.stats.slow_bootstrap import patient_replicates, two_sided_p

from cxr_spurious.localization import summary

TASKS = ("Cardiomegaly", "Edema")


def _two_sets(seed: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """15 patients with 3 CXRs each; set ``b`` differs from ``a`` by small noise of either sign."""
    rng = np.random.default_rng(seed)
    rows, manifest = [], []
    for p in range(15):
        for k in range(3):
            cxr = f"img{p:02d}x{k}"
            manifest.append({"image_id": cxr, "patient_id": f"P{p:02d}"})
            for task in TASKS:
                iou = float(rng.uniform(0.2, 0.8))
                other = float(np.clip(iou + rng.normal(0.01, 0.08), 0, 1))
                for name, value, hit in (("a", iou, iou > 0.5), ("b", other, other > 0.45)):
                    rows.append(
                        {
                            "set": name,
                            "image_id": cxr,
                            "task": task,
                            "in_gt": True,
                            "iou_tp": value,
                            "iou_full": value,
                            "hit": float(hit),
                        }
                    )
    return pd.DataFrame(rows), pd.DataFrame(manifest)


def test_p_value_column_is_the_two_sided_share_of_the_patient_replicates() -> None:
    per_map, manifest = _two_sets()
    out = summary.paired_comparisons(per_map, [["a", "b"]], n_boot=300, seed=4, manifest=manifest)
    assert len(out) == (len(TASKS) + 1) * len(summary.METRICS)
    patient_of = manifest.set_index("image_id")["patient_id"]
    a = per_map[per_map["set"] == "a"].set_index(["image_id", "task"])
    b = per_map[per_map["set"] == "b"].set_index(["image_id", "task"]).loc[a.index]
    checked = []
    for row in out.itertuples():
        sel = (
            np.ones(len(a), bool)
            if row.task == "overall"
            else a.index.get_level_values(1) == row.task
        )
        col = summary.METRICS[row.metric]
        diff = (a[col] - b[col]).to_numpy()[sel]
        patients = list(patient_of.loc[a.index.get_level_values(0)[sel]])
        reps = patient_replicates(
            lambda rows, d=diff: sum(d[r] for r in rows) / len(rows), patients, 300, 4
        )
        expected = two_sided_p(reps)
        assert row.p_value == pytest.approx(expected, abs=1e-12), (row.task, row.metric)
        checked.append(expected)
    # some comparisons are not significant, where a halved p-value would show
    assert any(0.05 < p < 0.95 for p in checked)
