"""``localization_comparisons``' ``p_adj`` against statsmodels' ``multipletests``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.localization.nodes import compare_sets

SETS = ("erm.gradcam", "box.gradcam", "seg.gradcam")


def _per_map() -> pd.DataFrame:
    """Three heatmap sets on 30 patients' maps of two tasks; seg localizes best."""
    rng = np.random.default_rng(11)
    rows = []
    for shift, name in zip((0.0, 0.05, 0.2), SETS):
        for p in range(30):
            for task in ("Edema", "Cardiomegaly"):
                iou = float(np.clip(0.3 + shift + rng.normal(0, 0.1), 0, 1))
                rows.append(
                    {
                        "set": name,
                        "image_id": f"patient{p:05d}_study1_view1_frontal",
                        "task": task,
                        "in_gt": True,
                        "iou_tp": iou,
                        "iou_full": iou * 0.8,
                        "hit": float(iou > 0.35),
                    }
                )
    return pd.DataFrame(rows)


def _expected(p: np.ndarray, method: str) -> np.ndarray:
    out = np.full(p.size, np.nan)
    keep = np.isfinite(p)
    out[keep] = multipletests(p[keep], method=method)[1]
    return out


def test_p_adj_is_holm_within_each_metric_and_task_over_the_pairs() -> None:
    table = compare_sets(_per_map(), None, n_boot=200, seed=0)
    assert list(table.columns[table.columns.get_loc("p_value") :][:2]) == ["p_value", "p_adj"]
    families = table.groupby(["metric", "task"])
    assert families.ngroups == 3 * 3  # 3 metrics x (2 tasks + overall)
    for _, family in families:
        assert len(family) == 3  # every pair of the 3 sets
        p = family["p_value"].to_numpy(dtype=float)
        np.testing.assert_allclose(family["p_adj"], _expected(p, "holm"))
    assert (table["p_adj"] >= table["p_value"]).all()
    assert set(table["p_adj_note"]) == {
        "p_adj: Holm (family-wise error) over each metric and task; the intervals are not adjusted"
    }


def test_the_table_family_and_the_method_follow_the_parameter() -> None:
    settings = {"method": "fdr_bh", "family": "table"}
    table = compare_sets(_per_map(), None, n_boot=200, seed=0, multiplicity=settings)
    np.testing.assert_allclose(
        table["p_adj"], _expected(table["p_value"].to_numpy(dtype=float), "fdr_bh")
    )
    assert "Benjamini-Hochberg" in table["p_adj_note"].iloc[0]


def test_a_bad_multiplicity_setting_names_the_key() -> None:
    with pytest.raises(ParameterError, match="localization.multiplicity.method"):
        compare_sets(_per_map(), None, n_boot=20, seed=0, multiplicity={"method": "sidak"})
    with pytest.raises(ParameterError, match=r"localization.multiplicity.*\['alpha'\]"):
        compare_sets(_per_map(), None, n_boot=20, seed=0, multiplicity={"alpha": 0.05})
