"""NIH ChestX-ray14 adapter: both Data_Entry variants, split lists, boxes, nested PNGs."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.images import read_image
from cxr_spurious.io.masks import decode_rle
from cxr_spurious.sources.adapters import get_adapter
from cxr_spurious.sources.adapters.nih_cxr14 import TASKS
from cxr_spurious.sources.cache import build_cache, load_cache, make_cache_spec
from cxr_spurious.sources.contract import validate_manifest

from .fixtures import NIH_RGBA, NIH_ROWS, NIH_SIZE, base_params, build_nih, write_png

read = get_adapter("nih_cxr14")


def test_v2020_manifest(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    out = read(root, base_params())
    m = validate_manifest(out.manifest).set_index("image_id")
    assert out.tasks == list(TASKS) and len(m) == len(NIH_ROWS)
    a = m.loc["00004521_000"]
    assert (
        a["patient_id"],
        a["sex"],
        a["age_years"],
        a["view"],
        a["Effusion"],
        a["Infiltration"],
        a["Mass"],
    ) == ("4521", "F", 63.0, "AP", 1.0, 1.0, 0.0)
    assert (m.loc["00004521_001", list(TASKS)] == 0).all()  # No Finding -> all zero, not NaN
    assert m.loc["00017733_002", "Pleural_Thickening"] == 1.0
    assert math.isnan(m.loc["00011290_003", "age_years"])  # 414 is impossible
    assert m.loc["00011290_003", "follow_up"] == 2  # kept from the CSV, not the file suffix
    assert (
        Path(m.loc["00004521_001", "path"]).parent.parent.name == "images_002"
    )  # found below the root
    assert (m["width"] == NIH_SIZE).all() and (m["height"] == NIH_SIZE).all()
    test_ids = {r[0].removesuffix(".png") for r in NIH_ROWS if r[7] == "test"}
    assert set(m.index[m["split"] == "test"]) == test_ids
    assert (m.loc[list(test_ids), "patient_id"].isin(["40001", "40002"])).all()
    assert set(m.loc[~m.index.isin(test_ids), "split"]) <= {"train", "val"}
    assert (m["split"] == "val").any()  # carved from train_val by patient


def test_2017_variant_with_trailing_column_matches_v2020(tmp_path: Path) -> None:
    a = read(build_nih(tmp_path / "a"), base_params()).manifest
    b = read(build_nih(tmp_path / "b", variant="2017"), base_params()).manifest
    assert "Unnamed: 11" not in b.columns and "_trailing" not in b.columns
    cols = [c for c in a.columns if c != "path"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_rgba_png_reduced_to_one_channel(tmp_path: Path) -> None:
    m = read(build_nih(tmp_path), base_params()).manifest.set_index("image_id")
    image = read_image(m.loc[NIH_RGBA, "path"])
    assert image.ndim == 2 and image.dtype == np.uint8 and image.shape == (NIH_SIZE, NIH_SIZE)
    with Image.open(m.loc[NIH_RGBA, "path"]) as img:
        assert img.mode == "RGBA"
        channel0 = np.asarray(img)[
            ..., 0
        ]  # R = G = B here, so grey = channel 0 (TorchXRayVision's choice)
    np.testing.assert_array_equal(image, channel0)


def test_boxes_become_polygons_masks_and_instances(tmp_path: Path) -> None:
    out = read(build_nih(tmp_path), base_params())
    ann = out.annotations["00011290_003"]
    assert ann["img_size"] == [NIH_SIZE, NIH_SIZE]
    assert "Infiltration" in ann and "Infiltrate" not in ann
    assert ann["Infiltration"] == [
        [[19.0, 33.6667], [41.4444, 33.6667], [41.4444, 53.6667], [19.0, 53.6667]]
    ]
    assert (
        len(ann["Nodule"]) == 2 and len(out.instance_segmentations["00011290_003"]["Nodule"]) == 2
    )
    second = decode_rle(out.instance_segmentations["00011290_003"]["Nodule"][1])
    expected = np.zeros((NIH_SIZE, NIH_SIZE), np.uint8)
    expected[40:46, 50:55] = 1  # box x=50, y=40, w=5, h=6: 5 x 6 pixels (7 x 6 before)
    np.testing.assert_array_equal(second, expected)
    union = decode_rle(out.segmentations["00011290_003"]["Nodule"])
    assert (
        union.sum()
        == second.sum() + decode_rle(out.instance_segmentations["00011290_003"]["Nodule"][0]).sum()
    )
    seg = out.segmentations["00004521_000"]
    # Effusion has a box; Infiltration is positive without a box (location unknown);
    # negatives are empty.
    assert decode_rle(seg["Effusion"]).sum() > 0 and "Infiltration" not in seg
    assert decode_rle(seg["Cardiomegaly"]).sum() == 0 and set(seg) == {
        t for t in TASKS if t != "Infiltration"
    }
    assert set(out.annotations) == {"00004521_000", "00011290_003"}


def test_a_box_outside_its_image_names_the_line_and_the_image_size(tmp_path: Path) -> None:
    """A downsampled copy (64 px PNGs, boxes in 1024 px coordinates): box_mask drew nothing,
    so the positive label got a known-empty mask, silently."""
    root = build_nih(tmp_path)
    bbox = root / "BBox_List_2017.csv"
    lines = bbox.read_text().splitlines()
    lines[1] = "00004521_000.png,Effusion,612.5,402.1333,180.2667,251.7333"
    bbox.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFormatError,
        match=r"BBox_List_2017\.csv \(line 2\): Effusion box .* lies outside its image "
        r"00004521_000\.png of 64x64 \(w x h\) pixels",
    ):
        read(root, base_params())
    # a box of a task left out is not used, so not checked
    out = read(root, base_params(tasks=["Nodule"]))
    assert set(out.annotations) == {"00011290_003"}


def test_cached_box_targets_are_the_box_masks(tmp_path: Path) -> None:
    """The cache took the box target from the corner polygon (outline included): one row and
    one column more than the box's [x, x + w) x [y, y + h) mask."""
    out = read(build_nih(tmp_path), base_params())
    spec = make_cache_spec(
        out.manifest,
        out.tasks,
        NIH_SIZE,  # the PNGs' size: no resampling
        segmentations=out.segmentations,
        instance_segmentations=out.instance_segmentations,
        annotations=out.annotations,
    )
    build_cache(spec, tmp_path / "cache", progress=False)
    cache = load_cache(tmp_path / "cache")
    n_boxed = 0
    for image_id, entry in out.instance_segmentations.items():
        row = cache.row(image_id)
        for task in entry:
            j = cache.tasks.index(task)
            mask = decode_rle(out.segmentations[image_id][task])
            np.testing.assert_array_equal(cache.masks[row, j], mask)
            np.testing.assert_array_equal(cache.boxes[row, j], mask, err_msg=f"{image_id}/{task}")
            n_boxed += 1
    assert n_boxed == 3


