"""SIIM-ACR adapter: DICOM tree, train-rle.csv quirks, instance masks and tube labels."""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.images import read_image
from cxr_spurious.io.masks import decode_rle, decode_siim_rle, encode_siim_rle
from cxr_spurious.io.safe_pickle import load_pickle
from cxr_spurious.sources.adapters import get_adapter
from cxr_spurious.sources.contract import assign_patient_splits, validate_manifest

from .fixtures import base_params, build_siim, siim_uid

read = get_adapter("siim_acr")
REAL_TUBES = (
    Path(__file__).resolve().parents[1] / "fixtures" / "siim_tube_labels" / "cxr_tube_dict.pkl"
)


def test_relative_column_major_rle_example() -> None:
    # DATASET_FORMATS.md: "5 2 3 1" on a 4x4 grid sets k = 5, 6, 10 -> (r1,c1), (r2,c1), (r2,c2).
    mask = decode_siim_rle("5 2 3 1", 4, 4)
    assert sorted(zip(*np.nonzero(mask))) == [(1, 1), (2, 1), (2, 2)]
    assert encode_siim_rle(mask) == "5 2 3 1"
    assert encode_siim_rle(np.zeros((4, 4), np.uint8)) == "-1"


def test_manifest_and_headers(tmp_path: Path) -> None:
    fx = build_siim(tmp_path)
    out = read(fx.root, base_params(tube_labels="cxr_tube_dict.pkl"))
    m = validate_manifest(out.manifest).set_index("image_id")
    assert out.tasks == ["Pneumothorax"]
    assert (
        set(m.index) == set(fx.instances) and fx.unlabelled not in m.index
    )  # no CSV row -> left out
    for sop, masks in fx.instances.items():
        assert m.loc[sop, "Pneumothorax"] == (1.0 if masks else 0.0)
        assert m.loc[sop, "patient_id"] == fx.patients[sop]
        assert (m.loc[sop, "width"], m.loc[sop, "height"]) == (1024, 1024)
    one = m.loc[siim_uid(4, 1)]
    assert (one["sex"], one["age_years"], one["view"], one["study_id"]) == (
        "M",
        62.0,
        "PA",
        siim_uid(2, 1),
    )
    four = m.loc[siim_uid(4, 4)]
    assert (four["sex"], four["age_years"], four["view"]) == (
        "F",
        58.0,
        "AP",
    )  # "058Y"; SeriesDescription fallback
    assert math.isnan(m.loc[siim_uid(4, 6), "age_years"])
    # The manifest path goes through the project's image reader (JPEG-compressed DICOM).
    image = read_image(m.loc[siim_uid(4, 2), "path"])
    assert image.shape == (1024, 1024) and image.dtype == np.uint8


def test_all_rows_unioned_and_kept_as_instances(tmp_path: Path) -> None:
    fx = build_siim(tmp_path)
    out = read(fx.root, base_params())
    csv_rows = [line.split(",", 1) for line in fx.csv.read_text().splitlines()[1:]]
    for sop, masks in fx.instances.items():
        union = decode_rle(out.segmentations[sop]["Pneumothorax"])
        expected = np.maximum.reduce(masks) if masks else np.zeros((1024, 1024), np.uint8)
        np.testing.assert_array_equal(union, expected)
        if not masks:
            assert sop not in out.instance_segmentations
            continue
        decoded = [decode_rle(r) for r in out.instance_segmentations[sop]["Pneumothorax"]]
        assert len(decoded) == len(masks)
        for got, want in zip(decoded, masks):
            np.testing.assert_array_equal(got, want)
        # Round trip: encoding the decoded instances gives back the CSV strings exactly.
        assert [encode_siim_rle(d) for d in decoded] == [v.strip() for k, v in csv_rows if k == sop]
        # pycocotools agrees on the area of the union.
        assert mask_utils.area(
            out.segmentations[sop]["Pneumothorax"]
            | {"counts": out.segmentations[sop]["Pneumothorax"]["counts"].encode()}
        ) == int(expected.sum())
    two = decode_rle(out.segmentations[siim_uid(4, 2)]["Pneumothorax"])
    assert two[150, 300] == 1 and two[160, 700] == 1  # both rows of image 2, not only the first


@pytest.mark.parametrize(
    ("header", "spaces"),
    [
        ("ImageId, EncodedPixels", True),
        ("ImageId, EncodedPixels", False),
        ("ImageId,EncodedPixels", False),
    ],
)
def test_header_and_value_spacing_variants(tmp_path: Path, header: str, spaces: bool) -> None:
    fx = build_siim(tmp_path, header=header, leading_space_values=spaces)
    if spaces:
        assert ", -1" in fx.csv.read_text()
    m = read(fx.root, base_params()).manifest
    assert int(m["Pneumothorax"].sum()) == 3


