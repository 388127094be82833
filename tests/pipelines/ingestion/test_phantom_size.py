"""``ingestion.phantom.n_images`` too small for a validation split fails up front."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from cxr_spurious.errors import ParameterError
from cxr_spurious.phantom.cohort import build_cohort, split_counts
from cxr_spurious.phantom.config import PhantomConfig, min_images_for_splits
from cxr_spurious.pipelines.ingestion.nodes import generate_phantom
from cxr_spurious.sources.contract import assign_patient_splits

REPO = Path(__file__).resolve().parents[3]
SHIPPED = yaml.safe_load((REPO / "conf/base/parameters_ingestion.yml").read_text())["ingestion"][
    "phantom"
]


def test_three_images_fail_at_planning_with_the_minimum() -> None:
    minimum = min_images_for_splits(PhantomConfig.from_dict({**SHIPPED, "n_images": 50}))
    assert minimum == 19  # 0.59 / 0.16 / 0.25 of >= 7 patients, up to 3 studies each
    with pytest.raises(
        ParameterError, match=rf"'ingestion\.phantom\.n_images': must be at least {minimum} .*got 3"
    ):
        generate_phantom("phantom", {**SHIPPED, "n_images": 3}, seed=0, n_jobs=1)
    assert generate_phantom("phantom", {**SHIPPED, "n_images": minimum}, seed=0, n_jobs=1).enabled
    # Other sources do not generate a phantom, so its size does not matter.
    assert not generate_phantom("chexpert", {**SHIPPED, "n_images": 3}, seed=0, n_jobs=1).enabled


@pytest.mark.parametrize(
    "params",
    [
        SHIPPED,
        {},
        {"split_fractions": {"train": 0.8, "val": 0.05, "test": 0.15}},
        {"studies_per_patient": [1.0]},
    ],
    ids=["shipped", "generator-defaults", "small-val", "one-study-each"],
)
def test_the_minimum_matches_the_split_logic(params: dict) -> None:
    cfg = PhantomConfig.from_dict({**params, "n_images": 50})
    minimum = min_images_for_splits(cfg)
    k_max = len(cfg.studies_per_patient)
    fractions = dict(cfg.split_fractions)
    # One image fewer can come from so few patients that a split gets none...
    fewest_patients = math.ceil((minimum - 1) / k_max)
    splits = set(
        assign_patient_splits([f"p{i}" for i in range(fewest_patients)], fractions, seed=0).values()
    )
    assert splits != {"train", "val", "test"}
    # ...while at the minimum every possible patient count fills every split.
    for patients in range(math.ceil(minimum / k_max), minimum + 1):
        splits = set(
            assign_patient_splits([f"p{i}" for i in range(patients)], fractions, seed=0).values()
        )
        assert splits == {"train", "val", "test"}, patients
    for seed in range(5):
        counts = split_counts(
            build_cohort(PhantomConfig.from_dict({**params, "n_images": minimum}), seed)
        )
        assert min(counts.values()) >= 1, (seed, counts)


def test_a_zero_split_fraction_is_refused() -> None:
    with pytest.raises(
        ParameterError, match=r"ingestion\.phantom\.split_fractions\.val.*must be > 0"
    ):
        generate_phantom(
            "phantom",
            {"split_fractions": {"train": 0.8, "val": 0.0, "test": 0.2}},
            seed=0,
            n_jobs=1,
        )
