"""Overlays of a random sample of (CXR, task) maps on their radiographs.

Each panel is the shared drawing of ``cxr_spurious.overlays``: the min-max normalised map
blended over the grey image, with the ground-truth outline, the chest-tube outline and the
map's Otsu segmentation (CheXlocalize's semantics, the evaluation's own kernel).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from matplotlib.figure import Figure  # object API: no pyplot state, no GUI backend

from cxr_spurious.errors import ContractError
from cxr_spurious.heatmaps import HeatmapSet, sample_positives_first
from cxr_spurious.io.masks import decode_rle
from cxr_spurious.localization.kernels import segment_map_cpu
from cxr_spurious.localization.metrics import rle_area
from cxr_spurious.localization.segmentation import SegmentationConfig
from cxr_spurious.overlays import (
    CHEST_TUBE,
    GROUND_TRUTH,
    SEGMENTATION,
    OverlayLayers,
    draw_overlay,
    finish_overlay_figure,
)

DISPLAY_SIDE = 256  # longest side of each panel, in pixels


def sample_overlay_rows(
    heatmaps: HeatmapSet, gt_segmentations: Mapping[str, Mapping[str, Any]], n: int, seed: int
) -> np.ndarray:
    """Seeded sample of at most ``n`` rows, maps with a non-empty ground-truth mask first.

    ``heatmaps.sample_positives_first`` with the gt JSON's non-empty masks as positives.

    Raises:
        ParameterError: ``n`` < 1 (``localization.overlays.n_images``).
    """
    pairs = heatmaps.pairs  # a folder's file names: no pickle is read to sample
    positive = [
        rle_area(gt_segmentations.get(str(c), {}).get(str(t))) > 0
        for c, t in zip(pairs["image_id"], pairs["task"])
    ]
    return sample_positives_first(
        heatmaps,
        n,
        seed,
        parameter="localization.overlays.n_images",
        positive=np.array(positive, dtype=bool),
    )


def _display_size(height: int, width: int) -> tuple[int, int]:
    scale = DISPLAY_SIDE / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def segment_for_display(
    map2d: np.ndarray, height: int, width: int, prob: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A map upsampled to ``height`` x ``width``, its Otsu segmentation and its maximum.

    The evaluation's kernel (``segment_map_cpu`` with the default ``SegmentationConfig``),
    so a figure outlines exactly the mask the metrics score.

    Returns:
        The min-max normalised map (float32 in [0, 1], zeros for a constant map), the
        segmentation (uint8 0/1) and the maximum's (row, col), all at full size.
    """
    fast = segment_map_cpu(np.asarray(map2d, np.float32), height, width, prob, SegmentationConfig())
    up = np.ascontiguousarray(fast.up_t.T)
    heat = (up - fast.lo) / fast.span if fast.span > 0 else np.zeros_like(up)
    pred = decode_rle(fast.rle, source="segmentation")
    row, col = fast.argmax
    return heat.astype(np.float32), pred, (float(row), float(col))


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
        (``{name: uint8 mask}``), ``argmax`` (row, col) in display pixels, ``iou`` (NaN
        when undefined) and ``hit``: 1.0 / 0.0 when the maximum is / is not in the ground
        truth, NaN for an empty or absent one. ``hit`` is decided on the full-size mask at
        the full-size maximum, as the evaluation scores it (``evaluate.score_fast_map``), not
        on the shrunk display mask, where a small lesion can vanish or the scaled point
        land on the other side of its edge.
    """
    heat, pred, (row, col) = segment_for_display(map2d, height, width, prob)
    dh, dw = _display_size(height, width)
    gt = decode_rle(dict(gt_rle), source="gt_segmentations") if gt_rle is not None else None
    inter = int((pred & gt).sum()) if gt is not None else 0
    union = int((pred | gt).sum()) if gt is not None else 0
    hit = float(gt[int(row), int(col)]) if gt is not None and gt.any() else float("nan")
    return {
        "heat": cv2.resize(heat, (dw, dh), interpolation=cv2.INTER_AREA),
        "pred": cv2.resize(pred, (dw, dh), interpolation=cv2.INTER_NEAREST),
        "gt": cv2.resize(gt, (dw, dh), interpolation=cv2.INTER_NEAREST) if gt is not None else None,
        "objects": {
            str(name): cv2.resize(mask, (dw, dh), interpolation=cv2.INTER_NEAREST)
            for name, rle in (objects or {}).items()
            if (mask := decode_rle(dict(rle), source="spurious_segmentations", key=str(name))).any()
        },
        "argmax": (row * dh / height, col * dw / width),
        "iou": inter / union if gt is not None and pred.any() and gt.any() else float("nan"),
        "hit": hit,
    }


def _display_image(
    images: Mapping[str, np.ndarray], cxr: str, shape: tuple[int, int]
) -> np.ndarray | None:
    """The radiograph of ``cxr`` at display size (the cache's square image back to its
    aspect), ``None`` when ``images`` has none."""
    if cxr not in images:
        return None
    image = np.asarray(images[cxr])
    if image.ndim != 2:
        raise ContractError(f"overlay: image of '{cxr}' must be 2-D grey, got shape {image.shape}")
    if image.shape == shape:
        return image
    interp = cv2.INTER_AREA if image.shape[0] >= shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (shape[1], shape[0]), interpolation=interp)


def plot_overlays(
    heatmaps: HeatmapSet,
    gt_segmentations: Mapping[str, Mapping[str, Any]],
    images: Mapping[str, np.ndarray],
    n: int,
    seed: int,
    spurious_segmentations: Mapping[str, Mapping[str, Any]] | None = None,
    spurious_objects: tuple[str, ...] = ("Chest Tube",),
    *,
    title: str = "",
) -> Figure:
    """Overlays of heatmap, Otsu segmentation and ground truth on ``n`` sampled radiographs.

    Each panel (``cxr_spurious.overlays.draw_overlay``) shows the radiograph in grey with
    the min-max normalised heatmap blended over it (jet, semi-transparent), the outlines of
    the ground truth (lime), of each spurious object present (magenta, dashed: where a
    shortcut model may look instead) and of the map's Otsu segmentation (white), and the
    heatmap's maximum (the hit/miss point: a circle, filled when it is a hit, decided on the
    full-size ground truth as the evaluation's ``hit``);
    it is titled with CXR, task, model probability and IoU. Maps with a non-empty ground
    truth are drawn first. A legend names the outlines drawn; a colour bar the heatmap.

    Args:
        heatmaps: Maps with their index (at native resolution).
        gt_segmentations: CheXlocalize gt JSON ``{cxr_id: {task: rle}}``.
        images: Grey radiograph per ``image_id`` (any size, e.g. the image cache's square
            images; resized to the panel). A sampled map without one is drawn on a black
            field, titled "no image" (e.g. external CheXlocalize maps without an image cache).
        n: Number of panels.
        seed: Seed of the sample.
        spurious_segmentations: Optional ``{cxr_id: {object: rle}}`` (the phantom's
            ``spurious_segmentations``); ``None`` or ``{}`` draws none.
        spurious_objects: Which objects of it to outline.
        title: Figure title (e.g. the heatmap set's name).

    Returns:
        The figure (one panel per map, up to 4 columns).

    Raises:
        ContractError: an image is not 2-D.
    """
    rows = (
        sample_overlay_rows(heatmaps, gt_segmentations, n, seed)
        if len(heatmaps)
        else np.array([], int)
    )
    ncols = max(1, min(4, rows.size))
    nrows = max(1, math.ceil(rows.size / ncols))
    fig = Figure(figsize=(3.2 * ncols + 0.8, 3.4 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    chosen = np.zeros(len(heatmaps), bool)
    chosen[rows] = True
    # rows are sorted, so the order is kept; a pickle folder reads only these files
    sampled = heatmaps.select(chosen) if rows.size else heatmaps
    index = sampled.index.reset_index(drop=True)
    for ax in axes.ravel():
        ax.set_axis_off()
    layers: list[OverlayLayers] = []
    for ax, i in zip(axes.ravel(), range(rows.size)):
        row = index.iloc[int(i)]
        cxr, task = str(row["image_id"]), str(row["task"])
        gt_rle = gt_segmentations.get(cxr, {}).get(task)
        found = (spurious_segmentations or {}).get(cxr, {})
        objects = {name: found[name] for name in spurious_objects if name in found}
        panel = overlay_panel(
            np.asarray(sampled.maps[int(i)]),
            int(row["cxr_h"]),
            int(row["cxr_w"]),
            float(row["prob"]),
            gt_rle,
            objects,
        )
        image = _display_image(images, cxr, panel["heat"].shape)
        note = "" if image is not None else "  (no image)"
        if image is None:
            image = np.zeros(panel["heat"].shape, np.uint8)
        tube = None
        if panel["objects"]:
            tube = np.any(np.stack(list(panel["objects"].values())), axis=0).astype(np.uint8)
        layer = draw_overlay(
            ax,
            image,
            panel["heat"],
            {GROUND_TRUTH: panel["gt"], CHEST_TUBE: tube, SEGMENTATION: panel["pred"]},
        )
        layers.append(layer)
        hit = panel["hit"] == 1.0  # decided at full size, as the evaluation scores it
        ax.plot(
            panel["argmax"][1],
            panel["argmax"][0],
            "o",
            ms=6,
            mec="white",
            mfc="white" if hit else "none",
        )
        iou = "n/a" if np.isnan(panel["iou"]) else f"{panel['iou']:.2f}"
        ax.set_title(f"{cxr[:40]}{note}\n{task}  p={float(row['prob']):.2f}  IoU={iou}", fontsize=7)
    if not rows.size:
        axes[0, 0].text(0.5, 0.5, "no heatmaps", ha="center", va="center")
    finish_overlay_figure(fig, axes, layers)
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}heatmap over the radiograph; maximum (o: filled = hit)", fontsize=8)
    return fig
