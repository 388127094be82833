"""``tune_segmentation`` on a set without a single positive map.

The fixed-threshold counts ``tune_area_<t>`` exist only for maps of a (CXR, task) with a
non-empty ground truth. A set without one (maps of another split than the ground truth's,
here a CXR outside it, while ``missing_maps: all`` adds empty predictions for the gt pair)
used to stop the node with "lacks counts for threshold 0.2; evaluate with the same grid",
although the evaluation had used that grid. Now its mIoUs are NaN with a warning naming
the set and the likely cause; the grid error is kept for positive maps without the counts.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization.evaluate import evaluate_heatmap_set
from cxr_spurious.pipelines.localization.nodes import _grid, tune_segmentation

GRID = [0.2, 0.8, 0.1]
CUTOFFS = [0.0, 0.9, 0.1]
IN_GT = "patient00001_study1_view1_frontal"
OUTSIDE = "patient00002_study1_view1_frontal"


def _per_map(image_ids: list[str], grid: list[float]) -> pd.DataFrame:
    """The evaluation of one 8 x 8 map per CXR in ``image_ids`` against a gt that holds only
    ``IN_GT`` (an Edema lesion), with ``missing_maps: all``."""
    lesion = np.zeros((80, 80), np.uint8)
    lesion[10:40, 10:40] = 1
    gt = {IN_GT: {"Edema": encode_rle(lesion)}}
    n = len(image_ids)
    index = pd.DataFrame(
        {
            "image_id": image_ids,
            "task": ["Edema"] * n,
            "prob": [0.9] * n,
            "gt": [1.0] * n,
            "cxr_w": [80] * n,
            "cxr_h": [80] * n,
            "model": ["m"] * n,
            "method": ["gradcam"] * n,
        }
    )
    maps = np.random.default_rng(0).random((n, 8, 8)).astype(np.float32)
    table, _ = evaluate_heatmap_set(
        HeatmapSet(index=index, maps=maps),
        gt,
        tuning_grid=_grid(grid, "localization.tuning_grid"),
        workers=1,
        progress=False,
        missing="all",
    )
    table.insert(0, "set", "m.gradcam")
    return table


def test_a_set_without_positive_maps_gets_nan_mious_and_a_warning(caplog) -> None:
    per_map = _per_map([OUTSIDE], GRID)
    assert not any(c.startswith("tune_area_") for c in per_map.columns)  # the case at hand
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.localization.tuning"):
        best, full, prob = tune_segmentation(per_map, GRID, CUTOFFS, split="val")
    assert len(full) == 7 and full["mIoU"].isna().all() and set(full["task"]) == {"Edema"}
    assert best["task"].tolist() == ["Edema"]
    assert set(full["set"]) == set(best["set"]) == {"m.gradcam"}
    text = caplog.text
    assert "m.gradcam" in text and "another split" in text and "val" in text
    assert "none of its 1 map(s)" in text
    assert "evaluate with the same grid" not in text
    assert len(prob)  # the probability-cutoff tuning still runs (the map scores against empty)


def test_positive_maps_without_the_counts_are_still_a_grid_error() -> None:
    per_map = _per_map([IN_GT, OUTSIDE], [0.3, 0.8, 0.1])  # evaluated with another grid
    with pytest.raises(ParameterError, match="threshold 0.2; evaluate with the same grid") as info:
        tune_segmentation(per_map, GRID, CUTOFFS, split="val")
    assert info.value.key == "localization.tuning_grid"


def test_positive_maps_with_the_counts_tune_as_before(caplog) -> None:
    per_map = _per_map([IN_GT, OUTSIDE], GRID)
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.localization.tuning"):
        _, full, _ = tune_segmentation(per_map, GRID, CUTOFFS, split="val")
    assert full["mIoU"].notna().any() and "no positive map" not in caplog.text
