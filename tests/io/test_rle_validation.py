"""``validate_rle``: malformed CheXlocalize / COCO RLEs are refused before pycocotools sees them."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.masks import MAX_MASK_SIDE, decode_rle, encode_rle, validate_rle


def _runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths (pycocotools' convention: the first run is of zeros)."""
    flat = mask.reshape(-1, order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


def test_every_pycocotools_encoding_is_accepted_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if trial % 5 == 0:
            mask[:] = trial % 2  # empty and full masks
        rle = encode_rle(mask)
        assert validate_rle(rle, source="f.json", key="c/t", size=(h, w)) == (h, w)
        np.testing.assert_array_equal(decode_rle(rle), mask)
        # The uncompressed form of the same mask is accepted too.
        assert validate_rle({"size": [h, w], "counts": _runs(mask)}) == (h, w)


def test_large_runs_need_several_characters() -> None:
    mask = np.zeros((3000, 2900), np.uint8)
    mask[1000:2000, 5:2800] = 1
    rle = encode_rle(mask)
    assert validate_rle(rle) == (3000, 2900)
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == int(
        mask.sum()
    )


VALID = encode_rle(np.pad(np.ones((3, 3), np.uint8), 2))  # 7x7, counts "=3...": a normal string


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [2320, 2828], "counts": "%%%not-rle%%%"}, "not a pycocotools RLE string"),
        ({"size": [7, 7], "counts": VALID["counts"][:-1]}, "sum to"),  # truncated
        (
            {"size": [7, 7], "counts": VALID["counts"] + "P"},
            "middle of a count",
        ),  # dangling continuation
        ({"size": [7, 7], "counts": "é"}, "ASCII"),
        ({"size": [7, 7], "counts": ""}, "empty"),
        ({"size": [7, 7], "counts": "ooooooooo1"}, "characters"),  # a 10-character count
        ({"size": [8, 8], "counts": VALID["counts"]}, "sum to"),  # size and counts disagree
        ({"size": [7, 7], "counts": [10, -1, 40]}, "negative"),
        ({"size": [7, 7], "counts": [10, 2, 3]}, "sum to"),
        ({"size": [7, 7], "counts": [1.5, 47.5]}, "list of integers"),
        ({"size": [7, 7], "counts": 49}, "string or a list"),
        ({"size": [7], "counts": "0"}, "two integers"),
        ({"size": ["7", "7"], "counts": "0"}, "two integers"),
        ({"size": [0, 7], "counts": "0"}, "must lie in"),
        ({"size": [MAX_MASK_SIDE + 1, 7], "counts": "0"}, "must lie in"),
        ({"counts": "0"}, "expected an RLE dict"),
        ("not a dict", "expected an RLE dict"),
    ],
)
def test_malformed_rle_names_file_and_key(rle: object, message: str) -> None:
    with pytest.raises(DataFormatError, match=message) as exc:
        validate_rle(
            rle, source="gt_segmentations_val.json", key="patient1_study1_view1_frontal/Edema"
        )
    assert "gt_segmentations_val.json" in str(exc.value)
    assert "patient1_study1_view1_frontal/Edema" in str(exc.value)


def _encode_counts(counts: list[int]) -> str:
    """pycocotools' counts string for any run list (negative runs included): deltas after the
    third count, 5-bit groups with a continuation bit, sign-extended, offset by 48."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | 0x20 if more else c)))
    return "".join(out)


def test_counts_encoder_of_this_test_matches_pycocotools() -> None:
    mask = np.zeros((7, 7), np.uint8)
    mask[1:5, 2:6] = 1
    assert _encode_counts(_runs(mask)) == encode_rle(mask)["counts"]


def test_negative_run_in_compressed_counts() -> None:
    text = _encode_counts([5, 3, 41, -2, 2])  # sums to 49 = 7 x 7, but one run is negative
    with pytest.raises(DataFormatError, match="run 3 has negative length -2"):
        validate_rle({"size": [7, 7], "counts": text}, source="f.json", key="c/t")


def test_size_must_match_the_image() -> None:
    with pytest.raises(DataFormatError, match=r"disagrees with the image's \[7, 8\]"):
        validate_rle(VALID, source="f.json", key="c/t", size=(7, 8))


def test_decode_rle_validates_before_pycocotools() -> None:
    # pycocotools alone decodes this garbage to some mask; decode_rle must refuse it.
    with pytest.raises(DataFormatError, match="not a pycocotools RLE string"):
        decode_rle({"size": [4, 4], "counts": "%%%not-rle%%%"}, source="f.json", key="c/t")


def test_compiled_counts_decoder_gives_the_run_lengths_of_every_mask() -> None:
    """``_compressed_counts`` (compiled) against the masks' own run lengths, large runs and
    negative deltas included; errors keep their order: bytes, then the end, then lengths."""
    from cxr_spurious.io.masks import _compressed_counts

    rng = np.random.default_rng(7)
    for trial in range(300):
        h, w = (int(v) for v in rng.integers(1, 400 if trial % 10 == 0 else 40, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = encode_rle(mask)["counts"]
        assert _compressed_counts(counts, "f", "k").tolist() == _runs(mask)
    with pytest.raises(DataFormatError, match="outside '0'..'o'"):
        _compressed_counts("ooooooooo1%", "f", "k")  # a long count, then a bad byte
    with pytest.raises(DataFormatError, match="middle of a count"):
        _compressed_counts("ooooooooo", "f", "k")  # a long count that never ends
    with pytest.raises(DataFormatError, match="count of 10 characters"):
        _compressed_counts("ooooooooo1", "f", "k")
