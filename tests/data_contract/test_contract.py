"""The manifest contract is enforced with errors that name the column and rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.sources.contract import (
    assign_patient_splits,
    normalise_manifest,
    validate_manifest,
)


def _manifest(n: int = 6) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "image_id": [f"patient{i:05d}_study1_view1_frontal" for i in range(n)],
            "patient_id": [f"patient{i:05d}" for i in range(n)],
            "study_id": [f"patient{i:05d}_study1" for i in range(n)],
            "split": ["train", "train", "val", "val", "test", "test"][:n],
            "path": [f"/x/{i}.png" for i in range(n)],
            "view": "PA",
            "width": 64,
            "height": 64,
            "Pneumothorax": [1.0, 0.0, np.nan, 1.0, 0.0, 1.0][:n],
            "sex": ["M", "F", "M", None, "F", "M"][:n],
        }
    )
    return normalise_manifest(df, ["Pneumothorax"], source="unit")


def test_normalised_manifest_validates_and_keeps_tasks() -> None:
    m = _manifest()
    assert validate_manifest(m) is m
    assert m.attrs["tasks"] == ["Pneumothorax"]
    assert list(m.columns[:9]) == [
        "image_id",
        "patient_id",
        "study_id",
        "source",
        "split",
        "path",
        "view",
        "width",
        "height",
    ]
    assert m["tube"].isna().all() and m["source"].eq("unit").all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.drop(columns=["split"]), r"missing column\(s\) \['split'\]"),
        (
            lambda m: m.assign(image_id=["a", "a", "b", "c", "d", "e"]),
            "image_id must be unique.*'a'",
        ),
        (
            lambda m: m.assign(split=["train", "train", "val", "val", "test", "holdout"]),
            "split must be one of.*holdout",
        ),
        (
            lambda m: m.assign(patient_id=["p1", "p1", "p1", "p2", "p3", "p4"]),
            "patient 'p1' appears in several splits",
        ),
        (
            lambda m: m.assign(Pneumothorax=[1.0, 0.0, -1.0, 1.0, 0.0, 1.0]),
            "'Pneumothorax' must hold 1 / 0 / NaN.*-1.0",
        ),
        (lambda m: m.assign(width=[64, 64, 0, 64, 64, 64]), "'width' must be a positive integer"),
        (lambda m: m.assign(age_years=[-3.0, 1, 1, 1, 1, 1]), "age_years must be >= 0"),
        (lambda m: m.iloc[:0], "has no rows"),
        # a missing id used to pass as the string "nan"
        (
            lambda m: m.assign(image_id=["a", np.nan, "b", "c", "d", "e"]),
            r"image_id missing or empty at rows \[1\]",
        ),
        (
            lambda m: m.assign(image_id=["a", " ", "b", "c", "d", "e"]),
            r"image_id missing or empty at rows \[1\]",
        ),
        # rows without a patient escaped the patient-disjoint check (groupby drops NaN)
        (
            lambda m: m.assign(patient_id=["p1", np.nan, np.nan, "p2", "p3", "p4"]),
            "patient_id missing or empty for image_id",
        ),
        (
            lambda m: m.assign(width=[64, 64, 1.5, 64, 64, 64]),
            "'width' must be a positive integer",
        ),
    ],
)
def test_contract_violations_are_named(mutate, message: str) -> None:
    m = mutate(_manifest())
    m.attrs["tasks"] = ["Pneumothorax"]
    with pytest.raises(ContractError, match=message):
        validate_manifest(m)


def test_missing_task_column_is_named() -> None:
    with pytest.raises(ContractError, match=r"lacks pathology column\(s\) \['Edema'\]"):
        validate_manifest(_manifest(), ["Edema"])


def test_patient_splits_are_seeded_disjoint_and_proportional() -> None:
    patients = [f"p{i}" for i in range(1000)] * 2
    a = assign_patient_splits(patients, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=1)
    b = assign_patient_splits(patients, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=1)
    c = assign_patient_splits(patients, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=2)
    assert a == b and a != c
    counts = pd.Series(a).value_counts()
    assert counts["train"] == 600 and counts["val"] == 150 and counts["test"] == 250
    with pytest.raises(ParameterError, match="sum to 1"):
        assign_patient_splits(patients, {"train": 0.6, "val": 0.6}, seed=0)
    with pytest.raises(ParameterError, match="unknown split"):
        assign_patient_splits(patients, {"train": 0.5, "dev": 0.5}, seed=0)
