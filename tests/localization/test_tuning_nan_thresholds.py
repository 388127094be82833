"""``tune_thresholds`` picks the best *finite* mIoU: a threshold where no map has any
predicted area (NaN mIoU, common at the top of the grid) is never chosen, wherever it lies
in the grid (``np.argmax`` of an array with NaN returns the NaN's position)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_spurious.localization import tuning


def test_a_threshold_with_nan_miou_is_not_chosen() -> None:
    # Edema: finite mIoU at 0.2 and 0.5 (best 0.5), no predicted area at 0.8 (NaN)
    per_map = pd.DataFrame(
        {
            "task": ["Edema", "Edema"],
            "in_gt": True,
            "gt_area": [10, 10],
            "tune_area_0.2": [20, 18],
            "tune_inter_0.2": [8, 7],
            "tune_area_0.5": [12, 11],
            "tune_inter_0.5": [7, 7],
            "tune_area_0.8": [0, 0],
            "tune_inter_0.8": [0, 0],
        }
    )
    best, grid = tuning.tune_thresholds(per_map, [0.2, 0.5, 0.8], label="erm.gradcam")
    mious = grid.set_index("threshold")["mIoU"]
    assert np.isnan(mious[0.8]) and mious[0.5] > mious[0.2]
    assert best.set_index("task")["threshold"]["Edema"] == 0.5
    # the NaN first in the grid as well
    per_map_first = per_map.rename(
        columns={"tune_area_0.8": "tune_area_0.1", "tune_inter_0.8": "tune_inter_0.1"}
    )
    best, _ = tuning.tune_thresholds(per_map_first, [0.1, 0.2, 0.5], label="erm.gradcam")
    assert best.set_index("task")["threshold"]["Edema"] == 0.5
