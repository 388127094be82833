"""The CheXlocalize-layout adapter: real sample, synthetic trees, and every bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cxr_spurious.errors import ContractError, DataFormatError, ParameterError
from cxr_spurious.io.chexlocalize import check_annotations, rasterize_annotations
from cxr_spurious.io.masks import decode_rle, encode_rle, rasterize_polygons
from cxr_spurious.sources.adapters import get_adapter
from cxr_spurious.sources.adapters._common import DEFAULT_FRACTIONS
from cxr_spurious.sources.contract import assign_patient_splits, validate_manifest
from cxr_spurious.tasks import CHEXLOCALIZE_TASKS, CHEXPERT_HEADER, CHEXPERT_OBSERVATIONS

H, W = 40, 50
POLY = [[[5.0, 5.0], [30.0, 6.0], [28.0, 25.0], [6.0, 22.0]]]


def make_tree(root: Path, n_patients: int = 3, *, split_dir: str = "valid") -> Path:
    """A small CheXlocalize-layout folder: valid.csv, JPEG images, gt JSON files."""
    rows, annotations, segmentations = [], {}, {}
    rng = np.random.default_rng(0)
    for p in range(n_patients):
        rel = f"{split_dir}/patient{64541 + p}/study1/view1_frontal.jpg"
        img_path = root / rel
        img_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).save(img_path, quality=90)
        labels = {obs: "0.0" for obs in CHEXPERT_OBSERVATIONS}
        labels["Cardiomegaly"] = "1.0" if p % 2 == 0 else "0.0"
        rows.append(
            {
                "Path": f"CheXpert-v1.0/{rel}",
                "Sex": "Female" if p % 2 else "Male",
                "Age": str(50 + p),
                "Frontal/Lateral": "Frontal",
                "AP/PA": "PA",
                **labels,
            }
        )
        cxr_id = f"patient{64541 + p}_study1_view1_frontal"
        entry = {"img_size": [H, W]}
        if p % 2 == 0:
            entry["Cardiomegaly"] = POLY
        annotations[cxr_id] = entry
        segmentations[cxr_id] = {
            t: encode_rle(rasterize_polygons(entry.get(t, []), H, W)) for t in CHEXLOCALIZE_TASKS
        }
    with (root / "valid.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CHEXPERT_HEADER))
        writer.writeheader()
        writer.writerows(rows)
    (root / "gt_annotations_val.json").write_text(json.dumps(annotations))
    (root / "gt_segmentations_val.json").write_text(json.dumps(segmentations))
    return root


def read(root: Path, **params):
    return get_adapter("chexlocalize")(root, {"source": "chexlocalize", **params})


def test_synthetic_tree_gives_a_valid_manifest(tmp_path: Path) -> None:
    out = read(make_tree(tmp_path))
    m = validate_manifest(out.manifest)
    assert list(m["image_id"]) == [f"patient{64541 + p}_study1_view1_frontal" for p in range(3)]
    assert (m["split"] == "val").all() and (m["width"] == W).all() and (m["height"] == H).all()
    assert list(m["sex"]) == ["M", "F", "M"] and list(m["age_years"]) == [50.0, 51.0, 52.0]
    assert out.tasks == list(CHEXLOCALIZE_TASKS) and "Airspace Opacity" in m.columns
    assert m["Cardiomegaly"].tolist() == [1.0, 0.0, 1.0]
    mask = decode_rle(out.segmentations["patient64541_study1_view1_frontal"]["Cardiomegaly"])
    np.testing.assert_array_equal(mask, rasterize_polygons(POLY, H, W))


def test_segmentations_are_rasterised_when_only_annotations_exist(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / "gt_segmentations_val.json").unlink()
    out = read(root)
    assert set(out.segmentations["patient64541_study1_view1_frontal"]) == set(CHEXLOCALIZE_TASKS)
    assert (
        decode_rle(out.segmentations["patient64541_study1_view1_frontal"]["Cardiomegaly"]).sum()
        == rasterize_polygons(POLY, H, W).sum()
    )


def test_missing_image_names_csv_and_row(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / "valid/patient64542/study1/view1_frontal.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"valid\.csv \(row 3\).*does not exist"):
        read(root)


def test_missing_image_can_be_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_tree(tmp_path)
    (root / "valid/patient64542/study1/view1_frontal.jpg").unlink()
    out = read(root, on_missing="skip")
    assert len(out.manifest) == 2
    assert "Skipped 1 CSV row" in caplog.text


def test_a_table_whose_every_image_is_missing_is_an_error_even_when_skipping(
    tmp_path: Path,
) -> None:
    """Images moved elsewhere (another root, another path prefix): skipping would leave an
    empty split behind a warning."""
    root = make_tree(tmp_path)
    moved = tmp_path / "moved"
    (root / "valid").rename(moved)
    with pytest.raises(
        DataFormatError, match=r"valid\.csv \(row 2\).*none of the 3 images.*ingestion\.root"
    ):
        read(root, on_missing="skip")


def test_truncated_image_is_reported(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    img = root / "valid/patient64543/study1/view1_frontal.jpg"
    img.write_bytes(img.read_bytes()[:100])
    with pytest.raises(
        DataFormatError, match=r"view1_frontal\.jpg.*unreadable or truncated.*row 4"
    ):
        read(root)


def test_wrong_csv_header(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    text = (root / "valid.csv").read_text().replace("Pleural Effusion", "Effusion", 1)
    (root / "valid.csv").write_text(text)
    with pytest.raises(
        DataFormatError,
        match=r"valid\.csv \(line 1\).*unknown columns \['Effusion'\], "
        r"missing columns \['Pleural Effusion'\]",
    ):
        read(root)


def test_unknown_task_in_annotations(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    ann = json.loads((root / "gt_annotations_val.json").read_text())
    ann["patient64541_study1_view1_frontal"]["Cardiomegally"] = POLY
    (root / "gt_annotations_val.json").write_text(json.dumps(ann))
    with pytest.raises(
        DataFormatError,
        match=r"gt_annotations \(patient64541_study1_view1_frontal\)"
        r".*unknown task name 'Cardiomegally'",
    ):
        read(root)


def test_polygon_with_two_points(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    ann = json.loads((root / "gt_annotations_val.json").read_text())
    ann["patient64541_study1_view1_frontal"]["Cardiomegaly"] = [[[1.0, 1.0], [5.0, 5.0]]]
    (root / "gt_annotations_val.json").write_text(json.dumps(ann))
    with pytest.raises(
        DataFormatError,
        match=r"patient64541_study1_view1_frontal/Cardiomegaly"
        r".*2 point\(s\); a polygon needs at least 3",
    ):
        read(root)


def test_rle_size_disagreeing_with_image(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    seg = json.loads((root / "gt_segmentations_val.json").read_text())
    seg["patient64542_study1_view1_frontal"]["Edema"] = encode_rle(np.zeros((W, H), dtype=np.uint8))
    (root / "gt_segmentations_val.json").write_text(json.dumps(seg))
    with pytest.raises(
        DataFormatError,
        match=r"patient64542_study1_view1_frontal/Edema"
        r".*RLE size \[50, 40\] disagrees with the image's \[h, w\] \[40, 50\]",
    ):
        read(root)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / "gt_annotations_val.json").write_text('{"a": \n oops}')
    with pytest.raises(DataFormatError, match=r"gt_annotations_val\.json \(line 2\): invalid JSON"):
        read(root)


def test_patient_in_two_splits_is_rejected(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    # The same patient also appears in the test labels.
    lines = (root / "valid.csv").read_text().splitlines()
    header = ",".join(["Path", *CHEXPERT_OBSERVATIONS])
    row = lines[1].split(",")
    test_row = [row[0].replace("CheXpert-v1.0/valid", "test").replace("study1", "study2")] + row[5:]
    img = root / "test/patient64541/study2/view1_frontal.jpg"
    img.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((H, W), dtype=np.uint8)).save(img)
    (root / "test_labels.csv").write_text(header + "\n" + ",".join(test_row) + "\n")
    out = read(root)
    with pytest.raises(ContractError, match="patient 'patient64541' appears in several splits"):
        validate_manifest(out.manifest)


def test_unknown_source_lists_valid_names() -> None:
    with pytest.raises(
        ParameterError, match="ingestion.source.*unknown source 'chexpertt'.*chexlocalize"
    ):
        get_adapter("chexpertt")


def test_real_sample(chexlocalize_sample: Path) -> None:
    out = read(chexlocalize_sample)
    m = validate_manifest(out.manifest)
    assert len(m) == 2 and (m["split"] == "val").all()
    row = m.set_index("image_id").loc["patient64541_study1_view1_frontal"]
    assert (row["width"], row["height"]) == (2828, 2320)
    assert row["Cardiomegaly"] == 1.0 and row["Airspace Opacity"] == 1.0
    ann = json.loads((chexlocalize_sample / "gt_annotations_val.json").read_text())
    for cxr_id, entry in ann.items():
        h, w = entry["img_size"]
        for task in CHEXLOCALIZE_TASKS:
            ours = rasterize_polygons(entry.get(task, []), h, w)
            np.testing.assert_array_equal(ours, decode_rle(out.segmentations[cxr_id][task]))


def test_unknown_on_missing_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"ingestion\.on_missing.*'ignore'.*error, skip"):
        read(make_tree(tmp_path), on_missing="ignore")


def test_rows_of_labels_csv_get_seeded_patient_splits(tmp_path: Path) -> None:
    root = make_tree(tmp_path, n_patients=8)
    (root / "valid.csv").rename(root / "labels.csv")  # no split of its own, no attributes.csv
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    out = read(root, split_fractions=fractions, seed=3)
    m = validate_manifest(out.manifest)
    expected = assign_patient_splits(m["patient_id"], fractions, 3)
    assert m["split"].tolist() == m["patient_id"].map(expected).tolist()
    assert set(m["split"]) == {"train", "val", "test"}
    # Without split_fractions / seed: the defaults every adapter shares.
    default = read(root).manifest.set_index("patient_id")["split"]
    assert default.to_dict() == assign_patient_splits(list(default.index), DEFAULT_FRACTIONS, 0)


def test_human_benchmark_is_read_checked_and_limited_to_ingested_images(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    ann = json.loads((root / "gt_annotations_val.json").read_text())
    extra = {"patient99999_study1_view1_frontal": {"img_size": [H, W]}}
    (root / "hb_annotations_test.json").write_text(json.dumps({**ann, **extra}))
    (root / "hb_salient_pt_test.json").write_text(
        json.dumps({"patient64541_study1_view1_frontal": {}})
    )
    out = read(root)
    assert out.human_benchmark["annotations"] == ann
    assert out.human_benchmark["salient_points"] == {"patient64541_study1_view1_frontal": {}}
    assert out.human_benchmark["segmentations"] == {}
    ann["patient64542_study1_view1_frontal"]["Edema"] = [[[1.0, 1.0], [5.0, 5.0]]]
    (root / "hb_annotations_test.json").write_text(json.dumps(ann))
    with pytest.raises(
        DataFormatError,
        match=r"hb_annotations \(patient64542_study1_view1_frontal/Edema\).*2 point",
    ):
        read(root)


_TRIANGLE = [[1, 2], [3, 4], [5, 6]]
_POINTS = r"polygon 0 must be a list of \[x, y\] points of finite numbers, got "
_SIZE = r"'img_size' must be two integers \[h, w\] in 1\.\.32768, got "


@pytest.mark.parametrize(
    ("entry", "where", "problem"),
    [
        ({"Edema": [[[1, 2], [3]]]}, "c1/Edema", _POINTS + r"\[\[1, 2\], \[3\]\]"),
        ({"Edema": [[["a", 2], [3, 4], [5, 6]]]}, "c1/Edema", _POINTS + r"\[\['a', 2\]"),
        ({"Edema": [[[float("nan"), 2], [3, 4], [5, 6]]]}, "c1/Edema", _POINTS + r"\[\[nan, 2\]"),
        ({"Edema": [[[True, 2], [3, 4], [5, 6]]]}, "c1/Edema", _POINTS + r"\[\[True, 2\]"),
        ({"Edema": [[[10**400, 2], [3, 4], [5, 6]]]}, "c1/Edema", _POINTS),
        ({"Edema": [{"x": 1}]}, "c1/Edema", _POINTS + r"\{'x': 1\}"),
        ({"Edema": 5}, "c1/Edema", r"expected a list of polygons, got 5"),
        ({"Edema": "abc"}, "c1/Edema", r"expected a list of polygons, got 'abc'"),
        ({"img_size": 10}, "c1", _SIZE + "10"),
        ({"img_size": [-10, 10]}, "c1", _SIZE + r"\[-10, 10\]"),
        ({"img_size": [10.5, 10]}, "c1", _SIZE + r"\[10\.5, 10\]"),
        ({"img_size": [10, 10, 3]}, "c1", _SIZE + r"\[10, 10, 3\]"),
        ({"img_size": [40000, 10]}, "c1", _SIZE + r"\[40000, 10\]"),
    ],
    ids=[
        "ragged",
        "string",
        "nan",
        "bool",
        "huge-int",
        "dict",
        "int-polygons",
        "str-polygons",
        "int-size",
        "negative-size",
        "float-size",
        "three-sizes",
        "size-beyond-limit",
    ],
)
def test_malformed_annotations_name_the_file_cxr_and_task(
    entry: dict, where: str, problem: str
) -> None:
    annotations = {"c1": {"img_size": [10, 10], "Edema": [_TRIANGLE], **entry}}
    with pytest.raises(DataFormatError, match=rf"^gt_annotations_val\.json \({where}\): {problem}"):
        check_annotations(annotations, "gt_annotations_val.json", {})


def test_well_formed_annotations_rasterise_like_the_reference() -> None:
    annotations = {"c1": {"img_size": [10, 12], "Edema": [_TRIANGLE, [[8, 1], [11, 1], [11, 4]]]}}
    check_annotations(annotations, "gt_annotations_val.json", {"c1": (10, 12)})
    (rle,) = rasterize_annotations(annotations, ["Edema"])["c1"].values()
    canvas = Image.new("1", (12, 10))  # CheXlocalize's reference: PIL polygons, outline filled
    draw = ImageDraw.Draw(canvas)
    for polygon in annotations["c1"]["Edema"]:
        draw.polygon([tuple(p) for p in polygon], outline=1, fill=1)
    np.testing.assert_array_equal(decode_rle(rle), np.array(canvas, dtype=np.uint8))


def test_an_image_beyond_the_decompression_bomb_limit_names_file_and_row(
    tmp_path: Path, monkeypatch
) -> None:
    root = make_tree(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", (H * W) // 2 - 1)  # refused past 2x
    with pytest.raises(
        DataFormatError,
        match=r"patient64541/study1/view1_frontal\.jpg: image too large to read "
        r"\(referenced by valid\.csv row 2\): Image size \(2000 pixels\) exceeds limit",
    ):
        read(root)


def _edit_valid_csv(root: Path, row: int, **values: str) -> None:
    """Set columns of data row ``row`` (0-based) of ``valid.csv``."""
    with (root / "valid.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[row].update(values)
    with (root / "valid.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CHEXPERT_HEADER))
        writer.writeheader()
        writer.writerows(rows)


def test_the_release_layout_finds_the_json_folder_beside_the_chexpert_folder(
    tmp_path: Path,
) -> None:
    """<download>/CheXpert/ (labels, images) beside <download>/CheXlocalize/ (JSON files): with
    root = the CheXpert folder, no annotation was found and nothing said so."""
    expected = read(make_tree(tmp_path / "flat"))
    root = make_tree(tmp_path / "download" / "CheXpert")
    (tmp_path / "download" / "CheXlocalize").mkdir()
    for name in ("gt_annotations_val.json", "gt_segmentations_val.json"):
        (root / name).rename(tmp_path / "download" / "CheXlocalize" / name)
    out = read(root)
    assert out.annotations == expected.annotations and len(out.annotations) == 3
    assert out.segmentations == expected.segmentations


def test_positive_labels_without_any_ground_truth_file_name_the_folders_searched(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path / "CheXpert")
    for name in ("gt_annotations_val.json", "gt_segmentations_val.json"):
        (root / name).unlink()
    with pytest.raises(DataFormatError, match=r"positives for CheXlocalize task\(s\)") as info:
        read(root)
    message = str(info.value)
    assert "{'Cardiomegaly': 2}" in message and "gt_annotations_test.json" in message
    for folder in (root, root / "CheXlocalize", tmp_path / "CheXlocalize"):
        assert str(folder) in message
    # without a positive label there is nothing to locate: no error
    _edit_valid_csv(root, 0, Cardiomegaly="0.0")
    _edit_valid_csv(root, 2, Cardiomegaly="0.0")
    assert read(root).annotations == {}


def test_a_folder_with_its_own_ground_truth_ignores_the_chexlocalize_folder_beside_it(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path / "phantom")
    (tmp_path / "CheXlocalize").mkdir()
    (tmp_path / "CheXlocalize" / "gt_annotations_test.json").write_text("{not json")
    (tmp_path / "CheXlocalize" / "hb_annotations_test.json").write_text("{not json")
    assert len(read(root).annotations) == 3


@pytest.mark.parametrize(("value", "shown"), [("yes", "'yes'"), ("2.0", "'2.0'"), ("N/A", "'N/A'")])
def test_a_bad_label_names_the_file_row_and_column(tmp_path: Path, value: str, shown: str) -> None:
    """'yes' gave a bare pandas ValueError; '2.0' passed and failed later without file or row."""
    root = make_tree(tmp_path)
    _edit_valid_csv(root, 1, Cardiomegaly=value)
    with pytest.raises(
        DataFormatError,
        match=rf"valid\.csv \(row 3\): label column 'Cardiomegaly' has value {shown}",
    ):
        read(root)


@pytest.mark.parametrize(("policy", "expected"), [(None, None), ("zeros", 0.0), ("ones", 1.0)])
def test_uncertain_labels_follow_the_uncertainty_policy(
    tmp_path: Path, policy: str | None, expected: float | None
) -> None:
    root = make_tree(tmp_path)
    _edit_valid_csv(root, 1, Cardiomegaly="-1.0", Edema="")
    params = {"uncertainty_policy": policy} if policy else {}
    m = validate_manifest(read(root, **params).manifest).set_index("image_id")
    value = m.at["patient64542_study1_view1_frontal", "Cardiomegaly"]
    assert np.isnan(value) if expected is None else value == expected
    assert np.isnan(m.at["patient64542_study1_view1_frontal", "Edema"])  # blank: unmentioned


def test_unparseable_or_impossible_ages_are_missing(tmp_path: Path) -> None:
    """'abc' gave a bare ValueError; -1 and 0 (CheXpert's missing age) are NaN like 300."""
    root = make_tree(tmp_path, n_patients=5)
    for row, age in enumerate(("abc", "-1", "0", "300", "058Y")):
        _edit_valid_csv(root, row, Age=age)
    ages = read(root).manifest["age_years"].tolist()
    assert np.isnan(ages[:4]).all() and ages[4] == 58.0
