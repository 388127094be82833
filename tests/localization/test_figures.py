import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.heatmaps import HeatmapSet, sample_positives_first
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization.figures import overlay_panel, plot_overlays, sample_overlay_rows
from cxr_spurious.overlays import HEATMAP_CMAP, OUTLINES


def _images(n: int = 6) -> dict[str, np.ndarray]:
    """Square 'cache' radiographs (32 x 32), each with its own pixel values."""
    rng = np.random.default_rng(3)
    return {
        f"p{i}_study1_view1_frontal": rng.integers(0, 256, (32, 32), dtype=np.uint8)
        for i in range(n)
    }


def _contours_of(ax, kind: str) -> list:
    """Contour sets on ``ax`` drawn in the style of outline ``kind``."""
    colour = to_rgb(OUTLINES[kind]["colors"])
    return [
        c
        for c in ax.collections
        if c.get_edgecolor().size and np.allclose(c.get_edgecolor()[0][:3], colour)
    ]


def _set():
    rng = np.random.default_rng(0)
    rows, maps, gt = [], [], {}
    for i in range(6):
        cxr = f"p{i}_study1_view1_frontal"
        mask = np.zeros((60, 50), np.uint8)
        if i % 2 == 0:
            mask[10:40, 5:30] = 1
        gt[cxr] = {"Edema": encode_rle(mask)}
        rows.append(
            {
                "image_id": cxr,
                "task": "Edema",
                "prob": 0.5,
                "gt": float(mask.any()),
                "cxr_w": 50,
                "cxr_h": 60,
                "model": "m",
                "method": "g",
            }
        )
        maps.append(rng.random((6, 5)).astype(np.float32))
    return HeatmapSet(pd.DataFrame(rows), np.stack(maps)), gt


def test_sample_is_seeded_and_prefers_positive_maps():
    hs, gt = _set()
    a, b = sample_overlay_rows(hs, gt, 3, seed=1), sample_overlay_rows(hs, gt, 3, seed=1)
    np.testing.assert_array_equal(a, b)
    assert set(a) == {0, 2, 4}  # the three maps with a non-empty ground truth
    assert len(sample_overlay_rows(hs, gt, 10, seed=1)) == 6
    with pytest.raises(ParameterError, match=r"localization\.overlays\.n_images"):
        sample_overlay_rows(hs, gt, 0, seed=1)


def test_sample_keeps_its_draws_through_the_shared_sampler():
    hs, gt = _set()
    # Rows drawn before the sampler moved to heatmaps.sample_positives_first: same seed, same maps.
    cases = [(2, 1), (4, 1), (4, 5), (5, 2)]
    assert [sample_overlay_rows(hs, gt, n, seed=s).tolist() for n, s in cases] == [
        [0, 2],
        [0, 1, 2, 4],
        [0, 2, 3, 4],
        [0, 1, 2, 4, 5],
    ]
    # Here a map's label is positive exactly when its mask is non-empty, so the saliency
    # figure's default (labels first) picks the same rows as this one (masks first).
    for n, s in cases:
        np.testing.assert_array_equal(
            sample_overlay_rows(hs, gt, n, seed=s), sample_positives_first(hs, n, s, parameter="p")
        )


def test_overlay_panel_iou_matches_numpy():
    hs, gt = _set()
    panel = overlay_panel(hs.maps[0], 60, 50, 0.5, gt["p0_study1_view1_frontal"]["Edema"])
    from cxr_spurious.localization.segmentation import heatmap_to_segmentation

    pred = heatmap_to_segmentation(hs.maps[0], 60, 50).astype(bool)
    g = np.zeros((60, 50), bool)
    g[10:40, 5:30] = True
    assert np.isclose(panel["iou"], (pred & g).sum() / (pred | g).sum())
    assert (
        panel["heat"].shape == panel["gt"].shape == (256, 213)
        and panel["heat"].min() >= 0
        and panel["heat"].max() <= 1
    )


def test_plot_overlays_draws_one_titled_panel_per_map():
    hs, gt = _set()
    fig = plot_overlays(hs, gt, _images(), n=5, seed=0, title="m.g")
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 5 and all("Edema" in ax.get_title() for ax in titled)
    assert fig.get_suptitle().startswith("m.g: heatmap over the radiograph")


def test_overlay_panels_blend_the_heatmap_over_the_radiograph():
    hs, gt = _set()
    images = _images()
    fig = plot_overlays(hs, gt, images, n=6, seed=0)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 6
    for ax in panels:
        cxr = ax.get_title().split("\n")[0]
        grey, heat = ax.images  # bottom to top
        assert grey.get_cmap().name == "gray" and grey.get_alpha() is None
        # the radiograph's own pixel values (the 32 x 32 cache image brought to the panel size)
        shown = np.asarray(grey.get_array())
        assert shown.shape == (256, 213) and shown.dtype == np.uint8
        assert abs(float(shown.mean()) - float(images[cxr].mean())) < 3
        assert heat.get_cmap().name == HEATMAP_CMAP and 0 < heat.get_alpha() < 1
        assert heat.get_array().shape == shown.shape
        assert heat.get_array().min() >= 0 and heat.get_array().max() <= 1
        empty = encode_rle(np.zeros((60, 50), np.uint8))["counts"]
        has_gt = gt[cxr]["Edema"]["counts"] != empty
        assert len(_contours_of(ax, "ground truth")) == int(has_gt)
        assert len(_contours_of(ax, "segmentation (Otsu)")) == 1  # random maps segment to something
        assert _contours_of(ax, "chest tube") == []  # no spurious_segmentations given
    # one colour bar for the heatmap, one legend naming the outlines drawn
    assert panels[0].images[1].colorbar is not None
    assert len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "ground truth",
        "segmentation (Otsu)",
    ]


