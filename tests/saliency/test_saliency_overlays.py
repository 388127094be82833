"""Overlay figures and their seeded sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from cxr_spurious.errors import ParameterError
from cxr_spurious.heatmaps import HeatmapSet, sample_positives_first
from cxr_spurious.overlays import HEATMAP_CMAP, OUTLINES
from cxr_spurious.saliency.overlays import overlay_figure, sample_rows


def _contours_of(ax, kind: str) -> list:
    """Contour sets on ``ax`` drawn in the style of outline ``kind``."""
    colour = to_rgb(OUTLINES[kind]["colors"])
    return [
        c
        for c in ax.collections
        if c.get_edgecolor().size and np.allclose(c.get_edgecolor()[0][:3], colour)
    ]


def _set(n: int = 8) -> HeatmapSet:
    index = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "task": "Pneumothorax",
            "prob": 0.5,
            "gt": [1.0, 0.0] * (n // 2),
            "cxr_w": 10,
            "cxr_h": 10,
            "model": "erm",
            "method": "gradcam",
        }
    )
    return HeatmapSet(index, np.random.default_rng(0).random((n, 4, 4)).astype(np.float16))


def test_sample_rows_positives_first_and_seeded():
    hset = _set()
    rows = sample_rows(hset, 3, seed=0)
    assert len(rows) == 3 and (hset.index["gt"].to_numpy()[rows] == 1).all()
    np.testing.assert_array_equal(rows, sample_rows(hset, 3, seed=0))
    assert len(sample_rows(hset, 20, seed=0)) == 8


def test_sample_rows_keeps_its_draws_and_names_its_parameter():
    hset = _set()
    # Rows drawn before the sampler moved to heatmaps.sample_positives_first: same seed, same maps.
    cases = [(3, 0), (5, 0), (5, 3), (2, 11)]
    assert [sample_rows(hset, n, seed=s).tolist() for n, s in cases] == [
        [2, 4, 6],
        [0, 1, 2, 4, 6],
        [0, 2, 4, 6, 7],
        [0, 6],
    ]
    for n, s in cases:
        np.testing.assert_array_equal(
            sample_rows(hset, n, seed=s), sample_positives_first(hset, n, s, parameter="p")
        )
    with pytest.raises(ParameterError, match=r"saliency\.overlays\.n_images"):
        sample_rows(hset, 0, seed=0)


def test_overlay_figure_draws_image_heatmap_and_outlines(tmp_path):
    hset = _set()
    rng = np.random.default_rng(1)
    images = {f"i{k}": rng.integers(0, 256, (16, 16), dtype=np.uint8) for k in range(8)}
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 4:10] = 1
    tube = np.zeros((16, 16), np.uint8)
    tube[1:15, 12:14] = 1
    fig = overlay_figure(
        hset,
        np.array([0, 1]),
        images,
        {("i0", "Pneumothorax"): mask},
        {"i1": tube},
        title="erm.gradcam",
    )
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4
    (plain0, over0), (plain1, over1) = panels[:2], panels[2:]
    # left: the radiograph alone, its own pixel values in grey
    assert len(plain0.images) == 1 and plain0.images[0].get_cmap().name == "gray"
    np.testing.assert_array_equal(plain0.images[0].get_array(), images["i0"])
    # right: the radiograph, then the heatmap over it, semi-transparent
    grey, heat = over0.images
    np.testing.assert_array_equal(grey.get_array(), images["i0"])
    assert grey.get_cmap().name == "gray" and grey.get_alpha() is None
    assert heat.get_cmap().name == HEATMAP_CMAP and 0 < heat.get_alpha() < 1
    assert heat.get_array().shape == (16, 16)
    # outlines where present: gt on i0, tube on i1, the map's segmentation on each overlay
    assert len(_contours_of(plain0, "ground truth")) == 1
    assert len(_contours_of(over0, "ground truth")) == 1
    assert _contours_of(plain1, "ground truth") == [] and _contours_of(over0, "chest tube") == []
    assert len(_contours_of(over1, "chest tube")) == 1
    assert len(_contours_of(over0, "segmentation (Otsu)")) == 1
    assert _contours_of(plain0, "segmentation (Otsu)") == []
    assert heat.colorbar is not None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(OUTLINES)
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_overlay_figure_without_outlines_has_no_legend():
    hset = _set()
    images = {f"i{k}": np.full((16, 16), 100, np.uint8) for k in range(8)}
    flat = HeatmapSet(hset.index, np.zeros_like(hset.maps))  # constant maps segment to nothing
    fig = overlay_figure(flat, np.array([0]), images)
    assert fig.legends == [] and fig.axes[1].images[1].colorbar is not None
