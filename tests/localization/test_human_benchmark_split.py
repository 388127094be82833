"""The human benchmark is scored on the CXRs it covers, not on every split's ground truth.

Before, ``evaluate_human_benchmark`` scored the benchmark (test split only, as CheXlocalize's
and the phantom's) against every CXR of ``gt_segmentations`` (train, val and test): each
train/val pathology counted as a human miss and an empty human mask (phantom, seed 0: human
hit rate 0.197 over all rows against 1.0 on test, pooled recall 0.165 against 0.877).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ContractError
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.pipelines.localization.nodes import (
    build_reference_reports,
    evaluate_human_benchmark,
)

H, W = 20, 16
TASKS = ("Cardiomegaly", "Pneumothorax")
#: CXR -> split; the benchmark exists for the test CXRs only
SPLITS = {
    "patient1_study1_view1_frontal": "train",
    "patient2_study1_view1_frontal": "train",
    "patient3_study1_view1_frontal": "val",
    "patient4_study1_view1_frontal": "test",
    "patient5_study1_view1_frontal": "test",
    "patient6_study1_view1_frontal": "test",
}
TEST = [c for c, s in SPLITS.items() if s == "test"]


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def _fixture() -> tuple[dict, dict, dict, dict, dict]:
    """gt of every split; human masks and salient points (x, y) of the test CXRs only."""
    rng = np.random.default_rng(3)
    gt_masks, hb_masks, points = {}, {}, {}
    for k, cxr in enumerate(SPLITS):
        gt_masks[cxr] = {
            "Cardiomegaly": _box(4 + k % 3, 14, 3, 12),
            # an empty gt on the 3rd and 6th CXR: no hit defined there
            "Pneumothorax": _box(2, 8, 1 + k % 2, 9) if k % 3 != 2 else np.zeros((H, W), np.uint8),
        }
    for cxr in TEST:
        hb_masks[cxr] = {}
        points[cxr] = {}
        for task in TASKS:
            r0, c0 = int(rng.integers(0, 10)), int(rng.integers(0, 8))
            hb_masks[cxr][task] = _box(r0, r0 + 8, c0, c0 + 6)
            points[cxr][task] = [[float(rng.integers(0, W)), float(rng.integers(0, H))]]
    gt = {c: {t: encode_rle(m) for t, m in tasks.items()} for c, tasks in gt_masks.items()}
    hb = {c: {t: encode_rle(m) for t, m in tasks.items()} for c, tasks in hb_masks.items()}
    return gt, hb, points, gt_masks, hb_masks


def _by_hand_hits(gt_masks: dict, points: dict) -> pd.DataFrame:
    rows = []
    for cxr in TEST:
        for task in TASKS:
            g = gt_masks[cxr][task].astype(bool)
            x, y = points[cxr][task][0]
            hit = np.nan if not g.any() else float(g[int(y), int(x)])
            rows.append({"image_id": cxr, "task": task, "hit": hit})
    return pd.DataFrame(rows)


def _by_hand_prs(gt_masks: dict, hb_masks: dict) -> pd.DataFrame:
    """Pixel counts pooled over the benchmark's CXRs (numpy on the decoded masks)."""
    rows = []
    for task in TASKS:
        g = np.stack([gt_masks[c][task] for c in TEST]).astype(bool)
        h = np.stack([hb_masks[c][task] for c in TEST]).astype(bool)
        tp, fp, fn, tn = (g & h).sum(), (~g & h).sum(), (g & ~h).sum(), (~g & ~h).sum()
        rows.append(
            {
                "pathology": task,
                "precision": tp / (tp + fp) if tp + fp else np.nan,
                "recall/sensitivity": tp / (tp + fn) if tp + fn else np.nan,
                "specificity": tn / (tn + fp),
            }
        )
    return pd.DataFrame(rows)


def test_the_benchmark_is_scored_on_the_cxrs_it_covers(caplog) -> None:
    gt, hb, points, gt_masks, hb_masks = _fixture()
    with caplog.at_level(logging.INFO):
        table = evaluate_human_benchmark(gt, hb, points)
    assert sorted(table["image_id"].unique()) == TEST  # no train / val row
    assert "human benchmark: 3 CXR(s) of gt_segmentations' 6 are covered" in caplog.text

    expected = _by_hand_hits(gt_masks, points)
    got = table[["image_id", "task", "hit"]].sort_values(["image_id", "task"])
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True),
        expected.sort_values(["image_id", "task"]).reset_index(drop=True),
    )
    # the fixture has both hits and misses, so a wrong row set cannot pass by chance
    assert set(expected["hit"].dropna()) == {0.0, 1.0}

    per_map = table.assign(set="m.gradcam", model="m", method="gradcam", prob=0.5)
    reports = build_reference_reports(per_map, table, n_boot=20, seed=0, true_pos_only=True)
    pd.testing.assert_frame_equal(
        reports["hb_precision_recall_specificity"].reset_index(drop=True),
        _by_hand_prs(gt_masks, hb_masks),
        check_dtype=False,
    )
    wide = reports["hitmiss_humanbenchmark_results_per_cxr"]
    assert sorted(wide["img_id"]) == TEST
    pivot = expected.pivot(index="image_id", columns="task", values="hit")
    for task in TASKS:
        np.testing.assert_array_equal(
            wide.set_index("img_id")[task].reindex(TEST).to_numpy(float),
            pivot[task].reindex(TEST).to_numpy(float),
        )


def test_salient_points_alone_cover_their_cxrs() -> None:
    gt, _, points, gt_masks, _ = _fixture()
    table = evaluate_human_benchmark(gt, {}, points)
    assert sorted(table["image_id"].unique()) == TEST
    expected = _by_hand_hits(gt_masks, points)
    np.testing.assert_array_equal(
        table.sort_values(["image_id", "task"])["hit"].to_numpy(float),
        expected.sort_values(["image_id", "task"])["hit"].to_numpy(float),
    )


def test_a_benchmark_that_shares_no_cxr_with_the_ground_truth_is_refused() -> None:
    """The human benchmark of one split against the ground truth of another (the
    ``chexlocalize`` environment paired test benchmark files with the val gt)."""
    gt, hb, points, _, _ = _fixture()
    val_gt = {c: v for c, v in gt.items() if SPLITS[c] != "test"}
    with pytest.raises(ContractError) as err:
        evaluate_human_benchmark(val_gt, hb, points)
    message = str(err.value)
    assert "share no CXR" in message
    assert TEST[0] in message and "patient1_study1_view1_frontal" in message


def test_no_benchmark_gives_an_empty_table() -> None:
    gt, _, _, _, _ = _fixture()
    assert evaluate_human_benchmark(gt, {}, {}).empty
