import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.chexlocalize import (
    load_json,
    rasterize_annotations,
    read_heatmap_folder,
    read_heatmap_pickle,
)
from cxr_spurious.io.masks import decode_rle
from cxr_spurious.localization.evaluate import evaluate_heatmap_set
from cxr_spurious.localization.kernels import segment_map_cpu, segment_map_torch
from cxr_spurious.localization.segmentation import (
    SegmentationConfig,
    fill_outer_contours,
    heatmap_to_segmentation,
)
from cxr_spurious.tasks import CHEXLOCALIZE_TASKS


def _pixel_diffs(seg, ref):
    return sum(
        int((mask_utils.decode(seg[c][t]) != mask_utils.decode(ref[c][t])).sum())
        for c in seg
        for t in seg[c]
    )


def test_otsu_matches_reference_json_trimmed(sample_dir):
    hs = read_heatmap_folder(sample_dir / "gradcam_maps_val")
    _, seg = evaluate_heatmap_set(hs, {}, progress=False)
    ref = load_json(sample_dir / "gradcam_segmentations_val_sample.json")
    assert _pixel_diffs(seg, {c: {t: ref[c][t] for t in seg[c]} for c in seg}) == 0


def test_otsu_differs_from_reference_json_by_one_pixel_on_the_rounding_case(sample_dir):
    # Of the full sample's 20 maps only patient64541 Pneumothorax differs from the reference
    # JSON (measured: 1 pixel, the other 19 maps identical); that map is kept in the repo. The
    # pixel's value sits on the Otsu threshold within float rounding: the JSON was written by
    # the reference with its own torch build, whose bilinear kernel rounds differently from
    # the torch arithmetic replicated here.
    hs = read_heatmap_folder(sample_dir / "gradcam_maps_val_rounding")
    _, seg = evaluate_heatmap_set(hs, {}, progress=False)
    ref = load_json(sample_dir / "gradcam_segmentations_val_sample.json")
    assert {c: sorted(t) for c, t in seg.items()} == {
        "patient64541_study1_view1_frontal": ["Pneumothorax"]
    }
    assert _pixel_diffs(seg, {c: {t: ref[c][t] for t in seg[c]} for c in seg}) == 1


def test_annotations_rasterise_to_gt_json(sample_dir):
    ann = rasterize_annotations(
        load_json(sample_dir / "gt_annotations_val.json"), list(CHEXLOCALIZE_TASKS)
    )
    gt = load_json(sample_dir / "gt_segmentations_val.json")
    assert ann.keys() == gt.keys()
    assert _pixel_diffs(ann, gt) == 0


def test_constant_map_gives_empty_mask_without_nan():
    for cfg in (SegmentationConfig(), SegmentationConfig(threshold=0.3)):
        mask = heatmap_to_segmentation(np.full((4, 4), 2.5, np.float32), 9, 7, cfg)
        assert mask.shape == (9, 7) and mask.sum() == 0


