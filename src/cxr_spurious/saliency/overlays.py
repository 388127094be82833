"""Overlay figures: image, heatmap on the image, ground-truth outline where known."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure  # object API: no pyplot state, no GUI backend

from cxr_spurious.heatmaps import HeatmapSet, sample_positives_first


def sample_rows(heatmaps: HeatmapSet, n: int, seed: int) -> np.ndarray:
    """Seeded sample of at most ``n`` rows, positive image labels (``gt == 1``) first.

    ``heatmaps.sample_positives_first`` with this figure's parameter named in its error.
    """
    return sample_positives_first(heatmaps, n, seed, parameter="saliency.overlays.n_images")


def _resize_nearest(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = (np.arange(shape[0]) * arr.shape[0] / shape[0]).astype(int)
    cols = (np.arange(shape[1]) * arr.shape[1] / shape[1]).astype(int)
    return arr[rows][:, cols]


def overlay_figure(
    heatmaps: HeatmapSet,
    rows: np.ndarray,
    images: Mapping[str, np.ndarray],
    gt_masks: Mapping[tuple[str, str], np.ndarray] | None = None,
    *,
    title: str = "",
    alpha: float = 0.45,
) -> Figure:
    """One figure, one row per map: the image and the heatmap over it, GT outlined in green.

    Args:
        heatmaps: The set.
        rows: Row numbers of ``heatmaps`` to draw.
        images: Model-input image (h, w) per ``image_id``.
        gt_masks: Optional ground-truth mask per ``(image_id, task)`` (any size; resized).
        title: Figure title.
        alpha: Heatmap opacity.

    Returns:
        The figure (not shown; the caller saves and closes it).
    """
    n = max(1, len(rows))
    fig = Figure(figsize=(4.4, 2.2 * n), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False)
    for ax_row, r in zip(axes, rows):
        rec = heatmaps.index.iloc[int(r)]
        image = np.asarray(images[str(rec["image_id"])])
        hm = np.asarray(heatmaps.maps[int(r)], dtype=np.float32)
        hm_up = _resize_nearest(hm, image.shape[:2]) if hm.shape != image.shape[:2] else hm
        ax_row[0].imshow(image, cmap="gray", vmin=0, vmax=255 if image.dtype == np.uint8 else 1)
        ax_row[1].imshow(image, cmap="gray", vmin=0, vmax=255 if image.dtype == np.uint8 else 1)
        ax_row[1].imshow(hm_up, cmap="jet", alpha=alpha, vmin=0, vmax=max(float(hm_up.max()), 1e-6))
        mask = None if gt_masks is None else gt_masks.get((str(rec["image_id"]), str(rec["task"])))
        if mask is not None and np.asarray(mask).any():
            m = np.asarray(mask, dtype=float)
            m = _resize_nearest(m, image.shape[:2]) if m.shape != image.shape[:2] else m
            for ax in ax_row:
                ax.contour(m, levels=[0.5], colors="lime", linewidths=0.8)
        gt = rec["gt"]
        label = "?" if not np.isfinite(float(gt)) else int(gt)
        ax_row[0].set_title(f"{rec['image_id']}"[-24:], fontsize=6)
        ax_row[1].set_title(f"{rec['task']} p={float(rec['prob']):.2f} gt={label}", fontsize=6)
        for ax in ax_row:
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    return fig