def test_bbox_header_and_labels_checked(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    bbox = root / "BBox_List_2017.csv"
    text = bbox.read_text()
    bbox.write_text(text.replace("Infiltrate", "Infiltrat"))
    with pytest.raises(
        DataFormatError, match=r"BBox_List_2017\.csv \(line 3\): unknown box label 'Infiltrat'"
    ):
        read(root, base_params())
    bbox.write_text(text.replace("Bbox [x,y,w,h]", "Box x,y,w,h"))
    with pytest.raises(
        DataFormatError, match=r"BBox_List_2017\.csv \(line 1\).*unexpected CSV header"
    ):
        read(root, base_params())


def test_a_box_row_with_a_value_after_the_sixth_field_names_its_line(tmp_path: Path) -> None:
    """A shifted or extended row (a seventh value) lost that value silently
    (``usecols=range(6)``); a short one is refused too."""
    root = build_nih(tmp_path)
    bbox = root / "BBox_List_2017.csv"
    lines = bbox.read_text().splitlines()
    fields = lines[2].split(",")
    assert len(fields) >= 6
    extended = ",".join([*fields[:6], "12.5", *fields[7:]])
    bbox.write_text("\n".join([*lines[:2], extended, *lines[3:]]) + "\n")
    with pytest.raises(
        DataFormatError,
        match=r"BBox_List_2017\.csv \(line 3\): row has \d+ fields with values after the 6th "
        r"\(\['12\.5'\]\)",
    ):
        read(root, base_params())
    bbox.write_text("\n".join([*lines[:2], ",".join(fields[:5]), *lines[3:]]) + "\n")
    with pytest.raises(DataFormatError, match=r"\(line 3\): row has 5 fields; expected 6"):
        read(root, base_params())


def test_changed_entry_header(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    path = root / "Data_Entry_2017_v2020.csv"
    path.write_text(path.read_text().replace("Patient Gender", "Sex", 1))
    with pytest.raises(
        DataFormatError,
        match=r"Data_Entry_2017_v2020\.csv \(line 1\).*missing \['Patient Gender'\]",
    ):
        read(root, base_params())


def test_unknown_finding_names_line(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    path = root / "Data_Entry_2017_v2020.csv"
    path.write_text(path.read_text().replace("Pleural_Thickening", "Pleural Thickening"))
    with pytest.raises(DataFormatError, match=r"\(line 4\): unknown finding 'Pleural Thickening'"):
        read(root, base_params())


def test_missing_image_error_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = build_nih(tmp_path)
    next(root.rglob("00030003_000.png")).unlink()
    with pytest.raises(
        DataFormatError,
        match=r"Data_Entry_2017_v2020\.csv \(line 8\): image .*00030003_000\.png .*does not exist",
    ):
        read(root, base_params())
    with caplog.at_level(logging.WARNING):
        m = read(root, base_params(on_missing="skip")).manifest
    assert len(m) == len(NIH_ROWS) - 1


def test_overlapping_lists_rejected(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    with (root / "test_list.txt").open("a") as fh:
        fh.write("00030001_000.png\n")
    with pytest.raises(
        DataFormatError,
        match=r"test_list\.txt \(line 3\): 00030001_000\.png is also in the train list",
    ):
        read(root, base_params())


def test_one_split_list_without_the_other_is_an_error(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    (root / "train_val_list.txt").unlink()
    with pytest.raises(
        DataFormatError, match=r"test_list\.txt: train_val_list\.txt is missing beside it"
    ):
        read(root, base_params())


def test_lists_not_patient_disjoint(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    lines = (root / "train_val_list.txt").read_text().replace("00004521_001.png\n", "")
    (root / "train_val_list.txt").write_text(lines)
    with (root / "test_list.txt").open("a") as fh:
        fh.write("00004521_001.png\n")
    with pytest.raises(DataFormatError, match="patient '4521' appears in several official splits"):
        read(root, base_params())


def test_without_lists_all_splits_carved(tmp_path: Path) -> None:
    m = validate_manifest(
        read(
            build_nih(tmp_path, with_lists=False, with_boxes=False),
            base_params(split_fractions={"train": 0.5, "val": 0.25, "test": 0.25}),
        ).manifest
    )
    assert set(m["split"]) == {"train", "val", "test"}


def test_conflicting_sex(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    path = root / "Data_Entry_2017_v2020.csv"
    path.write_text(path.read_text().replace("No Finding,1,4521,63,F", "No Finding,1,4521,63,M"))
    with pytest.raises(
        DataFormatError,
        match=r"patient '4521' has conflicting sex across rows "
        r"\(Data_Entry_2017_v2020\.csv line 2=F, Data_Entry_2017_v2020\.csv line 3=M\)",
    ):
        read(root, base_params())


def test_duplicate_basename_in_tree(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    write_png(root / "extra" / "00030001_000.png", (8, 8))
    with pytest.raises(DataFormatError, match="two files named '00030001_000.png'"):
        read(root, base_params())


def test_stray_os_files_ignored(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    (root / "images_001" / "images" / "._00030001_000.png").write_bytes(b"\x00\x05\x16\x07")
    m = read(root, base_params()).manifest
    assert len(m) == len(NIH_ROWS)


def test_kaggle_style_age_strings(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    path = root / "Data_Entry_2017_v2020.csv"
    path.write_text(path.read_text().replace("17733,41,M", "17733,041Y,M"))
    m = read(root, base_params()).manifest.set_index("image_id")
    assert m.loc["00017733_002", "age_years"] == 41.0


@pytest.mark.parametrize("variant", ["v2020", "2017"])
@pytest.mark.parametrize(
    ("fields", "count"),
    [
        (lambda f: f[:5], 5),  # a short row: the view, sex, size and spacing missing
        (lambda f: [*f[:4], *f[5:]], 10),  # the age dropped: every later value shifted
        (lambda f: [*f, "EXTRA"], 12),  # a value past the spacing
    ],
    ids=["short", "shifted", "long"],
)
def test_a_row_with_the_wrong_number_of_fields_names_its_line(
    tmp_path: Path, variant: str, fields, count: int
) -> None:
    root = build_nih(tmp_path, variant=variant)
    path = root / ("Data_Entry_2017.csv" if variant == "2017" else "Data_Entry_2017_v2020.csv")
    lines = path.read_text().splitlines()
    row = lines[3].split(",")[:11]  # the third data row, without the 2017 trailing comma
    assert len(row) == 11
    lines[3] = ",".join(fields(row)) + ("," if variant == "2017" else "")
    lines.insert(2, "")  # a blank line: the bad row is the file's line 5
    path.write_text("\n".join(lines) + "\n")
    if variant == "2017":  # the row's trailing comma: one more, empty, field
        count, empty = count + 1, r" \(the last empty\)"
    else:
        empty = ""
    with pytest.raises(
        DataFormatError,
        match=rf"{path.name} \(line 5\): row has {count} fields{empty}; expected 11 like the",
    ):
        read(root, base_params())


def test_a_blank_finding_label_names_its_line(tmp_path: Path) -> None:
    root = build_nih(tmp_path)
    path = root / "Data_Entry_2017_v2020.csv"
    lines = path.read_text().splitlines()
    row = lines[2].split(",")
    lines[2] = ",".join([row[0], " ", *row[2:]])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFormatError,
        match=r"\(line 3\): empty 'Finding Labels' \(' '\); expected a finding or 'No Finding'",
    ):
        read(root, base_params())


def test_2017_header_with_rows_without_the_trailing_comma(tmp_path: Path) -> None:
    a = read(build_nih(tmp_path / "a"), base_params()).manifest
    root = build_nih(tmp_path / "b", variant="2017")
    path = root / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *(line.removesuffix(",") for line in lines[1:])]) + "\n")
    b = read(root, base_params()).manifest
    cols = [c for c in a.columns if c != "path"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_a_box_mask_covers_w_by_h_pixels() -> None:
    from cxr_spurious.sources.adapters.nih_cxr14 import box_mask

    # the corner polygon filled with its outline covered (w + 1) x (h + 1) pixels: an area
    # 1.155 x the box's for a 10 x 20 box, 1.058 x for a 40 x 38.75 one
    for x, y, w, h in [(100, 50, 10, 20), (12.4, 7.6, 40.0, 38.75), (0.0, 0.0, 1024.0, 1024.0)]:
        mask = box_mask([(x, y, w, h)], 1024, 1024)
        assert abs(int(mask.sum()) - w * h) <= w + h  # edges rounded to the pixel grid
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert (rows[0], cols[0]) == (round(y), round(x))
        assert (rows[-1] + 1, cols[-1] + 1) == (min(round(y + h), 1024), min(round(x + w), 1024))
    np.testing.assert_array_equal(box_mask([(100, 50, 10, 20)], 1024, 1024)[50:70, 100:110], 1)
    assert box_mask([(100, 50, 10, 20)], 1024, 1024).sum() == 200
    # a sub-pixel box keeps a pixel; one past the right edge draws nothing; one across it is cut
    assert box_mask([(5.2, 5.2, 0.2, 0.2)], 16, 16).sum() == 1
    assert box_mask([(20.0, 3.0, 4.0, 4.0)], 16, 16).sum() == 0
    assert box_mask([(14.0, 0.0, 4.0, 2.0)], 16, 16).sum() == 4
