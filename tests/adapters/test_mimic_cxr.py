"""MIMIC-CXR-JPG adapter: gz tables, per-study labels, splits and MIMIC-IV demographics."""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import DataFormatError
from cxr_spurious.sources.adapters import get_adapter
from cxr_spurious.sources.adapters.mimic_cxr import choose_admission_values, study_datetime
from cxr_spurious.sources.contract import validate_manifest

from .fixtures import MIMIC_IMAGES, base_params, build_mimic, mimic_dicom_id

read = get_adapter("mimic_cxr")
IV = "../mimic-iv"  # relative to the MIMIC-CXR root


def _m(tmp_path: Path, **params: object) -> pd.DataFrame:
    root = build_mimic(tmp_path, mimic_iv=params.pop("mimic_iv", "v2"))  # type: ignore[arg-type]
    return validate_manifest(read(root, base_params(**params)).manifest).set_index("image_id")


def _id(n: int) -> str:
    return mimic_dicom_id(n)


def test_manifest_labels_and_splits(tmp_path: Path) -> None:
    m = _m(tmp_path, mimic_iv_dir=IV)
    assert len(m) == len(MIMIC_IMAGES)
    assert (
        m.loc[_id(7), "split"] == "val"
        and m.loc[_id(8), "split"] == "test"
        and m.loc[_id(1), "split"] == "train"
    )
    # Labels are per study: both images of study 59999901 carry them; -1.0 -> NaN; blank -> NaN.
    for n in (1, 2):
        row = m.loc[_id(n)]
        assert (
            row["Cardiomegaly"],
            row["Airspace Opacity"],
            row["Pleural Effusion"],
            row["Pneumothorax"],
        ) == (1.0, 1.0, 1.0, 0.0)
        assert math.isnan(row["Edema"]) and math.isnan(row["Atelectasis"])
    assert m.loc[_id(3), "Atelectasis"] == 1.0 and m.loc[_id(3), "Support Devices"] == 1.0
    assert (
        m.loc[_id(8), [c for c in m.columns if c in ("Cardiomegaly", "No Finding", "Edema")]]
        .isna()
        .all()
    )  # no label row
    assert (m.loc[_id(1), "view"], m.loc[_id(2), "view"], m.loc[_id(8), "view"]) == (
        "PA",
        "Lateral",
        "LL",
    )
    assert isinstance(m.loc[_id(5), "view"], float)  # blank ViewPosition -> NaN
    assert (m.loc[_id(3), "width"], m.loc[_id(3), "height"]) == (26, 22)  # Columns, Rows
    assert (
        Path(m.loc[_id(1), "path"]).relative_to(tmp_path / "mimic-cxr-jpg").as_posix()
        == f"files/p10/p10999901/s59999901/{_id(1)}.jpg"
    )
    assert (m.loc[_id(1), "patient_id"], m.loc[_id(1), "study_id"]) == ("10999901", "59999901")


def test_demographics_nearest_admission(tmp_path: Path) -> None:
    m = _m(tmp_path, mimic_iv_dir=IV)
    one = m.loc[_id(1)]
    assert (one["sex"], one["age_years"], one["race"], one["insurance"]) == (
        "F",
        52.0,
        "WHITE",
        "Medicare",
    )
    three = m.loc[_id(3)]  # study 2156-01-01: nearest admission 2156-01-03; age 52 + 3
    assert (three["age_years"], three["race"], three["insurance"]) == (
        55.0,
        "BLACK/AFRICAN AMERICAN",
        "Other",
    )
    four = m.loc[_id(4)]  # anchor_age 91 (top-coded) + 7 years; race UNABLE TO OBTAIN -> missing
    assert (four["sex"], four["age_years"], four["insurance"]) == (
        "M",
        98.0,
        "Medicaid",
    ) and pd.isna(four["race"])
    six = m.loc[_id(6)]  # subject not in MIMIC-IV
    assert (
        pd.isna(six["sex"])
        and math.isnan(six["age_years"])
        and pd.isna(six["race"])
        and pd.isna(six["insurance"])
    )
    eight = m.loc[_id(8)]  # in patients, no admissions
    assert (
        (eight["sex"], eight["age_years"]) == ("M", 40.0)
        and pd.isna(eight["race"])
        and pd.isna(eight["insurance"])
    )
    assert (m.loc[_id(7), "race"], m.loc[_id(7), "insurance"]) == ("ASIAN", "Private")


