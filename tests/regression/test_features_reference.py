"""``mask_features`` / ``geometric_features`` against CheXlocalize's ``get_geometric_features``,
computed here by hand with cv2 following its documented procedure: every contour, holes
included (``cv2.findContours(segm, 1, 1)``: ``RETR_LIST``, ``CHAIN_APPROX_NONE``), the one with
the most points (``np.argmax``), its minimum-area rectangle; irrectangularity is
``1 - rec_area_ratio``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cxr_spurious.regression.features import geometric_features, mask_features

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "chexlocalize_sample"


def _reference(segm: np.ndarray) -> tuple[float, float, float]:
    """(area_ratio, elongation, irrectangularity) as the reference computes them."""
    contours, _ = cv2.findContours(segm.copy(), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cnt = contours[int(np.argmax([len(c) for c in contours]))]
    (_, _), (w, h), _ = cv2.minAreaRect(cnt)
    area_ratio = np.sum(segm) / (segm.shape[0] * segm.shape[1])
    return float(area_ratio), max(w, h) / min(w, h), 1 - cv2.contourArea(cnt) / (w * h)


def _comb_hole() -> np.ndarray:
    """A 260 x 180 block with a comb-shaped hole whose contour is longer than the outline."""
    m = np.zeros((300, 300), np.uint8)
    m[20:280, 20:200] = 1
    for r in range(40, 260, 8):  # thin horizontal slots ...
        m[r : r + 4, 50:180] = 0
    m[40:260, 50:54] = 0  # ... joined by a spine
    return m


def test_the_longest_contour_may_be_a_hole_as_in_the_reference() -> None:
    m = _comb_hole()
    outer, _ = cv2.findContours(m.copy(), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    every, _ = cv2.findContours(m.copy(), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    assert max(map(len, every)) > max(map(len, outer))  # the hole's contour is the longest
    area_ratio, elongation, irrectangularity = _reference(m)
    assert (round(elongation, 4), round(irrectangularity, 4)) == (1.6870, 0.3535)
    f = mask_features(m)
    assert f["area_ratio"] == pytest.approx(area_ratio, rel=1e-12)
    assert f["elongation"] == pytest.approx(elongation, rel=1e-12)
    assert f["irrectangularity"] == pytest.approx(irrectangularity, rel=1e-12, abs=1e-12)


def test_shared_sample_features_match_the_reference() -> None:
    gt = json.loads((SAMPLE / "gt_segmentations_val.json").read_text())
    ann = json.loads((SAMPLE / "gt_annotations_val.json").read_text())
    ours = geometric_features(gt, ann).set_index(["image_id", "task"])
    checked = 0
    for cxr_id, tasks in gt.items():
        for task, rle in tasks.items():
            segm = mask_utils.decode(rle)
            if segm.sum() == 0:
                assert (cxr_id, task) not in ours.index
                continue
            row = ours.loc[(cxr_id, task)]
            expected = _reference(segm)
            got = (row["area_ratio"], row["elongation"], row["irrectangularity"])
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), (cxr_id, task)
            assert row["n_instances"] == len(ann[cxr_id].get(task, []))
            checked += 1
    assert checked == len(ours) > 0


def test_a_mask_without_annotated_instances_counts_zero_as_the_reference(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reference gives ``len(gt_ann[id][task]) if task in gt_ann[id] else 0``: a positive
    mask whose task has no annotation keeps its row with 0 instances (it is not dropped from
    the regressions as a NaN would be)."""
    gt = json.loads((SAMPLE / "gt_segmentations_val.json").read_text())
    ann = json.loads((SAMPLE / "gt_annotations_val.json").read_text())
    cxr_id, task = next(
        (c, t)
        for c, tasks in gt.items()
        for t, rle in tasks.items()
        if mask_utils.decode(rle).any()
    )
    ann = {c: dict(tasks) for c, tasks in ann.items()}
    del ann[cxr_id][task]
    with caplog.at_level("WARNING", logger="cxr_spurious.regression.features"):
        ours = geometric_features(gt, ann).set_index(["image_id", "task"])
    assert ours.loc[(cxr_id, task), "n_instances"] == 0
    assert not ours["n_instances"].isna().any()
    assert f"{cxr_id}/{task}" in caplog.text and "1 non-empty" in caplog.text
