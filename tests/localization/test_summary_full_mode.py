"""``miou_full`` of the project tables is scored on the rows of the reference's full mode.

CheXlocalize's ``eval.py`` with ``--true_pos_only False`` (``get_ious``) scores the CXRs of
the ground truth and then every predicted CXR that is not in it, against an empty mask:
a false positive there is IoU 0, an empty prediction NaN (left out of the mean). The
reference-layout ``iou_results_per_cxr`` of this project (``per_cxr_table(...,
include_outside_gt=True)``) keeps those rows; ``localization_summary`` used to drop them
(``in_gt`` filter), so one per-map table gave two "full-mode mIoUs" (0.5 against 0.25
below). ``miou_tp`` and ``hit_rate`` stay on the CXRs in the ground truth.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils
from tests.localization.test_summary_bootstrap import slow_patient_ci

from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization import summary
from cxr_spurious.localization.metrics import segmentation_table
from cxr_spurious.pipelines.localization.nodes import build_reference_reports

H = W = 8
OUTSIDE_EMPTY = "patient00099_study1_view1_frontal"  # a map outside the gt, empty mask


def _cxr(i: int) -> str:
    return f"patient{i:05d}_study1_view1_frontal"


def _auditor_table() -> pd.DataFrame:
    """6 gt CXRs whose prediction has IoU 0.5 (Edema) and 0 (Cardiomegaly: gt empty, a
    false positive), 6 CXRs outside the gt with full-image false positives, and one
    outside the gt whose prediction is empty (NaN in full mode, in no mean)."""
    full = np.ones((H, W), np.uint8)
    half = np.zeros((H, W), np.uint8)
    half[:, :4] = 1
    empty = np.zeros((H, W), np.uint8)
    gt = {_cxr(i): {"Edema": encode_rle(half), "Cardiomegaly": encode_rle(empty)} for i in range(6)}
    pred = {
        _cxr(i): {"Edema": encode_rle(full), "Cardiomegaly": encode_rle(full)} for i in range(12)
    }
    pred[OUTSIDE_EMPTY] = {"Edema": encode_rle(empty), "Cardiomegaly": encode_rle(empty)}
    table = segmentation_table(pred, gt, tasks=["Edema", "Cardiomegaly"])
    hit = np.where(table["in_gt"] & (table["gt_area"] > 0), 1.0, np.nan)
    return table.assign(set="m.gradcam", model="m", method="gradcam", hit=hit)


def test_miou_full_equals_the_reference_layout_full_mode_of_the_same_table():
    per_map = _auditor_table()
    table = summary.summary_table(per_map, n_boot=200, seed=0, by=("set",))
    reports = build_reference_reports(
        per_map, pd.DataFrame(), n_boot=50, seed=0, true_pos_only=False
    )
    per_cxr = reports["iou_results_per_cxr"]
    assert len(per_cxr) == 13  # the reference's rows: 6 gt CXRs and 7 predicted outside it
    for task in ("Edema", "Cardiomegaly"):
        row = table[table["task"] == task].iloc[0]
        assert row["miou_full"] == pytest.approx(per_cxr[task].mean(), abs=1e-12)
        assert row["n_cxr_full"] == 13 and row["n_maps_full"] == 13 and row["n_cxr"] == 6
    edema = table[table["task"] == "Edema"].iloc[0]
    assert edema["miou_full"] == pytest.approx(0.25)  # (6 x 0.5 + 6 x 0) / 12; was 0.5
    assert edema["miou_tp"] == pytest.approx(0.5) and edema["hit_rate"] == 1.0
    cardio = table[table["task"] == "Cardiomegaly"].iloc[0]
    assert cardio["miou_full"] == 0.0 and np.isnan(cardio["miou_tp"])
    overall = table[table["task"] == "overall"].iloc[0]
    values = per_cxr[["Cardiomegaly", "Edema"]].to_numpy().ravel()
    assert overall["miou_full"] == pytest.approx(np.nanmean(values), abs=1e-12)
    assert overall["n_cxr_full"] == 13 and overall["n_maps_full"] == 26


def test_miou_full_cis_resample_the_full_mode_rows_and_the_rest_is_unchanged():
    per_map = _auditor_table()
    table = summary.summary_table(per_map, n_boot=300, seed=3, by=("set",))
    overall = table[table["task"] == "overall"].iloc[0]
    patients = per_map["image_id"].str.extract(r"^(patient\d+)", expand=False).tolist()
    lo, hi, dropped = slow_patient_ci(per_map["iou_full"].to_numpy(), patients, 300, 3)
    assert (overall["miou_full_lo"], overall["miou_full_hi"]) == (
        pytest.approx(lo, abs=1e-12),
        pytest.approx(hi, abs=1e-12),
    )
    assert overall["miou_full_dropped"] == dropped and overall["n_clusters_full"] == 13
    # the other metrics: the same numbers as a table of the gt CXRs alone
    in_gt = per_map[per_map["in_gt"]]
    alone = summary.summary_table(in_gt, n_boot=300, seed=3, by=("set",))
    kept = [c for c in alone.columns if not c.startswith("miou_full") and not c.endswith("_full")]
    pd.testing.assert_frame_equal(table[kept], alone[kept])


def test_paired_comparisons_and_subgroups_score_miou_full_on_the_same_rows():
    a = _auditor_table()
    b = a.assign(set="s.gradcam", method="other")
    b.loc[b["in_gt"] & (b["task"] == "Edema"), "iou_full"] = 0.25
    both = pd.concat([a, b], ignore_index=True)
    out = summary.paired_comparisons(both, [["m.gradcam", "s.gradcam"]], n_boot=200, seed=0)
    edema = out[(out["task"] == "Edema") & (out["metric"] == "miou_full")].iloc[0]
    # 6 gt pairs differing by 0.25 and 6 outside pairs (both 0); the empty pair is NaN
    assert edema["n_maps"] == 12 and edema["diff"] == pytest.approx(0.125)
    assert set(out["task"]) == {"Edema", "Cardiomegaly", "overall"}
    tp = out[(out["task"] == "Edema") & (out["metric"] == "miou_tp")].iloc[0]
    assert tp["n_maps"] == 6  # the true-positive IoU stays on the gt CXRs
    manifest = pd.DataFrame({"image_id": sorted(a["image_id"].unique())})
    manifest["patient_id"] = manifest["image_id"].str[:12]
    manifest["sex"] = np.where(manifest.index % 2 == 0, "F", "M")
    sub = summary.subgroup_table(a, manifest, ["sex"], n_boot=200, seed=0)
    for level, rows in a.merge(manifest, on="image_id").groupby("sex"):
        wide = summary.per_cxr_table(rows, "iou_full", include_outside_gt=True)
        got = sub[(sub["level"] == level) & (sub["task"] == "Edema")].iloc[0]
        assert got["miou_full"] == pytest.approx(wide["Edema"].mean(), abs=1e-12)


def test_chexlocalize_sample_with_a_cxr_outside_the_gt(sample_dir):
    """The real sample's gt and Grad-CAM segmentations, plus patient64541's predictions
    filed under a CXR that is not in the gt: ``miou_full`` per task equals the reference
    layout of the same table and a direct computation of the reference's rules on the
    decoded masks (full mode: NaN for an empty union, a CXR outside the gt against an empty
    mask)."""
    gt = json.loads((sample_dir / "gt_segmentations_val.json").read_text())
    pred = json.loads((sample_dir / "gradcam_segmentations_val_sample.json").read_text())
    outside = "patient99999_study1_view1_frontal"
    pred[outside] = pred["patient64541_study1_view1_frontal"]
    tasks = sorted(gt["patient64541_study1_view1_frontal"])
    per_map = segmentation_table(pred, gt, tasks=tasks).assign(
        set="chexlocalize.gradcam", model="chexlocalize", method="gradcam", hit=np.nan
    )
    table = summary.summary_table(per_map, n_boot=50, seed=0, by=("set",))
    wide = summary.per_cxr_table(per_map, "iou_full", include_outside_gt=True)
    assert sorted(wide["img_id"]) == sorted([*gt, outside])
    false_positives = 0
    for task in tasks:
        ious = []
        for cxr in sorted(pred):
            p = mask_utils.decode(pred[cxr][task]).astype(bool)
            g = mask_utils.decode(gt[cxr][task]).astype(bool) if cxr in gt else np.zeros_like(p)
            union = (p | g).sum()
            ious.append((p & g).sum() / union if union else np.nan)
        false_positives += int(bool(mask_utils.decode(pred[outside][task]).any()))
        row = table[table["task"] == task].iloc[0]
        if np.isnan(ious).all():
            assert np.isnan(row["miou_full"])
            continue
        assert row["miou_full"] == pytest.approx(np.nanmean(ious), abs=1e-12)
        assert row["miou_full"] == pytest.approx(wide[task].mean(), abs=1e-12)
    assert false_positives > 0  # the outside CXR changes some task's miou_full
