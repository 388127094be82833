import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.heatmaps import HeatmapSet, sample_positives_first
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization.figures import overlay_panel, plot_overlays, sample_overlay_rows


def _set():
    rng = np.random.default_rng(0)
    rows, maps, gt = [], [], {}
    for i in range(6):
        cxr = f"p{i}_study1_view1_frontal"
        mask = np.zeros((60, 50), np.uint8)
        if i % 2 == 0:
            mask[10:40, 5:30] = 1
        gt[cxr] = {"Edema": encode_rle(mask)}
        rows.append({"image_id": cxr, "task": "Edema", "prob": 0.5, "gt": float(mask.any()), "cxr_w": 50, "cxr_h": 60, "model": "m", "method": "g"})
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
    assert [sample_overlay_rows(hs, gt, n, seed=s).tolist() for n, s in cases] == [[0, 2], [0, 1, 2, 4], [0, 2, 3, 4], [0, 1, 2, 4, 5]]
    # Here a map's label is positive exactly when its mask is non-empty, so the saliency
    # figure's default (labels first) picks the same rows as this one (masks first).
    for n, s in cases:
        np.testing.assert_array_equal(sample_overlay_rows(hs, gt, n, seed=s), sample_positives_first(hs, n, s, parameter="p"))


def test_overlay_panel_iou_matches_numpy():
    hs, gt = _set()
    panel = overlay_panel(hs.maps[0], 60, 50, 0.5, gt["p0_study1_view1_frontal"]["Edema"])
    from cxr_spurious.localization.segmentation import heatmap_to_segmentation

    pred = heatmap_to_segmentation(hs.maps[0], 60, 50).astype(bool)
    g = np.zeros((60, 50), bool)
    g[10:40, 5:30] = True
    assert np.isclose(panel["iou"], (pred & g).sum() / (pred | g).sum())
    assert panel["heat"].shape == panel["gt"].shape == (256, 213) and panel["heat"].min() >= 0 and panel["heat"].max() <= 1


def test_plot_overlays_draws_one_titled_panel_per_map():
    hs, gt = _set()
    fig = plot_overlays(hs, gt, n=5, seed=0)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 5 and all("Edema" in ax.get_title() for ax in titled)
    plt.close(fig)


def test_overlays_outline_the_spurious_object_and_say_so():
    hs, gt = _set()
    tube = np.zeros((60, 50), np.uint8)
    tube[5:55, 40:42] = 1
    spurious = {cxr: {"Chest Tube": encode_rle(tube), "Support Device": encode_rle(tube)} for cxr in gt}
    spurious["p0_study1_view1_frontal"]["Chest Tube"] = encode_rle(np.zeros((60, 50), np.uint8))  # empty: not drawn
    panel = overlay_panel(hs.maps[2], 60, 50, 0.5, gt["p2_study1_view1_frontal"]["Edema"], spurious["p2_study1_view1_frontal"])
    assert set(panel["objects"]) == {"Chest Tube", "Support Device"} and panel["objects"]["Chest Tube"].shape == (256, 213)
    assert panel["objects"]["Chest Tube"].sum() > 0
    fig = plot_overlays(hs, gt, n=6, seed=0, spurious_segmentations=spurious)
    assert "chest tube (magenta, dashed)" in fig._suptitle.get_text()
    dashed = [ax for ax in fig.axes if any(c.get_edgecolor().size and np.allclose(c.get_edgecolor()[0][:3], (1, 0, 1)) for c in ax.collections)]
    assert len(dashed) == 5  # every panel but p0's, whose tube mask is empty; Support Device is not asked for
    plt.close(fig)
    plain = plot_overlays(hs, gt, n=6, seed=0)
    assert "magenta" not in plain._suptitle.get_text()
    plt.close(plain)
