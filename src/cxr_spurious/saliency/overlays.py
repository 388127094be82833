"""Overlay figures: the radiograph, and the heatmap over it with its outlines.

Each row is one map: the model-input image alone, then the same image with the min-max
normalised map blended over it (``cxr_spurious.overlays.draw_overlay``) and the outlines of
the ground-truth lesion, the chest tube and the map's Otsu segmentation (the evaluation's
kernel, ``localization.figures.segment_for_display``, at the image's size).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure  # object API: no pyplot state, no GUI backend

from cxr_spurious.heatmaps import HeatmapSet, sample_positives_first
from cxr_spurious.localization.figures import segment_for_display
from cxr_spurious.overlays import (
    CHEST_TUBE,
    DEFAULT_ALPHA,
    GROUND_TRUTH,
    SEGMENTATION,
    OverlayLayers,
    draw_overlay,
    finish_overlay_figure,
)

TUBE_OBJECT = "Chest Tube"  # the spurious object outlined (a name of ``ImageCache.objects``)


def sample_rows(heatmaps: HeatmapSet, n: int, seed: int) -> np.ndarray:
    """Seeded sample of at most ``n`` rows, positive image labels (``gt == 1``) first.

    ``heatmaps.sample_positives_first`` with this figure's parameter named in its error.
    """
    return sample_positives_first(heatmaps, n, seed, parameter="saliency.overlays.n_images")


def overlay_figure(
    heatmaps: HeatmapSet,
    rows: np.ndarray,
    images: Mapping[str, np.ndarray],
    gt_masks: Mapping[tuple[str, str], np.ndarray] | None = None,
    tube_masks: Mapping[str, np.ndarray] | None = None,
    *,
    title: str = "",
    alpha: float = DEFAULT_ALPHA,
) -> Figure:
    """One figure, one row per map: the image, and the heatmap over it with its outlines.

    Args:
        heatmaps: The set.
        rows: Row numbers of ``heatmaps`` to draw.
        images: Model-input image (h, w) per ``image_id``.
        gt_masks: Optional ground-truth mask per ``(image_id, task)`` (any size; resized);
            outlined in lime on both panels.
        tube_masks: Optional chest-tube (spurious object) mask per ``image_id``; outlined
            in magenta, dashed, on both panels.
        title: Figure title.
        alpha: Heatmap opacity, in (0, 1).

    Returns:
        The figure (not shown; the caller saves and closes it), with a legend of the
        outlines drawn and the heatmap's colour bar.
    """
    n = max(1, len(rows))
    fig = Figure(figsize=(5.2, 2.3 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False)
    layers: list[OverlayLayers] = []
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax_row, r in zip(axes, rows):
        rec = heatmaps.index.iloc[int(r)]
        image_id, task = str(rec["image_id"]), str(rec["task"])
        image = np.asarray(images[image_id])
        h, w = image.shape[:2]
        heat, pred, _ = segment_for_display(heatmaps.maps[int(r)], h, w, float(rec["prob"]))
        gt = None if gt_masks is None else gt_masks.get((image_id, task))
        tube = None if tube_masks is None else tube_masks.get(image_id)
        # Left: the radiograph with the reference outlines only; right: the map over it.
        layers.append(draw_overlay(ax_row[0], image, None, {GROUND_TRUTH: gt, CHEST_TUBE: tube}))
        layers.append(
            draw_overlay(
                ax_row[1],
                image,
                heat,
                {GROUND_TRUTH: gt, CHEST_TUBE: tube, SEGMENTATION: pred},
                alpha=alpha,
            )
        )
        gt_label = rec["gt"]
        label = "?" if not np.isfinite(float(gt_label)) else int(gt_label)
        ax_row[0].set_title(image_id[-24:], fontsize=6)
        ax_row[1].set_title(f"{task} p={float(rec['prob']):.2f} gt={label}", fontsize=6)
    finish_overlay_figure(fig, axes, layers)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig
