"""Heatmap / mask overlays for a random sample of (CXR, task) maps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from cxr_spurious.heatmaps import HeatmapSet, sample_positives_first
from cxr_spurious.io.masks import decode_rle
from cxr_spurious.localization.kernels import segment_map_cpu
from cxr_spurious.localization.metrics import rle_area
from cxr_spurious.localization.segmentation import SegmentationConfig

DISPLAY_SIDE = 256  # longest side of each panel, in pixels


def sample_overlay_rows(heatmaps: HeatmapSet, gt_segmentations: Mapping[str, Mapping[str, Any]], n: int, seed: int) -> np.ndarray:
    """Seeded sample of at most ``n`` rows, maps with a non-empty ground-truth mask first.

    ``heatmaps.sample_positives_first`` with the gt JSON's non-empty masks as positives.

    Raises:
        ParameterError: ``n`` < 1 (``localization.overlays.n_images``).
    """
    index = heatmaps.index
    positive = [rle_area(gt_segmentations.get(str(c), {}).get(str(t))) > 0 for c, t in zip(index["image_id"], index["task"])]
    return sample_positives_first(heatmaps, n, seed, parameter="localization.overlays.n_images", positive=np.array(positive, dtype=bool))


def _display_size(height: int, width: int) -> tuple[int, int]:
    scale = DISPLAY_SIDE / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay_panel(
    map2d: np.ndarray,
    height: int,
    width: int,
    prob: float,
    gt_rle: Mapping[str, Any] | None,
    objects: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Display-size layers of one map: normalised heatmap, Otsu mask, gt mask, argmax, IoU.

    The segmentation is computed at full size (the evaluation's kernel) and then shrunk.

    Args:
        objects: Optional spurious-object masks of the CXR (``{name: rle}``, the
            ``spurious_segmentations`` entry); empty masks are dropped.

    Returns:
        ``heat`` (float, [0, 1]), ``pred`` and ``gt`` (uint8 0/1 or ``None``), ``objects``
        (``{name: uint8 mask}``), ``argmax`` (row, col) in display pixels and ``iou`` (NaN
        when undefined).
    """
    fast = segment_map_cpu(np.asarray(map2d, np.float32), height, width, prob, SegmentationConfig())
    dh, dw = _display_size(height, width)
    up = np.ascontiguousarray(fast.up_t.T)
    heat = (up - fast.lo) / fast.span if fast.span > 0 else np.zeros_like(up)
    pred = decode_rle(fast.rle, source="segmentation")
    gt = decode_rle(dict(gt_rle), source="gt_segmentations") if gt_rle is not None else None
    inter = int((pred & gt).sum()) if gt is not None else 0
    union = int((pred | gt).sum()) if gt is not None else 0
    row, col = fast.argmax
    return {
        "heat": cv2.resize(heat.astype(np.float32), (dw, dh), interpolation=cv2.INTER_AREA),
        "pred": cv2.resize(pred, (dw, dh), interpolation=cv2.INTER_NEAREST),
        "gt": cv2.resize(gt, (dw, dh), interpolation=cv2.INTER_NEAREST) if gt is not None else None,
        "objects": {
            str(name): cv2.resize(mask, (dw, dh), interpolation=cv2.INTER_NEAREST)
            for name, rle in (objects or {}).items()
            if (mask := decode_rle(dict(rle), source="spurious_segmentations", key=str(name))).any()
        },
        "argmax": (row * dh / height, col * dw / width),
        "iou": inter / union if gt is not None and pred.any() and gt.any() else float("nan"),
    }


def plot_overlays(
    heatmaps: HeatmapSet,
    gt_segmentations: Mapping[str, Mapping[str, Any]],
    n: int,
    seed: int,
    spurious_segmentations: Mapping[str, Mapping[str, Any]] | None = None,
    spurious_objects: tuple[str, ...] = ("Chest Tube",),
) -> plt.Figure:
    """Overlays of heatmap, Otsu segmentation and ground truth for ``n`` sampled maps.

    Each panel shows the min-max normalised heatmap (jet), the predicted mask's outline
    (white), the ground-truth outline (lime), the outline of each spurious object present
    (magenta, dashed: where a shortcut model may look instead), and the heatmap's maximum
    (the hit/miss point: a circle, filled when inside the ground truth), titled with CXR,
    task, model probability and IoU. Maps with a non-empty ground truth are drawn first.

    Args:
        heatmaps: Maps with their index (at native resolution).
        gt_segmentations: CheXlocalize gt JSON ``{cxr_id: {task: rle}}``.
        n: Number of panels.
        seed: Seed of the sample.
        spurious_segmentations: Optional ``{cxr_id: {object: rle}}`` (the phantom's
            ``spurious_segmentations``); ``None`` or ``{}`` draws none.
        spurious_objects: Which objects of it to outline.

    Returns:
        The figure (one panel per map, up to 4 columns).
    """
    rows = sample_overlay_rows(heatmaps, gt_segmentations, n, seed) if len(heatmaps) else np.array([], int)
    ncols = max(1, min(4, rows.size))
    nrows = max(1, math.ceil(rows.size / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False, constrained_layout=True)
    index = heatmaps.index.reset_index(drop=True)
    for ax in axes.ravel():
        ax.axis("off")
    drew_objects = False
    for ax, i in zip(axes.ravel(), rows):
        row = index.iloc[int(i)]
        cxr, task = str(row["image_id"]), str(row["task"])
        gt_rle = gt_segmentations.get(cxr, {}).get(task)
        found = (spurious_segmentations or {}).get(cxr, {})
        objects = {name: found[name] for name in spurious_objects if name in found}
        panel = overlay_panel(np.asarray(heatmaps.maps[int(i)]), int(row["cxr_h"]), int(row["cxr_w"]), float(row["prob"]), gt_rle, objects)
        ax.imshow(panel["heat"], cmap="jet", vmin=0, vmax=1)
        if panel["pred"].any():
            ax.contour(panel["pred"], levels=[0.5], colors="white", linewidths=1.0)
        for mask in panel["objects"].values():
            ax.contour(mask, levels=[0.5], colors="magenta", linewidths=0.9, linestyles="dashed")
            drew_objects = True
        hit = False
        if panel["gt"] is not None and panel["gt"].any():
            ax.contour(panel["gt"], levels=[0.5], colors="lime", linewidths=1.0)
            r, c = (min(int(v), s - 1) for v, s in zip(panel["argmax"], panel["gt"].shape))
            hit = bool(panel["gt"][r, c])
        ax.plot(panel["argmax"][1], panel["argmax"][0], "o", ms=6, mec="white", mfc="white" if hit else "none")
        iou = "n/a" if np.isnan(panel["iou"]) else f"{panel['iou']:.2f}"
        ax.set_title(f"{cxr[:40]}\n{task}  p={float(row['prob']):.2f}  IoU={iou}", fontsize=7)
    if not rows.size:
        axes[0, 0].text(0.5, 0.5, "no heatmaps", ha="center", va="center")
    legend = "Heatmap (jet), Otsu segmentation (white), ground truth (lime)"
    if drew_objects:
        legend += f", {' / '.join(o.lower() for o in spurious_objects)} (magenta, dashed)"
    fig.suptitle(f"{legend}, maximum (o: filled = hit)", fontsize=8)
    return fig
