"""RLE codecs and polygon rasterisation, against pycocotools and the real CheXlocalize sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from tests.conftest import SAMPLE_IN_REPO

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.masks import (
    decode_rle,
    decode_siim_rle,
    encode_rle,
    encode_siim_rle,
    rasterize_polygons,
)


def test_encode_decode_round_trip_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((37, 53)) > 0.7).astype(np.uint8)
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str)
    assert rle["size"] == [37, 53]
    np.testing.assert_array_equal(decode_rle(rle), mask)
    reference = mask_utils.encode(np.asfortranarray(mask))
    assert rle["counts"].encode() == reference["counts"]


def test_decode_rle_rejects_garbage_with_location() -> None:
    with pytest.raises(DataFormatError, match=r"seg\.json \(cxr1/Edema\).*size"):
        decode_rle({"counts": "abc"}, source="seg.json", key="cxr1/Edema")
    good = encode_rle(np.ones((10, 10), dtype=np.uint8))
    with pytest.raises(DataFormatError, match="cxr1/Edema"):
        decode_rle(
            {"size": [10, 10], "counts": good["counts"][:-1] + "~~~"},
            source="seg.json",
            key="cxr1/Edema",
        )


def test_rasterize_fills_and_includes_outline() -> None:
    mask = rasterize_polygons([[[1, 1], [5, 1], [5, 4], [1, 4]]], height=8, width=8)
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[1:5, 1:6] = 1  # rows 1..4, cols 1..5: outline included
    np.testing.assert_array_equal(mask, expected)


def test_rasterised_annotations_equal_reference_segmentations_on_real_sample() -> None:
    """The CheXlocalize sample.

    Polygons -> masks equal gt_segmentations_val.json pixel for pixel.
    """
    annotations = json.loads((SAMPLE_IN_REPO / "gt_annotations_val.json").read_text())
    segmentations = json.loads((SAMPLE_IN_REPO / "gt_segmentations_val.json").read_text())
    compared = 0
    for cxr_id, entry in annotations.items():
        h, w = entry["img_size"]
        for task, rle in segmentations[cxr_id].items():
            ours = rasterize_polygons(entry.get(task, []), h, w)
            reference = decode_rle(rle)
            assert ours.shape == reference.shape == (h, w)
            assert int((ours != reference).sum()) == 0, f"{cxr_id}/{task}"
            compared += 1
    assert compared == 20  # 2 CXRs x 10 tasks
    assert any(
        decode_rle(r).any() for r in segmentations["patient64541_study1_view1_frontal"].values()
    )


def test_siim_rle_documented_example() -> None:
    # DATASET_FORMATS.md: "5 2 3 1" on a 4x4 grid sets k=5,6,10 -> (r1,c1),(r2,c1),(r2,c2).
    mask = decode_siim_rle("5 2 3 1", 4, 4)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1, 1] = expected[2, 1] = expected[2, 2] = 1
    np.testing.assert_array_equal(mask, expected)
    assert encode_siim_rle(mask) == "5 2 3 1"


@pytest.mark.parametrize("text", ["-1", " -1", ""])
def test_siim_rle_empty(text: str) -> None:
    assert decode_siim_rle(text, 8, 8).sum() == 0
    assert encode_siim_rle(np.zeros((8, 8), dtype=np.uint8)) == "-1"


def test_siim_rle_round_trip_random() -> None:
    rng = np.random.default_rng(3)
    mask = (rng.random((64, 64)) > 0.8).astype(np.uint8)
    np.testing.assert_array_equal(decode_siim_rle(encode_siim_rle(mask), 64, 64), mask)


def test_siim_rle_overflow_and_odd_tokens_raise() -> None:
    with pytest.raises(DataFormatError, match="beyond a 4x4 image"):
        decode_siim_rle("10 10", 4, 4, source="train-rle.csv", where="row 3")
    with pytest.raises(DataFormatError, match="pairs"):
        decode_siim_rle("1 2 3", 4, 4)
    with pytest.raises(DataFormatError, match="non-integer"):
        decode_siim_rle("1 x", 4, 4)


def test_project_errors_survive_pickling() -> None:
    import pickle

    from cxr_spurious.errors import ParameterError

    err = pickle.loads(pickle.dumps(DataFormatError("a.json", "bad RLE", where="cxr1/Edema")))
    assert str(err) == "a.json (cxr1/Edema): bad RLE" and err.where == "cxr1/Edema"
    perr = pickle.loads(pickle.dumps(ParameterError("training.lr", "must be > 0")))
    assert str(perr) == "parameter 'training.lr': must be > 0" and perr.key == "training.lr"
