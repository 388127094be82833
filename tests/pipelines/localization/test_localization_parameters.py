"""Bad ``localization.*`` parameters stop the run naming the key; small-``n_boot`` CIs.

Before: a misspelt task of ``prob_cutoffs_grid_by_task`` or an attribute of
``subgroup_attributes`` was silently dropped, a self-pair of ``compare_pairs`` accepted,
bad ``n_boot`` / ``seed`` values crashed in numpy (or were named without their block), and
the reference-layout CI's lower bound was the largest replicate below 40 replicates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.localization import summary, tuning
from cxr_spurious.pipelines.localization.nodes import (
    build_reference_reports,
    compare_sets,
    evaluate_heatmaps,
    summarise_localization,
    summarise_subgroups,
    tune_segmentation,
)
from cxr_spurious.stats.seed_param import MAX_SEED, check_seed

N = 30
IDS = [f"patient{i}_study1_view1_frontal" for i in range(N)]


def _per_map(*sets: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "set": name,
                    "model": name.split(".")[0],
                    "method": "gradcam",
                    "image_id": IDS,
                    "task": "Pneumothorax",
                    "in_gt": True,
                    "iou_tp": rng.uniform(0, 1, N),
                    "iou_full": rng.uniform(0, 1, N),
                    "hit": rng.integers(0, 2, N).astype(float),
                }
            )
            for name in sets or ("erm.gradcam",)
        ],
        ignore_index=True,
    )


def _manifest() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "image_id": IDS,
            "patient_id": [f"p{i}" for i in range(N)],
            "sex": rng.choice(["F", "M"], N),
            "tube": rng.integers(0, 2, N),
        }
    )


# ------------------------------------------------------------ reference CI (finding 1)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 39])
def test_reference_ci_below_40_replicates_is_ordered_like_a_lower_quantile(n: int) -> None:
    replicates = pd.Series(np.random.default_rng(n).permutation(np.linspace(0.1, 0.9, n)))
    lower, _, upper = summary.reference_ci(replicates)
    assert lower <= upper
    assert lower == round(float(replicates.min()), 3)
    assert lower == round(float(np.quantile(replicates, 0.025, method="lower")), 3)
    assert upper == round(float(np.quantile(replicates, 0.975, method="lower")), 3)


@pytest.mark.parametrize("n", [40, 100, 1000])
def test_reference_ci_from_40_replicates_keeps_the_references_positions(n: int) -> None:
    replicates = pd.Series(np.random.default_rng(n).uniform(0, 1, n))
    ordered = np.sort(replicates.to_numpy())
    lower, _, upper = summary.reference_ci(replicates)
    assert lower == round(float(ordered[int(0.025 * n) - 1]), 3)
    assert upper == round(float(ordered[int(0.975 * n) - 1]), 3)


def test_reference_summary_and_pct_decrease_bounds_are_ordered_at_small_n_boot() -> None:
    rng = np.random.default_rng(0)
    per_cxr = pd.DataFrame(
        {"Pneumothorax": rng.uniform(0, 1, 50), "img_id": [f"c{i}" for i in range(50)]}
    )
    boot = summary.reference_bootstrap(per_cxr, n_boot=10, seed=0)
    row = summary.reference_summary(boot).iloc[0]
    assert row["lower"] == round(float(boot["Pneumothorax"].min()), 3)
    assert row["lower"] <= row["mean"] <= row["upper"]
    hb = per_cxr.assign(Pneumothorax=rng.uniform(0.5, 1, 50))
    pct = summary.paired_percentage_decrease(per_cxr, hb, n_boot=10, seed=0)
    assert (pct["pct_diff_lower"] <= pct["pct_diff_upper"]).all()


# ------------------------------------------------ prob_cutoffs_grid_by_task (finding 2)


def _tuning_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 40
    return pd.DataFrame(
        {
            "set": "s",
            "image_id": [f"patient{i}_study1_view1_frontal" for i in range(n)],
            "task": "Lung Lesion",
            "in_gt": True,
            "prob": rng.uniform(0, 1, n),
            "gt_area": 100.0,
            "tune_otsu_area": 80.0,
            "tune_otsu_inter": 50.0,
            **{f"tune_area_{t:g}": 80.0 for t in np.arange(0.2, 0.8, 0.1)},
            **{f"tune_inter_{t:g}": 50.0 for t in np.arange(0.2, 0.8, 0.1)},
        }
    )


@pytest.mark.parametrize("task", ["Lung lesion", "Lung Lesoin"])
def test_a_misspelt_task_of_prob_cutoffs_grid_by_task_is_refused(task: str) -> None:
    with pytest.raises(ParameterError, match="Lung Lesion") as info:
        tune_segmentation(
            _tuning_table(), [0.2, 0.8, 0.1], [0.0, 0.85, 0.1], "val", {task: [0.1, 0.85, 0.1]}
        )
    assert info.value.key == "localization.prob_cutoffs_grid_by_task"
    assert task in info.value.problem
    with pytest.raises(ParameterError) as info:
        tuning.tune_probability_cutoffs(_tuning_table(), [0.0, 0.5], {task: [0.1]})
    assert info.value.key == "localization.prob_cutoffs_grid_by_task"


def test_prob_cutoffs_grid_by_task_of_a_real_task_replaces_the_grid() -> None:
    _, _, prob = tune_segmentation(
        _tuning_table(), [0.2, 0.8, 0.1], [0.0, 0.85, 0.1], "val", {"Lung Lesion": [0.1, 0.85, 0.1]}
    )
    assert min(prob["prob_threshold"]) == pytest.approx(0.1)


# ----------------------------------------------------- n_boot / seed (finding 7)


@pytest.mark.parametrize(
    ("n_boot", "seed", "key"),
    [
        (0, 0, "localization.n_boot"),
        (2.5, 0, "localization.n_boot"),
        ("100", 0, "localization.n_boot"),
        (20, -1, "localization.seed"),
        (20, 1.5, "localization.seed"),
        (20, "abc", "localization.seed"),
        (20, True, "localization.seed"),
        (20, 2**32, "localization.seed"),
    ],
)
def test_bad_n_boot_or_seed_is_refused_naming_the_localization_key(
    n_boot: object, seed: object, key: str
) -> None:
    per_map = _per_map("erm.gradcam", "seg.gradcam")
    calls = [
        lambda: summarise_localization(per_map, n_boot, seed),  # type: ignore[arg-type]
        lambda: build_reference_reports(per_map, pd.DataFrame(), n_boot, seed, True),  # type: ignore[arg-type]
        lambda: summarise_subgroups(per_map, _manifest(), ["sex"], n_boot, seed),  # type: ignore[arg-type]
        lambda: compare_sets(per_map, None, n_boot, seed),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(ParameterError) as info:
            call()
        assert info.value.key == key


def test_bad_max_dropped_share_names_the_localization_key() -> None:
    with pytest.raises(ParameterError) as info:
        summarise_localization(_per_map(), 20, 0, max_dropped_share=5)
    assert info.value.key == "localization.max_dropped_share"


def test_check_seed_accepts_the_numpy_range_and_integral_floats() -> None:
    assert check_seed(0, "k") == 0
    assert check_seed(MAX_SEED, "k") == MAX_SEED
    assert check_seed(np.int64(7), "k") == 7
    assert check_seed(1e3, "k") == 1000
    for bad in (-1, MAX_SEED + 1, 0.5, float("nan"), None, "1", False):
        with pytest.raises(ParameterError, match="'k'"):
            check_seed(bad, "k")


def test_smoothing_k_must_be_a_whole_number() -> None:
    with pytest.raises(ParameterError) as info:
        evaluate_heatmaps({}, {}, {}, None, None, 1.5, [], False, 10, False)  # type: ignore[arg-type]
    assert info.value.key == "localization.smoothing_k"


# ------------------------------------------------ subgroup_attributes (finding 6)


@pytest.mark.parametrize("attributes", [["sexx", "tube"], ["tubes"]])
def test_an_attribute_the_manifest_lacks_is_refused_listing_its_columns(
    attributes: list[str],
) -> None:
    with pytest.raises(ParameterError) as info:
        summarise_subgroups(_per_map(), _manifest(), attributes, 20, 0)
    assert info.value.key == "localization.subgroup_attributes"
    assert "available columns: patient_id, sex, tube" in info.value.problem


@pytest.mark.parametrize("attributes", ["sex", {"sex": 1}, [1]])
def test_subgroup_attributes_must_be_a_list_of_names(attributes: object) -> None:
    with pytest.raises(ParameterError, match="expected a list") as info:
        summarise_subgroups(_per_map(), _manifest(), attributes, 20, 0)  # type: ignore[arg-type]
    assert info.value.key == "localization.subgroup_attributes"


def test_known_attributes_and_no_manifest_still_work() -> None:
    table = summarise_subgroups(_per_map(), _manifest(), ["sex", "tube"], 20, 0)
    assert sorted(table["attribute"].unique()) == ["sex", "tube"]
    assert summarise_subgroups(_per_map(), {}, [], 20, 0).empty  # type: ignore[arg-type]


# ------------------------------------------------------ compare_pairs (finding 8)


@pytest.mark.parametrize(
    ("pairs", "problem"),
    [
        ([["erm.gradcam", "seg.gradcam", "erm.gradcam"]], "not a pair of set names"),
        ([["erm.gradcam"]], "not a pair of set names"),
        (["erm.gradcam,seg.gradcam"], "not a pair of set names"),
        ("erm.gradcam,seg.gradcam", "expected a list"),
        ([["erm.gradcam", "erm.gradcam"]], "compares a set with itself"),
        ([["erm.gradcam", "box.gradcam"]], "unknown heatmap set(s) ['box.gradcam']"),
    ],
)
def test_malformed_compare_pairs_are_refused_naming_the_key(pairs: object, problem: str) -> None:
    with pytest.raises(ParameterError) as info:
        compare_sets(_per_map("erm.gradcam", "seg.gradcam"), pairs, 20, 0)  # type: ignore[arg-type]
    assert info.value.key == "localization.compare_pairs"
    assert problem in info.value.problem


def test_a_valid_pair_is_compared() -> None:
    table = compare_sets(
        _per_map("erm.gradcam", "seg.gradcam"), [["seg.gradcam", "erm.gradcam"]], 20, 0
    )
    assert set(zip(table["set_a"], table["set_b"])) == {("seg.gradcam", "erm.gradcam")}


# ------------------------------------------------------ CI level / n_boot (finding 10)


def test_project_tables_record_their_ci_level_and_n_boot() -> None:
    per_map = _per_map("erm.gradcam", "seg.gradcam")
    tables = {
        "summary": summarise_localization(per_map, 20, 0),
        "subgroups": summarise_subgroups(per_map, _manifest(), ["sex"], 20, 0),
        "comparisons": compare_sets(per_map, None, 20, 0),
    }
    for name, table in tables.items():
        assert len(table), name
        assert (table["ci_level"] == 0.95).all(), name
        assert (table["n_boot"] == 20).all(), name
