"""``regression.min_clusters`` reaches ``models.check_min_clusters`` as given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.regression.nodes import regress_on_confidence, regress_on_features


def _table(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "set": "s",
            "image_id": [f"c{i}" for i in range(n)],
            "task": "Edema",
            "in_gt": True,
            "prob": rng.random(n),
            "n_instances": 1.0,
            "area_ratio": rng.random(n),
            "elongation": rng.random(n),
            "irrectangularity": rng.random(n),
            "iou_tp": rng.random(n),
            "iou_full": rng.random(n),
            "hit": (rng.random(n) < 0.5).astype(float),
        }
    )


@pytest.mark.parametrize(("value", "shown"), [(40.9, "40.9"), (True, "True"), ("30", "'30'")])
def test_a_min_clusters_that_is_not_an_integer_is_refused_not_truncated(value, shown) -> None:
    # the old nodes ran int(min_clusters) first: 40.9 became 40 (a cluster-robust fit on
    # exactly 40 CXRs) and True was reported as "got 1"
    for call in (
        lambda: regress_on_features(_table(), True, value),
        lambda: regress_on_confidence(_table(), value),
        lambda: regress_on_features(_table().iloc[:0], True, value),
    ):
        with pytest.raises(ParameterError, match=rf"regression.min_clusters.*got {shown}$"):
            call()


def test_an_integral_float_min_clusters_is_accepted() -> None:
    res = regress_on_features(_table(), True, 40.0)
    fitted = res[res["coef"].notna()]
    assert (fitted["se_type"] == "cluster-robust (image_id)").all()