def test_tube_labels_make_the_test_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx = build_siim(tmp_path)
    with caplog.at_level(logging.WARNING):
        m = read(fx.root, base_params(tube_labels=str(fx.tube))).manifest.set_index("image_id")
    labelled = set(fx.tube_labels)
    assert set(m.index[m["split"] == "test"]) == labelled
    assert m.loc[siim_uid(4, 2), "tube"] == 1.0 and m.loc[siim_uid(4, 1), "tube"] == 0.0
    assert m.loc[~m.index.isin(labelled), "tube"].isna().all()
    assert (m.loc[~m.index.isin(labelled), "split"] != "test").all()
    assert any("1 of 3 tube-labelled" in r.getMessage() for r in caplog.records)


def test_tube_patient_pulls_all_its_images_into_test(tmp_path: Path) -> None:
    fx = build_siim(tmp_path)
    # Give image 5 the same PatientID as tube-labelled image 2.
    from .fixtures import write_dicom

    path = next((fx.root / "dicom-images-train").rglob(f"{siim_uid(4, 5)}.dcm"))
    write_dicom(
        path,
        np.zeros((1024, 1024), np.uint8),
        sop_uid=siim_uid(4, 5),
        study_uid=siim_uid(2, 5),
        patient_id="p-b",
        sex="F",
        age="45",
        jpeg=True,
    )
    m = validate_manifest(
        read(fx.root, base_params(tube_labels="cxr_tube_dict.pkl")).manifest
    ).set_index("image_id")
    assert m.loc[siim_uid(4, 5), "split"] == "test" and math.isnan(m.loc[siim_uid(4, 5), "tube"])


def test_without_tube_labels_splits_are_carved(tmp_path: Path) -> None:
    fx = build_siim(tmp_path)
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    m = validate_manifest(read(fx.root, base_params(seed=3, split_fractions=fractions)).manifest)
    assert m["tube"].isna().all()
    expected = assign_patient_splits(m["patient_id"], fractions, 3)  # one image per patient here
    assert list(m["split"]) == [expected[p] for p in m["patient_id"]]
    assert m["split"].value_counts().to_dict() == {"train": 4, "val": 2, "test": 2}


def test_rle_overflow_names_row(tmp_path: Path) -> None:
    fx = build_siim(tmp_path)
    lines = fx.csv.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ", 1048000 600"
    fx.csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFormatError,
        match=r"train-rle\.csv \(line 2, ImageId .*\): "
        r"RLE run ends at pixel 1048600, beyond a 1024x1024 image",
    ):
        read(fx.root, base_params())


def test_changed_header(tmp_path: Path) -> None:
    fx = build_siim(tmp_path, header="ImageId, Mask")
    with pytest.raises(
        DataFormatError, match=r"train-rle\.csv \(line 1\).*missing \['EncodedPixels'\]"
    ):
        read(fx.root, base_params())


def test_missing_dicom_error_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx = build_siim(tmp_path)
    next((fx.root / "dicom-images-train").rglob(f"{siim_uid(4, 3)}.dcm")).unlink()
    with pytest.raises(
        DataFormatError, match=rf"train-rle\.csv \(line 5\): ImageId {siim_uid(4, 3)} has no DICOM"
    ):
        read(fx.root, base_params())
    with caplog.at_level(logging.WARNING):
        m = read(fx.root, base_params(on_missing="skip")).manifest
    assert siim_uid(4, 3) not in set(m["image_id"]) and len(m) == 7
    assert any("1 row(s) skipped" in r.getMessage() for r in caplog.records)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    fx = build_siim(tmp_path)
    from .fixtures import write_dicom

    path = next((fx.root / "dicom-images-train").rglob(f"{siim_uid(4, 6)}.dcm"))
    write_dicom(path, None, sop_uid=siim_uid(4, 6))
    with pytest.raises(DataFormatError, match=rf"DICOM .*{siim_uid(4, 6)}\.dcm has no pixel data"):
        read(fx.root, base_params())
    m = read(fx.root, base_params(on_missing="skip")).manifest
    assert siim_uid(4, 6) not in set(m["image_id"])


def test_tube_file_must_be_plain_str_bool(tmp_path: Path) -> None:
    fx = build_siim(tmp_path)
    bad = fx.root / "bad.pkl"
    bad.write_bytes(pickle.dumps({siim_uid(4, 1): "yes"}))
    with pytest.raises(DataFormatError, match=r"bad\.pkl.*expected str ImageId -> bool"):
        read(fx.root, base_params(tube_labels="bad.pkl"))
    evil = fx.root / "evil.pkl"
    evil.write_bytes(pickle.dumps({siim_uid(4, 1): Path("x")}))
    with pytest.raises(DataFormatError, match="refusing to unpickle"):
        read(fx.root, base_params(tube_labels="evil.pkl"))


def test_real_tube_label_file() -> None:
    from cxr_spurious.sources.adapters.siim_acr import load_tube_labels

    raw = load_pickle(REAL_TUBES)
    labels = load_tube_labels(REAL_TUBES)
    assert isinstance(raw, dict) and len(labels) == 1951
    assert (
        sum(v == 1.0 for v in labels.values()) == 525
        and sum(v == 0.0 for v in labels.values()) == 1426
    )
    assert all(k.startswith("1.2.276.0.7230010.3.1.4.") for k in labels)
