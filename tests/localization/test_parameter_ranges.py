"""Thresholds, probability cutoffs and top-k are range-checked before any map is read.

A threshold of 50 or a cutoff of 30 (a percentage typed for a fraction) used to empty every
mask (IoU 0 everywhere, silently); top_k = -1 scored ``inside[:-1]`` (nearly the whole
image) and top_k = 0 gave NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.localization.metrics import mass_rank_metrics
from cxr_spurious.pipelines.localization import nodes

GARBAGE = {"x": {"Edema": {"size": [4, 4], "counts": "%%%not-rle%%%"}}}


class _Unreadable(dict):
    """A heatmap collection that fails the test when the node touches any map."""

    def __getitem__(self, key: object) -> object:
        raise AssertionError("a map was read before the parameters were checked")

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a map was read before the parameters were checked")


def _evaluate(**over: object) -> None:
    kw: dict[str, object] = {
        "fixed_thresholds": {},
        "prob_cutoffs": {},
        "smoothing_k": 0,
        "tuning_grid": [],
        "extra_metrics": True,
        "top_k": 1000,
        "prefer_gpu": False,
    }
    kw.update(over)
    # malformed ground truth too: the parameters are checked even before the RLEs
    nodes.evaluate_heatmaps(_Unreadable(), GARBAGE, {}, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"fixed_thresholds": {"Edema": 50}}, "localization.fixed_thresholds.Edema"),
        ({"fixed_thresholds": {"Edema": -0.1}}, "localization.fixed_thresholds.Edema"),
        ({"fixed_thresholds": {"Edema": True}}, "localization.fixed_thresholds.Edema"),
        ({"fixed_thresholds": {"Edema": "0.5"}}, "localization.fixed_thresholds.Edema"),
        ({"fixed_thresholds": {"Edema": float("nan")}}, "localization.fixed_thresholds.Edema"),
        ({"fixed_thresholds": 0.5}, "localization.fixed_thresholds"),
        ({"prob_cutoffs": {"Edema": 30}}, "localization.prob_cutoffs.Edema"),
        ({"prob_cutoffs": {"Cardiomegaly": 1.5}}, "localization.prob_cutoffs.Cardiomegaly"),
        ({"top_k": -1}, "localization.top_k"),
        ({"top_k": 0}, "localization.top_k"),
        ({"top_k": 2.5}, "localization.top_k"),
        ({"top_k": True}, "localization.top_k"),
        ({"top_k": None}, "localization.top_k"),
        ({"tuning_grid": [20, 80, 10]}, "localization.tuning_grid"),
    ],
)
def test_out_of_range_values_are_refused_before_any_map(over: dict[str, object], key: str) -> None:
    with pytest.raises(ParameterError) as err:
        _evaluate(**over)
    assert err.value.key == key


def test_percentage_hint() -> None:
    with pytest.raises(ParameterError, match=r"got 50 \(a fraction, not a percentage\)"):
        _evaluate(fixed_thresholds={"Edema": 50})


def test_in_range_values_pass_the_checks() -> None:
    """0 and 1 are allowed; the run then reaches the (malformed) ground truth."""
    from cxr_spurious.errors import DataFormatError

    with pytest.raises(DataFormatError):
        _evaluate(
            fixed_thresholds={"Edema": 1.0}, prob_cutoffs={"Edema": 0, "Cardiomegaly": 0.3}, top_k=3
        )


@pytest.mark.parametrize("grid", [[20, 80, 10], [0.5, 2.0, 0.5], [-0.2, 0.5, 0.1]])
def test_tuning_grids_outside_the_unit_interval_are_refused(grid: list[float]) -> None:
    per_map = pd.DataFrame({"set": ["s"], "in_gt": [True]})
    with pytest.raises(ParameterError, match="localization.prob_cutoffs_grid.*outside"):
        nodes.tune_segmentation(per_map, [0.2, 0.8, 0.1], grid)


def test_a_task_grid_is_checked_like_the_grid_and_named_by_its_task() -> None:
    per_map = pd.DataFrame({"set": ["s"], "in_gt": [True]})
    with pytest.raises(
        ParameterError, match=r"localization\.prob_cutoffs_grid_by_task\.Lung Lesion.*outside"
    ):
        nodes.tune_segmentation(
            per_map,
            [0.2, 0.8, 0.1],
            [0.0, 0.85, 0.1],
            prob_cutoffs_grid_by_task={"Lung Lesion": [10, 80, 10]},
        )
    with pytest.raises(ParameterError, match=r"prob_cutoffs_grid_by_task.*\{task: \[start"):
        nodes.tune_segmentation(
            per_map, [0.2, 0.8, 0.1], [0.0, 0.85, 0.1], prob_cutoffs_grid_by_task=[0.1, 0.8, 0.1]
        )


def test_top_k_share_by_hand_and_refused_below_one() -> None:
    score = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]])
    mask = np.array([[1, 0, 0], [0, 1, 1]], bool)
    # by hand: the top 3 pixels are 0.9 (in), 0.8 (out), 0.7 (in): 2 of 3
    assert mass_rank_metrics(score, mask, top_k=3)["top_k_intersection"] == pytest.approx(2 / 3)
    for bad in (0, -1, 1.5):
        with pytest.raises(ParameterError, match="localization.top_k"):
            mass_rank_metrics(score, mask, top_k=bad)  # type: ignore[arg-type]