def test_fixed_threshold_matches_naive_reference():
    rng = np.random.default_rng(0)
    m = rng.random((6, 5)).astype(np.float32)
    up = F.interpolate(
        torch.from_numpy(m)[None, None], size=(23, 17), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    norm = (up - up.min()) / (up - up.min()).max()
    expected = (norm > 0.4).astype(np.uint8)
    got = heatmap_to_segmentation(m, 23, 17, SegmentationConfig(threshold=0.4))
    np.testing.assert_array_equal(got, expected)


def test_probability_cutoff_empties_mask():
    m = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert (
        heatmap_to_segmentation(m, 8, 8, SegmentationConfig(prob_cutoff=0.5), prob=0.4).sum() == 0
    )
    assert heatmap_to_segmentation(m, 8, 8, SegmentationConfig(prob_cutoff=0.5), prob=0.6).sum() > 0


def test_fill_outer_contours_fills_holes():
    ring = np.zeros((9, 9), np.uint8)
    ring[2:7, 2:7] = 1
    ring[4, 4] = 0
    filled = fill_outer_contours(ring)
    assert filled[4, 4] == 1 and filled.sum() == 25
    solid = np.zeros((5, 5), np.uint8)
    solid[1:3, 1:4] = 1
    np.testing.assert_array_equal(fill_outer_contours(solid), solid)


def test_nan_map_is_rejected(tmp_path):
    import pickle

    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    m = torch.ones(1, 1, 4, 4)
    m[0, 0, 1, 1] = float("nan")
    pickle.dump(
        {"map": m, "prob": 0.5, "task": "Edema", "gt": 0, "cxr_dims": (8, 8)},
        path.open("wb"),
        protocol=3,
    )
    with pytest.raises(DataFormatError, match="NaN"):
        read_heatmap_pickle(path)
    # Indexing reads headers only; the values are checked when the map is evaluated.
    heatmaps = read_heatmap_folder(tmp_path, workers=1)
    assert heatmaps.maps.shape == (1, 4, 4)
    with pytest.raises(DataFormatError, match=r"p1_study1_view1_frontal_Edema_map\.pkl.*NaN"):
        evaluate_heatmap_set(heatmaps, {}, workers=1, progress=False, prefer_gpu=False)


def _reference_contours(binary: np.ndarray) -> np.ndarray:
    """The drawing rule of the reference's ``cam_to_segmentation``, written here for the
    test: each ``RETR_TREE`` contour with more than one point becomes a filled PIL polygon
    with its outline."""
    cnts = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    out = Image.new("1", (binary.shape[1], binary.shape[0]))
    for cnt in cnts:
        if len(cnt) > 1:
            ImageDraw.Draw(out).polygon(
                [(int(p[0][0]), int(p[0][1])) for p in cnt], outline=1, fill=1
            )
    return np.array(out, dtype=np.uint8)


@pytest.mark.parametrize("hole", [False, True])
def test_isolated_otsu_pixel_is_dropped_like_the_reference(hole):
    """A one-pixel Otsu component has a single-point contour, which the reference does not
    draw: the exact kernel, the OpenCV path and the torch path all drop it (with and
    without a hole in the rest of the mask)."""
    m = np.zeros((20, 20), np.float32)
    m[2:8, 2:8] = 1.0
    if hole:
        m[4, 4] = 0.0
    m[15, 15] = 1.0  # isolated: none of its 8 neighbours is set
    m[15, 2] = m[16, 3] = 1.0  # two diagonal pixels: one 8-connected component, kept
    binary = (m > 0).astype(np.uint8)  # Otsu of a two-level map
    expected = _reference_contours(binary)
    assert expected[15, 15] == 0 and expected[15, 2] == expected[16, 3] == 1
    cfg = SegmentationConfig()
    np.testing.assert_array_equal(heatmap_to_segmentation(m, 20, 20, cfg), expected)
    np.testing.assert_array_equal(decode_rle(segment_map_cpu(m, 20, 20, 1.0, cfg).rle), expected)
    torch_path = segment_map_torch(m, 20, 20, 1.0, cfg, torch.device("cpu"))
    np.testing.assert_array_equal(decode_rle(torch_path.rle), expected)
    raw = SegmentationConfig(fill_contours=False)  # no contour drawing: the raw Otsu mask
    np.testing.assert_array_equal(heatmap_to_segmentation(m, 20, 20, raw), binary)


def test_contour_drawing_matches_the_reference_on_random_masks():
    """``fill_outer_contours`` (one-pixel components dropped, outer contours filled) against
    the reference's drawing of every contour, on masks with specks, holes and edges."""
    rng = np.random.default_rng(11)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(3, 30, 2))
        binary = (rng.random((h, w)) < rng.uniform(0.05, 0.7)).astype(np.uint8)
        np.testing.assert_array_equal(fill_outer_contours(binary), _reference_contours(binary))
