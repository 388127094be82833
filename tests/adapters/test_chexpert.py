"""CheXpert adapter on a fixture tree that mimics train.csv / valid.csv exactly."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.sources.adapters import get_adapter
from cxr_spurious.sources.contract import validate_manifest

from .fixtures import (
    CHEXPERT_TRAIN_ROWS,
    CHEXPERT_VALID_ROWS,
    base_params,
    build_chexpert,
    chexpert_image_size,
)

read = get_adapter("chexpert")


def _row(manifest: pd.DataFrame, image_id: str) -> pd.Series:
    return manifest.set_index("image_id").loc[image_id]


def test_small_layout_manifest(tmp_path: Path) -> None:
    root = build_chexpert(tmp_path)
    out = read(root, base_params())
    m = validate_manifest(out.manifest)
    assert len(m) == len(CHEXPERT_TRAIN_ROWS) + len(CHEXPERT_VALID_ROWS)
    assert (
        "Airspace Opacity" in out.tasks and "Lung Opacity" not in m.columns and len(out.tasks) == 14
    )
    first = _row(m, "patient00417_study2_view1_frontal")
    assert (
        first["patient_id"],
        first["study_id"],
        first["sex"],
        first["age_years"],
        first["view"],
    ) == ("patient00417", "patient00417_study2", "F", 54.0, "AP")
    assert (
        Path(first["path"])
        == root / "CheXpert-v1.0-small" / "train" / "patient00417" / "study2" / "view1_frontal.jpg"
    )
    # -1.0 (uncertain) -> NaN under the default 'ignore' policy; blank -> NaN; 1.0 / 0.0 kept.
    assert math.isnan(first["Cardiomegaly"]) and math.isnan(first["No Finding"])
    assert (first["Airspace Opacity"], first["Pneumothorax"], first["Support Devices"]) == (
        1.0,
        0.0,
        1.0,
    )
    lateral = _row(m, "patient00417_study2_view2_lateral")
    assert lateral["view"] == "Lateral" and lateral["projection"] == "Lateral"
    unknown = _row(m, "patient03121_study1_view1_lateral")
    assert isinstance(unknown["sex"], float) and math.isnan(unknown["sex"])  # Unknown -> NaN
    assert math.isnan(unknown["age_years"])  # Age 0 = missing
    assert _row(m, "patient03122_study1_view1_frontal")["view"] == "LL"
    # view number is an ordinal, not an orientation
    assert _row(m, "patient03120_study2_view2_frontal")["projection"] == "Frontal"
    for i, image_id in enumerate(m["image_id"]):
        assert (m.loc[i, "width"], m.loc[i, "height"]) == _size_of(image_id)


def _size_of(image_id: str) -> tuple[int, int]:
    rows = [*CHEXPERT_TRAIN_ROWS, *CHEXPERT_VALID_ROWS]
    ids = [f"{r[1]}_{r[2]}_{r[3].removesuffix('.jpg')}" for r in rows]
    return chexpert_image_size(ids.index(image_id))


def test_official_valid_is_val_and_test_carved_by_patient(tmp_path: Path) -> None:
    m = read(build_chexpert(tmp_path), base_params()).manifest
    valid_ids = {f"{r[1]}_{r[2]}_{r[3].removesuffix('.jpg')}" for r in CHEXPERT_VALID_ROWS}
    assert set(m.loc[m["split"] == "val", "image_id"]) == valid_ids
    train_patients = {r[1] for r in CHEXPERT_TRAIN_ROWS}
    test = m[m["split"] == "test"]
    # 7 training patients, test share 0.2 / (0.7 + 0.2) -> round(7 * 2/9) = 2 patients
    assert test["patient_id"].nunique() == 2 and set(test["patient_id"]) <= train_patients
    again = read(build_chexpert(tmp_path / "again"), base_params()).manifest
    assert list(again["split"]) == list(m["split"])  # same seed, same split


def test_full_prefix_and_test_labels(tmp_path: Path) -> None:
    root = build_chexpert(tmp_path, prefix="CheXpert-v1.0", with_test=True)
    m = validate_manifest(read(root, base_params()).manifest)
    assert set(m.loc[m["split"] == "test", "image_id"]) == {"patient64741_study1_view1_frontal"}
    assert (
        m.loc[
            m["patient_id"].str.startswith("patient00")
            | m["patient_id"].str.startswith("patient031"),
            "split",
        ]
        == "train"
    ).all()
    test = _row(m, "patient64741_study1_view1_frontal")
    assert (
        math.isnan(test["age_years"])
        and test["Cardiomegaly"] == 1.0
        and test["Airspace Opacity"] == 1.0
    )


@pytest.mark.parametrize(("policy", "value"), [("zeros", 0.0), ("ones", 1.0)])
def test_uncertainty_policy(tmp_path: Path, policy: str, value: float) -> None:
    m = read(build_chexpert(tmp_path), base_params(uncertainty_policy=policy)).manifest
    first = _row(m, "patient00417_study2_view1_frontal")
    assert first["Cardiomegaly"] == value and math.isnan(first["No Finding"])  # blank stays NaN


def test_bad_policy_names_key(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"ingestion\.uncertainty_policy.*ignore, ones, zeros"):
        read(build_chexpert(tmp_path), base_params(uncertainty_policy="maybe"))


def test_tasks_subset_and_unknown(tmp_path: Path) -> None:
    root = build_chexpert(tmp_path)
    out = read(root, base_params(tasks=["Pneumothorax", "Airspace Opacity"]))
    assert (
        out.tasks == ["Pneumothorax", "Airspace Opacity"]
        and "Cardiomegaly" not in out.manifest.columns
    )
    validate_manifest(out.manifest)
    with pytest.raises(ParameterError, match="ingestion.tasks"):
        read(root, base_params(tasks=["Hernia"]))


def test_frontal_only(tmp_path: Path) -> None:
    root = build_chexpert(tmp_path)
    every = read(root, base_params()).manifest
    assert "LL" in set(every["view"]) and "Lateral" in set(every["view"])  # both kinds to drop
    m = read(root, base_params(frontal_only=True)).manifest
    assert set(m["projection"]) == {"Frontal"}
    # an `AP/PA` of LL (lateral decubitus) on a row marked Frontal is not frontal either
    assert set(m["view"].dropna()) <= {"AP", "PA"}
    assert len(m) == (every["view"].isin(["AP", "PA"])).sum()


def test_changed_header(tmp_path: Path) -> None:
    root = build_chexpert(tmp_path)
    csv = root / "CheXpert-v1.0-small" / "train.csv"
    csv.write_text(csv.read_text().replace("Lung Opacity", "Opacity", 1))
    with pytest.raises(
        DataFormatError,
        match=r"train\.csv \(line 1\).*missing \['Lung Opacity'\].*unexpected \['Opacity'\]",
    ):
        read(root, base_params())


def test_bad_label_value_names_row_and_column(tmp_path: Path) -> None:
    root = build_chexpert(tmp_path)
    csv = root / "CheXpert-v1.0-small" / "valid.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].replace("Female,70,Frontal,PA,1.0", "Female,70,Frontal,PA,2.0")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"valid\.csv.*line 3.*'No Finding'.*'2\.0'"):
        read(root, base_params())


def test_missing_image_error_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = build_chexpert(tmp_path)
    (
        root / "CheXpert-v1.0-small" / "train" / "patient03123" / "study1" / "view1_frontal.jpg"
    ).unlink()
    with pytest.raises(
        DataFormatError,
        match=r"train\.csv line 8.*patient03123/study1/view1_frontal\.jpg"
        r".*does not exist \(1 missing",
    ):
        read(root, base_params())
    with caplog.at_level(logging.WARNING):
        m = read(root, base_params(on_missing="skip")).manifest
    assert "patient03123_study1_view1_frontal" not in set(m["image_id"]) and len(m) == 12
    assert any(
        "1 missing" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records
    )


def test_conflicting_sex(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = build_chexpert(tmp_path)
    csv = root / "CheXpert-v1.0-small" / "train.csv"
    lines = csv.read_text().splitlines()
    lines[4] = lines[4].replace(",Male,78,", ",Female,78,")  # patient03120 study2
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFormatError,
        match=r"patient '?patient03120'? has conflicting sex"
        r".*train\.csv line 4=M.*train\.csv line 5=F",
    ):
        read(root, base_params())
    with caplog.at_level(logging.WARNING):
        m = read(root, base_params(sex_conflict="missing")).manifest
    assert m.loc[m["patient_id"] == "patient03120", "sex"].isna().all()
    assert (m.loc[m["patient_id"] == "patient00417", "sex"] == "F").all()


def test_duplicate_row(tmp_path: Path) -> None:
    root = build_chexpert(tmp_path)
    csv = root / "CheXpert-v1.0-small" / "train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(
        DataFormatError, match=r"patient00417_study2_view1_frontal.*more than once.*line 2.*line 12"
    ):
        read(root, base_params())


def test_missing_root_and_csv(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        read(tmp_path / "nope", base_params())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="train.csv or valid.csv in the dataset root"):
        read(tmp_path / "empty", base_params())


def test_root_may_be_the_dataset_folder(tmp_path: Path) -> None:
    root = build_chexpert(tmp_path)
    a = read(root, base_params()).manifest
    b = read(root / "CheXpert-v1.0-small", base_params()).manifest
    assert list(a["image_id"]) == list(b["image_id"]) and np.array_equal(a["width"], b["width"])