def test_most_frequent_rule(tmp_path: Path) -> None:
    m = _m(tmp_path, mimic_iv_dir=IV, admission_rule="most_frequent")
    # WHITE twice, BLACK once; insurance Medicare / Other / Medicaid once each -> alphabetical.
    assert (m.loc[_id(3), "race"], m.loc[_id(3), "insurance"]) == ("WHITE", "Medicaid")


def test_mimic_iv_v1_ethnicity(tmp_path: Path) -> None:
    a = _m(tmp_path / "v2", mimic_iv_dir=IV)
    b = _m(tmp_path / "v1", mimic_iv="v1", mimic_iv_dir=IV)
    pd.testing.assert_series_equal(a["race"], b["race"], check_names=False)
    pd.testing.assert_series_equal(a["insurance"], b["insurance"], check_names=False)


def test_without_mimic_iv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        m = _m(tmp_path, mimic_iv=None)
    assert m["sex"].isna().all() and m["race"].isna().all() and m["age_years"].isna().all()
    assert any("mimic_iv_dir not set" in r.getMessage() for r in caplog.records)


def test_negbio_labels(tmp_path: Path) -> None:
    a = _m(tmp_path / "a", mimic_iv=None)
    b = _m(tmp_path / "b", mimic_iv=None, mimic_labels="negbio")
    assert math.isnan(a.loc[_id(1), "Edema"]) and b.loc[_id(1), "Edema"] == 1.0


def test_uncertainty_ones(tmp_path: Path) -> None:
    m = _m(tmp_path, mimic_iv=None, uncertainty_policy="ones")
    assert m.loc[_id(1), "Edema"] == 1.0 and m.loc[_id(6), "Pneumonia"] == 1.0


def test_frontal_only(tmp_path: Path) -> None:
    m = _m(tmp_path, mimic_iv=None, frontal_only=True)
    assert set(m["view"]) == {"PA", "AP"}


def test_missing_image_error_and_skip(tmp_path: Path) -> None:
    root = build_mimic(tmp_path, mimic_iv=None)
    next(root.rglob(f"{_id(4)}.jpg")).unlink()
    with pytest.raises(
        DataFormatError,
        match=r"metadata\.csv\.gz \(mimic-cxr-2\.0\.0-metadata\.csv\.gz line 5\): "
        r"image .*p11888802/s58888802/.*\.jpg .*does not exist",
    ):
        read(root, base_params())
    assert len(read(root, base_params(on_missing="skip")).manifest) == len(MIMIC_IMAGES) - 1


def _rewrite_gz(path: Path, old: str, new: str) -> None:
    with gzip.open(path, "rt") as fh:
        text = fh.read()
    with gzip.open(path, "wt") as fh:
        fh.write(text.replace(old, new))


def _set_metadata_field(root: Path, line: int, field: int, value: str) -> None:
    """Set field ``field`` (0-based) of line ``line`` (1-based) of the metadata table."""
    path = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    with gzip.open(path, "rt") as fh:
        lines = fh.read().splitlines()
    fields = lines[line - 1].split(",")
    fields[field] = value
    lines[line - 1] = ",".join(fields)
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("field", [5, 6])  # Rows, Columns
def test_a_blank_image_size_names_the_metadata_line_or_is_skipped(
    tmp_path: Path, field: int
) -> None:
    """A blank Rows / Columns became NaN, then a bare IntCastingNaNError."""
    root = build_mimic(tmp_path, mimic_iv=None)
    _set_metadata_field(root, 4, field, "")
    with pytest.raises(
        DataFormatError,
        match=rf"metadata\.csv\.gz \(line 4\): dicom_id {_id(3)} has a blank Rows or Columns"
        r".*ingestion\.on_missing: skip",
    ):
        read(root, base_params())
    m = read(root, base_params(on_missing="skip")).manifest
    assert len(m) == len(MIMIC_IMAGES) - 1 and _id(3) not in set(m["image_id"])