def test_a_map_without_its_image_is_drawn_on_a_black_field_and_says_so():
    hs, gt = _set()
    images = _images()
    del images["p2_study1_view1_frontal"]
    fig = plot_overlays(hs, gt, images, n=6, seed=0)
    panels = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_title()}
    blank = panels["p2_study1_view1_frontal  (no image)"]
    assert not np.asarray(blank.images[0].get_array()).any()
    assert sum("(no image)" in title for title in panels) == 1
    images["p0_study1_view1_frontal"] = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ContractError, match="image of 'p0_study1_view1_frontal' must be 2-D"):
        plot_overlays(hs, gt, images, n=6, seed=0)


def test_overlays_outline_the_spurious_object_and_say_so():
    hs, gt = _set()
    tube = np.zeros((60, 50), np.uint8)
    tube[5:55, 40:42] = 1
    spurious = {
        cxr: {"Chest Tube": encode_rle(tube), "Support Device": encode_rle(tube)} for cxr in gt
    }
    spurious["p0_study1_view1_frontal"]["Chest Tube"] = encode_rle(
        np.zeros((60, 50), np.uint8)
    )  # empty: not drawn
    panel = overlay_panel(
        hs.maps[2],
        60,
        50,
        0.5,
        gt["p2_study1_view1_frontal"]["Edema"],
        spurious["p2_study1_view1_frontal"],
    )
    assert set(panel["objects"]) == {"Chest Tube", "Support Device"} and panel["objects"][
        "Chest Tube"
    ].shape == (256, 213)
    assert panel["objects"]["Chest Tube"].sum() > 0
    fig = plot_overlays(hs, gt, _images(), n=6, seed=0, spurious_segmentations=spurious)
    assert "chest tube" in [t.get_text() for t in fig.legends[0].get_texts()]
    dashed = [ax for ax in fig.axes if _contours_of(ax, "chest tube")]
    tubes = [c for ax in dashed for c in _contours_of(ax, "chest tube")]
    assert all(c.get_linestyle()[0][1] is not None for c in tubes)  # dashed
    # every panel but p0's, whose tube mask is empty; Support Device is not asked for
    assert len(dashed) == 5
    plain = plot_overlays(hs, gt, _images(), n=6, seed=0)
    assert "chest tube" not in [t.get_text() for t in plain.legends[0].get_texts()]


def _small_lesion_at_the_maximum(height: int = 1000, width: int = 1000):
    """One peaked map on a ``height`` x ``width`` CXR whose gt is a 3 x 3 block around the
    map's full-size maximum: a hit for the evaluation, a lesion that the 256-px display
    mask loses (nearest-neighbour shrinking by ~4 keeps at most one of its rows/columns)."""
    from cxr_spurious.localization.kernels import segment_map_cpu
    from cxr_spurious.localization.segmentation import SegmentationConfig

    m = np.zeros((10, 10), np.float32)
    m[5, 5] = 1.0
    r, c = segment_map_cpu(m, height, width, 1.0, SegmentationConfig()).argmax
    gt = np.zeros((height, width), np.uint8)
    gt[r - 1 : r + 2, c - 1 : c + 2] = 1
    return m, encode_rle(gt), (r, c)


def test_overlay_hit_is_decided_at_full_resolution_like_the_evaluation():
    from cxr_spurious.localization.metrics import rle_pixel

    m, rle, (r, c) = _small_lesion_at_the_maximum()
    assert rle_pixel(rle, r, c) == 1  # the evaluation's hit
    panel = overlay_panel(m, 1000, 1000, 1.0, rle)
    assert panel["hit"] == 1.0
    # the display mask alone would call it a miss (the old marker): it is only for drawing
    g = panel["gt"]
    rr, cc = (min(int(v), s - 1) for v, s in zip(panel["argmax"], g.shape))
    assert not g[rr, cc]
    # no gt, or an empty one: no pointing game (NaN), as the evaluation
    assert np.isnan(overlay_panel(m, 1000, 1000, 1.0, None)["hit"])
    empty = encode_rle(np.zeros((1000, 1000), np.uint8))
    assert np.isnan(overlay_panel(m, 1000, 1000, 1.0, empty)["hit"])


def test_plot_overlays_fills_the_marker_of_a_full_resolution_hit():
    m, rle, _ = _small_lesion_at_the_maximum()
    cxr = "p0_study1_view1_frontal"
    index = pd.DataFrame(
        [
            {
                "image_id": cxr,
                "task": "Edema",
                "prob": 1.0,
                "gt": 1.0,
                "cxr_w": 1000,
                "cxr_h": 1000,
                "model": "m",
                "method": "g",
            }
        ]
    )
    fig = plot_overlays(HeatmapSet(index, m[None]), {cxr: {"Edema": rle}}, {}, n=1, seed=0)
    (ax,) = [a for a in fig.axes if a.get_title()]
    (marker,) = [line for line in ax.lines if line.get_marker() == "o"]
    assert marker.get_markerfacecolor() != "none"  # filled: a hit
