"""study_findings: saliency metrics, human gap, table assembly and the MLflow flattening."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ContractError
from cxr_spurious.study.findings import (
    assemble_findings,
    findings_metrics,
    model_row,
    saliency_findings,
)


def _inputs(n: int = 40):
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(n)]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "tube": [float(i % 2) for i in range(n)],
        }
    )
    per_map = pd.DataFrame(
        {
            "image_id": ids,
            "task": "Pneumothorax",
            "gt": (np.arange(n) < 30).astype(float),
            "iou_tp": np.where(np.arange(n) < 30, rng.uniform(0.1, 0.5, n), np.nan),
            "hit": np.where(np.arange(n) < 30, (np.arange(n) % 3 == 0).astype(float), np.nan),
            "shortcut_Chest Tube": np.where(np.arange(n) % 2 == 1, 0.6, 0.0),
            "shortcut_auroc_Chest Tube": np.where(
                np.arange(n) % 2 == 1, np.where(np.arange(n) < 20, 0.9, 0.7), np.nan
            ),
        }
    )
    human = pd.DataFrame(
        {
            "image_id": ids,
            "task": "Pneumothorax",
            "iou_tp": np.where(np.arange(n) < 30, 0.8, np.nan),
            "hit": np.where(np.arange(n) < 30, 1.0, np.nan),
        }
    )
    return per_map, manifest, human


def test_saliency_findings_values_and_cis() -> None:
    per_map, manifest, human = _inputs()
    out = saliency_findings(per_map, manifest, human, n_boot=200, seed=0)
    assert out["miou"] == pytest.approx(per_map["iou_tp"].mean())
    assert out["hit_rate"] == pytest.approx(per_map["hit"].mean())
    # Tube mass is averaged over images that have a tube only.
    assert out["tube_mass"] == pytest.approx(0.6)
    assert out["tube_mass_no_finding"] == pytest.approx(0.6)  # the 5 odd ids >= 30
    per_map.loc[per_map.index >= 30, "shortcut_Chest Tube"] = 0.2
    again = saliency_findings(per_map, manifest, human, n_boot=200, seed=0)
    assert again["tube_mass_no_finding"] == pytest.approx(0.2)
    assert again["tube_mass"] == pytest.approx((15 * 0.6 + 5 * 0.2) / 20)
    assert again["tube_mass_no_finding_lo"] <= 0.2 <= again["tube_mass_no_finding_hi"]
    assert out["tube_auroc"] == pytest.approx(0.8)  # 10 tube images at 0.9, 10 at 0.7
    assert out["tube_auroc_lo"] < 0.8 < out["tube_auroc_hi"]
    assert out["miou_lo"] <= out["miou"] <= out["miou_hi"]
    expected_gap = (0.8 - per_map["iou_tp"].iloc[:30].mean()) / 0.8 * 100
    assert out["miou_pct_below_human"] == pytest.approx(expected_gap)
    assert out["miou_pct_below_human_lo"] < expected_gap < out["miou_pct_below_human_hi"]
    assert np.isnan(out["lesion_mass"])  # no relevance_mass column in this input


def test_mass_shares_count_the_all_zero_maps_they_leave_out() -> None:
    per_map, manifest, human = _inputs()
    per_map["gt_area"] = np.where(per_map["gt"] == 1, 50.0, 0.0)
    per_map["relevance_mass"] = np.where(per_map["gt"] == 1, 0.5, np.nan)
    # all-zero maps have no share: three lesion images, two tube images without the finding
    per_map.loc[[0, 2, 4], "relevance_mass"] = np.nan
    per_map.loc[[31, 33], "shortcut_Chest Tube"] = np.nan
    out = saliency_findings(per_map, manifest, human, n_boot=50, seed=0)
    assert (out["lesion_mass_n_maps"], out["lesion_mass_n_nonzero"]) == (30, 27)
    assert (out["tube_mass_n_maps"], out["tube_mass_n_nonzero"]) == (20, 18)
    assert (out["tube_mass_no_finding_n_maps"], out["tube_mass_no_finding_n_nonzero"]) == (5, 3)
    assert out["tube_mass_no_finding"] == pytest.approx(0.6)  # averaged over the 3 with mass
    assert "tube_auroc_n_maps" not in out
    # without the input columns the counts are absent (lesion) or zero (tube)
    bare = saliency_findings(
        per_map.drop(columns=["gt_area", "shortcut_Chest Tube"]), manifest, human, n_boot=50, seed=0
    )
    assert "lesion_mass_n_maps" not in bare
    assert (bare["tube_mass_n_maps"], bare["tube_mass_n_nonzero"]) == (20, 0)


def test_saliency_findings_without_human_benchmark_is_nan() -> None:
    per_map, manifest, _ = _inputs()
    out = saliency_findings(per_map, manifest, None, n_boot=50, seed=0)
    assert np.isnan(out["miou_pct_below_human"]) and np.isfinite(out["miou"])


def test_model_row_and_assembly() -> None:
    metrics = {
        "n_test": 10,
        "Pneumothorax": {
            "auroc": 0.9,
            "auroc_lo": 0.8,
            "auroc_hi": 0.95,
            "robust_auroc": 0.3,
            "robust_auroc_lo": 0.2,
            "robust_auroc_hi": 0.4,
            "reverse_auroc": 1.0,
            "reverse_auroc_lo": 1.0,
            "reverse_auroc_hi": 1.0,
        },
    }
    row = model_row(
        "erm",
        {"name": "erm", "supervision": "erm", "architecture": "resnet18"},
        metrics,
        "Pneumothorax",
    )
    table = assemble_findings(
        [{**row, "gradcam_miou": 0.1}, {**row, "model": "seg", "gradcam_miou": np.nan}]
    )
    assert list(table.columns[:5]) == ["model", "supervision", "architecture", "task", "n_test"]
    flat = findings_metrics(table)
    assert flat["erm.robust_auroc"] == {"value": 0.3, "step": 0}
    assert "seg.gradcam_miou" not in flat  # NaN is not logged
    with pytest.raises(ContractError, match="no entry for task 'Edema'"):
        model_row("erm", {}, metrics, "Edema")
    assert row["architecture"] == "resnet18"  # no record from training: the study's parameters


def test_model_row_names_what_training_recorded() -> None:
    metrics = {
        "supervision": "box",
        "architecture": "cnn_small",
        "n_test": 4,
        "Pneumothorax": {"auroc": 0.8},
    }
    variant = {"name": "erm", "supervision": "erm", "architecture": "resnet18"}
    row = model_row("erm", variant, metrics, "Pneumothorax")
    assert (row["supervision"], row["architecture"]) == ("box", "cnn_small")
    # test metrics written before the rename record the supervision as ``method``
    before_rename = {k: v for k, v in metrics.items() if k != "supervision"} | {"method": "seg"}
    assert model_row("erm", variant, before_rename, "Pneumothorax")["supervision"] == "seg"
    unrecorded = {"Pneumothorax": {"auroc": 0.8}}
    assert model_row("erm", variant, unrecorded, "Pneumothorax")["supervision"] == "erm"


def test_a_map_of_an_image_outside_the_manifest_is_named() -> None:
    """The patient bootstrap needs every CXR's patient: a map of an image the manifest does
    not hold is a ContractError naming it and the set, not a TypeError from the sort."""
    per_map, manifest, human = _inputs()
    per_map.loc[5, "image_id"] = "ghost1"
    with pytest.raises(ContractError, match=r"1 CXR\(s\) of the maps of erm/gradcam.*ghost1"):
        saliency_findings(per_map, manifest, human, n_boot=20, seed=0, label="erm/gradcam")
    with pytest.raises(ContractError, match="no patient_id column"):
        saliency_findings(per_map, manifest.drop(columns="patient_id"), human, n_boot=20, seed=0)
