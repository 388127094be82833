"""MURA adapter: header-less CSVs, study labels copied to images, body part, RGB PNGs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.images import read_image
from cxr_spurious.sources.adapters import get_adapter
from cxr_spurious.sources.contract import validate_manifest

from .fixtures import MURA_STUDIES, base_params, build_mura

read = get_adapter("mura")
N_IMAGES = sum(int(s[4]) for s in MURA_STUDIES)


def test_manifest(tmp_path: Path) -> None:
    root = build_mura(tmp_path)
    out = read(root, base_params())
    m = validate_manifest(out.manifest).set_index("image_id")
    assert out.tasks == ["Abnormal"] and len(m) == N_IMAGES  # first CSV line is data, not a header
    wrist = m.loc["XR_WRIST_patient02345_study1_positive_image1"]
    assert (wrist["Abnormal"], wrist["body_part"], wrist["patient_id"], wrist["study_id"]) == (
        1.0,
        "wrist",
        "patient02345",
        "patient02345_XR_WRIST_study1_positive",
    )
    assert (wrist["width"], wrist["height"]) == (30, 41)
    # study-level labels copied to every image of the study
    assert (
        m.loc[m["study_id"] == "patient00012_XR_SHOULDER_study2_positive", "Abnormal"] == 1.0
    ).sum() == 3
    assert m.loc["XR_HAND_patient02345_study1_negative_image1", "Abnormal"] == 0.0
    assert set(m["body_part"]) == {
        "wrist",
        "hand",
        "elbow",
        "shoulder",
        "finger",
        "humerus",
        "forearm",
    }
    assert set(m.loc[m["patient_id"].isin(["patient11301", "patient11302"]), "split"]) == {"val"}
    assert (m.loc[m["split"] == "val", "patient_id"].str[7:].astype(int) >= 11185).all()
    assert "test" in set(m["split"])  # hidden official test set -> carved from train patients
    # one patient, two body parts, one split
    assert m.loc[m["patient_id"] == "patient02345", "split"].nunique() == 1
    assert m["view"].isna().all() and not any(i.startswith("._") or "._" in i for i in m.index)


def test_rgb_png_read_as_gray(tmp_path: Path) -> None:
    m = read(build_mura(tmp_path), base_params()).manifest.set_index("image_id")
    image = read_image(m.loc["XR_HAND_patient02345_study1_negative_image1", "path"])
    assert image.ndim == 2 and image.dtype == np.uint8 and image.shape == (41, 31)


def test_header_row_is_rejected(tmp_path: Path) -> None:
    root = build_mura(tmp_path)
    csv = root / "MURA-v1.1" / "train_image_paths.csv"
    csv.write_text("path\n" + csv.read_text())
    with pytest.raises(
        DataFormatError, match=r"train_image_paths\.csv \(line 1\): 'path' is not .*no header"
    ):
        read(root, base_params())


def test_label_contradicting_folder(tmp_path: Path) -> None:
    root = build_mura(tmp_path)
    csv = root / "MURA-v1.1" / "valid_labeled_studies.csv"
    csv.write_text(csv.read_text().replace("study2_negative/,0", "study2_negative/,1"))
    with pytest.raises(
        DataFormatError,
        match=r"valid_labeled_studies\.csv \(line 1\): "
        r"label 1 contradicts the study folder 'study2_negative'",
    ):
        read(root, base_params())


def test_unlabelled_study_error_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = build_mura(tmp_path)
    csv = root / "MURA-v1.1" / "train_labeled_studies.csv"
    csv.write_text(
        "".join(line + "\n" for line in csv.read_text().splitlines() if "XR_ELBOW" not in line)
    )
    with pytest.raises(
        DataFormatError,
        match=r"train_image_paths\.csv \(line 4\): "
        r"study train/XR_ELBOW/patient00011/study1_negative/ .*no row",
    ):
        read(root, base_params())
    with caplog.at_level(logging.WARNING):
        m = read(root, base_params(on_missing="skip")).manifest
    assert len(m) == N_IMAGES - 1


def test_missing_image(tmp_path: Path) -> None:
    root = build_mura(tmp_path)
    (root / "MURA-v1.1/valid/XR_FOREARM/patient11302/study1_positive/image2.png").unlink()
    with pytest.raises(
        DataFormatError, match=r"valid_image_paths\.csv line 3.*image2\.png.*does not exist"
    ):
        read(root, base_params())
    assert len(read(root, base_params(on_missing="skip")).manifest) == N_IMAGES - 1


def test_stray_paths_in_csv_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = build_mura(tmp_path)
    csv = root / "MURA-v1.1" / "train_image_paths.csv"
    csv.write_text(
        csv.read_text() + "MURA-v1.1/train/XR_WRIST/patient02345/study1_positive/._image2.png\n"
    )
    with caplog.at_level(logging.WARNING):
        m = read(root, base_params()).manifest
    assert len(m) == N_IMAGES and any("OS clutter" in r.getMessage() for r in caplog.records)


def test_root_may_be_dataset_folder(tmp_path: Path) -> None:
    root = build_mura(tmp_path)
    assert len(read(root / "MURA-v1.1", base_params()).manifest) == N_IMAGES