@pytest.mark.parametrize("value", ["n/a", "0", "25.5"])
def test_an_image_size_that_is_not_a_positive_integer_names_the_metadata_line(
    tmp_path: Path, value: str
) -> None:
    root = build_mimic(tmp_path, mimic_iv=None)
    _set_metadata_field(root, 4, 5, value)
    for on_missing in ("error", "skip"):
        with pytest.raises(
            DataFormatError,
            match=rf"metadata\.csv\.gz \(line 4\): Rows '{value}' / Columns '26' of dicom_id "
            rf"{_id(3)}; expected positive integers",
        ):
            read(root, base_params(on_missing=on_missing))


def test_changed_metadata_header(tmp_path: Path) -> None:
    root = build_mimic(tmp_path, mimic_iv=None)
    _rewrite_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", "ViewPosition", "View")
    with pytest.raises(
        DataFormatError, match=r"metadata\.csv\.gz \(line 1\).*missing \['ViewPosition'\]"
    ):
        read(root, base_params())


def test_bad_split_value(tmp_path: Path) -> None:
    root = build_mimic(tmp_path, mimic_iv=None)
    _rewrite_gz(root / "mimic-cxr-2.0.0-split.csv.gz", "validate", "valid")
    with pytest.raises(DataFormatError, match=r"split\.csv\.gz \(line 8\): split 'valid'"):
        read(root, base_params())


def test_conflicting_gender(tmp_path: Path) -> None:
    root = build_mimic(tmp_path)
    path = tmp_path / "mimic-iv" / "hosp" / "patients.csv.gz"
    with gzip.open(path, "at") as fh:
        fh.write("10999901,M,52,2153,2014 - 2016,\n")
    with pytest.raises(
        DataFormatError,
        match=r"patients\.csv\.gz: patient '10999901' has conflicting sex across rows "
        r"\(line 2=F, line 6=M\)",
    ):
        read(root, base_params(mimic_iv_dir=IV))


def test_missing_mimic_iv_tables(tmp_path: Path) -> None:
    root = build_mimic(tmp_path, mimic_iv=None)
    with pytest.raises(DataFormatError, match="expected MIMIC-IV patients.csv.gz in hosp/"):
        read(root, base_params(mimic_iv_dir=IV))


def test_study_time_float_without_leading_zeros() -> None:
    when = study_datetime(pd.Series(["21530412", "21530412"]), pd.Series(["84517.234", "5959.5"]))
    assert when.iloc[0] == pd.Timestamp("2153-04-12 08:45:17") and when.iloc[1] == pd.Timestamp(
        "2153-04-12 00:59:59"
    )


def test_nearest_rule_tie_breaks_to_earlier_admission() -> None:
    studies = pd.DataFrame(
        {"study_id": ["s1"], "subject_id": ["1"], "_when": [pd.Timestamp("2100-01-10")]}
    )
    adm = pd.DataFrame(
        {
            "subject_id": ["1", "1"],
            "admittime": [pd.Timestamp("2100-01-15"), pd.Timestamp("2100-01-05")],
            "race": ["B", "A"],
            "insurance": ["Y", "X"],
        }
    )
    got = choose_admission_values(studies, adm, "nearest")
    assert (got.loc["s1", "race"], got.loc["s1", "insurance"]) == ("A", "X")


def test_nearest_rule_skips_admissions_that_do_not_record_the_value() -> None:
    """The nearest admission says UNKNOWN race (NaN here) and no insurance: each column
    comes from the nearest admission that records it, not NaN."""
    studies = pd.DataFrame(
        {
            "study_id": ["s1", "s2"],
            "subject_id": ["1", "2"],
            "_when": [pd.Timestamp("2150-01-02"), pd.Timestamp("2150-01-02")],
        }
    )
    adm = pd.DataFrame(
        {
            "subject_id": ["1", "1", "1", "2"],
            "admittime": pd.to_datetime(["2150-01-01", "2140-01-01", "2170-01-01", "2150-01-01"]),
            "race": [np.nan, "WHITE", "ASIAN", np.nan],
            "insurance": ["Medicare", np.nan, "Medicaid", np.nan],
        }
    )
    for rule in ("nearest", "most_frequent"):
        got = choose_admission_values(studies, adm, rule)
        assert got.loc["s2"].isna().all()  # nothing recorded anywhere: unknown
    got = choose_admission_values(studies, adm, "nearest")
    # the 2140 admission (10 years before) is nearer than 2170's
    assert (got.loc["s1", "race"], got.loc["s1", "insurance"]) == ("WHITE", "Medicare")
