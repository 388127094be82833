"""Overlay figures and their seeded sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cxr_spurious.errors import ParameterError
from cxr_spurious.heatmaps import HeatmapSet, sample_positives_first
from cxr_spurious.saliency.overlays import overlay_figure, sample_rows


def _set(n: int = 8) -> HeatmapSet:
    index = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "task": "Pneumothorax", "prob": 0.5,
                          "gt": [1.0, 0.0] * (n // 2), "cxr_w": 10, "cxr_h": 10, "model": "erm", "method": "gradcam"})
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
    assert [sample_rows(hset, n, seed=s).tolist() for n, s in cases] == [[2, 4, 6], [0, 1, 2, 4, 6], [0, 2, 4, 6, 7], [0, 6]]
    for n, s in cases:
        np.testing.assert_array_equal(sample_rows(hset, n, seed=s), sample_positives_first(hset, n, s, parameter="p"))
    with pytest.raises(ParameterError, match=r"saliency\.overlays\.n_images"):
        sample_rows(hset, 0, seed=0)


def test_overlay_figure_draws_image_heatmap_and_outline(tmp_path):
    hset = _set()
    images = {f"i{k}": np.full((16, 16), 100, np.uint8) for k in range(8)}
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 4:10] = 1
    fig = overlay_figure(hset, np.array([0, 1]), images, {("i0", "Pneumothorax"): mask}, title="erm.gradcam")
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert len(fig.axes[1].images) == 2  # image + heatmap
    assert len(fig.axes[0].collections) >= 1 and len(fig.axes[2].collections) == 0  # outline only where known
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
