"""The shared overlay drawing (``cxr_spurious.overlays``)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from cxr_spurious.errors import ContractError
from cxr_spurious.overlays import GROUND_TRUTH, draw_overlay, finish_overlay_figure, resize_to


def test_draw_overlay_layers_and_refusals():
    ax = Figure().subplots()
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 1
    layers = draw_overlay(ax, image, np.ones((2, 2)), {GROUND_TRUTH: mask, "chest tube": None})
    assert layers.outlines == [GROUND_TRUTH] and len(ax.collections) == 1
    grey, heat = ax.images
    assert grey.get_clim() == (0, 255) and heat.get_clim() == (0, 1)
    assert heat is layers.heat and heat.get_array().shape == (8, 8)
    with pytest.raises(ContractError, match=r"alpha must be in \(0, 1\)"):
        draw_overlay(ax, image, np.ones((2, 2)), alpha=1.0)
    with pytest.raises(ContractError, match="unknown outline kind 'lesion'"):
        draw_overlay(ax, image, np.ones((2, 2)), {"lesion": mask})
    with pytest.raises(ContractError, match=r"2-D grey image, got shape \(8, 8, 3\)"):
        draw_overlay(ax, np.zeros((8, 8, 3)), None)


def test_finish_without_a_heatmap_adds_nothing():
    fig = Figure()
    ax = fig.subplots()
    layers = draw_overlay(ax, np.zeros((4, 4), np.float32), None, {GROUND_TRUTH: np.ones((4, 4))})
    finish_overlay_figure(fig, [ax], [layers])
    assert layers.heat is None and fig.legends == [] and len(fig.axes) == 1


def test_resize_to_keeps_masks_binary():
    m = resize_to(np.eye(3, dtype=bool), (7, 7), nearest=True)
    assert m.shape == (7, 7) and set(np.unique(m)) == {0, 1}
