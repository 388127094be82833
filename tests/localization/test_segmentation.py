import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.chexlocalize import (
    load_json,
    rasterize_annotations,
    read_heatmap_folder,
    read_heatmap_pickle,
)
from cxr_spurious.localization.evaluate import evaluate_heatmap_set
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
