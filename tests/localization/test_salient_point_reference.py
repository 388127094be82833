"""Human-benchmark hit from salient points: points are ``[x, y]`` (x = column), as in
CheXlocalize's files and its ``get_hb_hitrates`` (``gt_mask[int(pt[1]), int(pt[0])]``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as Polygon

from cxr_spurious.io.masks import decode_rle, encode_rle
from cxr_spurious.localization.metrics import human_hit_table, salient_point_hit

CXR = "patient64541_study1_view1_frontal"
TASK = "Airspace Opacity"


def _lesion() -> np.ndarray:
    """A 100 x 80 (h x w) mask with the lesion in rows 60-69 and columns 10-19."""
    mask = np.zeros((100, 80), dtype=np.uint8)
    mask[60:70, 10:20] = 1
    return mask


@pytest.mark.parametrize(
    ("point", "hit"),
    [
        ([15.0, 65.0], 1.0),  # x = 15 (column), y = 65 (row): inside
        ([65.0, 15.0], 0.0),  # the same numbers as (row, column): outside
        ([19.9, 69.9], 1.0),  # coordinates are truncated to the pixel
        ([20.0, 65.0], 0.0),
    ],
)
def test_point_is_x_column_then_y_row(point: list[float], hit: float) -> None:
    assert salient_point_hit(_lesion(), [point]) == hit
    table = human_hit_table({"cxr": {"Edema": encode_rle(_lesion())}}, {"cxr": {"Edema": [point]}})
    assert table["hit"].tolist() == [hit]


def test_any_point_inside_is_a_hit_and_an_empty_gt_is_undefined() -> None:
    assert salient_point_hit(_lesion(), [[65.0, 15.0], [15.0, 65.0]]) == 1.0
    assert salient_point_hit(_lesion(), []) == 0.0
    assert np.isnan(salient_point_hit(np.zeros((100, 80), np.uint8), [[15.0, 65.0]]))


def _sample(sample_dir: Path) -> tuple[dict, dict]:
    annotations = json.loads((sample_dir / "gt_annotations_val.json").read_text())
    segmentations = json.loads((sample_dir / "gt_segmentations_val.json").read_text())
    return annotations, segmentations


def test_the_sample_annotations_are_x_column_points_of_the_segmentation(sample_dir: Path) -> None:
    """The reference's own files: polygon vertices ``[x, y]`` outline the gt segmentation
    read as ``mask[y, x]`` (the convention the salient points share)."""
    annotations, segmentations = _sample(sample_dir)
    mask = decode_rle(segmentations[CXR][TASK])
    h, w = annotations[CXR]["img_size"]
    assert mask.shape == (h, w) and h != w
    (polygon,) = annotations[CXR][TASK]
    outline = Polygon(np.asarray(polygon))
    xs, ys = np.meshgrid(np.arange(0, w, 16), np.arange(0, h, 16))
    inside = outline.contains_points(np.column_stack([xs.ravel(), ys.ravel()]))
    assert inside.sum() > 100
    agree = mask[ys.ravel()[inside], xs.ravel()[inside]].mean()
    assert agree > 0.95


def test_a_point_inside_a_sample_lesion_is_a_hit_only_as_x_y(sample_dir: Path) -> None:
    annotations, segmentations = _sample(sample_dir)
    x, y = np.asarray(annotations[CXR][TASK][0]).mean(axis=0)  # the vertices' centroid
    mask = decode_rle(segmentations[CXR][TASK])
    assert mask[int(y), int(x)] == 1  # the reference's lookup: gt_mask[int(pt[1]), int(pt[0])]
    assert mask[int(x), int(y)] == 0
    gt = {CXR: {TASK: segmentations[CXR][TASK]}}
    assert human_hit_table(gt, {CXR: {TASK: [[x, y]]}})["hit"].tolist() == [1.0]
    assert human_hit_table(gt, {CXR: {TASK: [[y, x]]}})["hit"].tolist() == [0.0]
