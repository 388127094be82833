"""The one drawing of a saliency map over its radiograph, used by every overlay figure.

As pytorch-grad-cam's ``show_cam_on_image`` and CheXlocalize's figures do, the heatmap is a
colormap blended with ``alpha`` < 1 over the grey image, so the anatomy, the lesion and the
chest tube stay visible under it. Outlines are contours at 0.5 of 0/1 masks, one style per
kind (``OUTLINES``): the ground-truth lesion (lime), the chest tube, i.e. the spurious
object (magenta, dashed), and the map's segmentation (white, CheXlocalize's Otsu
threshold). ``finish_overlay_figure`` adds the legend of the outlines drawn and the colour
bar of the heatmap.

Layers of one panel, bottom to top (what the tests look for):

1. ``AxesImage``: the radiograph's own pixel values, ``cmap="gray"``;
2. ``AxesImage``: the heatmap in [0, 1], ``cmap=HEATMAP_CMAP``, ``alpha`` < 1;
3. one contour set per outline present.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D

from cxr_spurious.errors import ContractError
from cxr_spurious.sources.cache import ImageCache

HEATMAP_CMAP = "jet"
DEFAULT_ALPHA = 0.45

GROUND_TRUTH = "ground truth"
CHEST_TUBE = "chest tube"
SEGMENTATION = "segmentation (Otsu)"

# Contour style of each outline kind; the legend lists them in this order.
OUTLINES: dict[str, dict[str, Any]] = {
    GROUND_TRUTH: {"colors": "lime", "linestyles": "solid", "linewidths": 1.1},
    CHEST_TUBE: {"colors": "magenta", "linestyles": "dashed", "linewidths": 1.0},
    SEGMENTATION: {"colors": "white", "linestyles": "solid", "linewidths": 1.0},
}


@dataclass
class OverlayLayers:
    """What ``draw_overlay`` drew on one axes: the heatmap artist and the outlines present."""

    heat: AxesImage | None
    outlines: list[str] = field(default_factory=list)


def images_of(image_cache: ImageCache, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
    """The cached radiographs of ``image_ids`` (uint8, S x S), by id, for the overlay figures.

    Raises:
        ContractError: an id is not in the cache (``ImageCache.row`` names it).
    """
    ids = list(dict.fromkeys(str(i) for i in image_ids))
    return {i: np.asarray(image_cache.images[r]) for i, r in zip(ids, image_cache.rows(ids))}


def resize_to(arr: np.ndarray, shape: tuple[int, int], *, nearest: bool) -> np.ndarray:
    """``arr`` (h, w) resized to ``shape`` (rows, cols); nearest for masks, bilinear otherwise."""
    a = np.asarray(arr)
    if a.shape[:2] == tuple(shape):
        return a
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    src = a.astype(np.uint8 if nearest else np.float32)
    return cv2.resize(src, (int(shape[1]), int(shape[0])), interpolation=interp)


def _grey_range(image: np.ndarray) -> tuple[float, float]:
    return (0.0, 255.0) if image.dtype == np.uint8 else (0.0, 1.0)


def draw_overlay(
    ax: Axes,
    image: np.ndarray,
    heat: np.ndarray | None,
    outlines: Mapping[str, np.ndarray | None] | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
) -> OverlayLayers:
    """Draw ``heat`` over the grey ``image`` on ``ax``, with the outlines that are present.

    Args:
        ax: Target axes (its axis lines are turned off).
        image: The radiograph, (h, w), uint8 (0-255) or float (0-1); drawn with its own
            pixel values.
        heat: The heatmap normalised to [0, 1], any (h', w'); resized bilinearly to the
            image. ``None`` draws the radiograph and its outlines only (no heatmap layer).
        outlines: ``{kind: 0/1 mask or None}`` with kinds of ``OUTLINES``; masks of any size
            (resized nearest); ``None`` or empty masks draw nothing.
        alpha: Heatmap opacity, in (0, 1).

    Returns:
        The heatmap artist (for the colour bar; ``None`` without a heatmap) and the
        outline kinds drawn.

    Raises:
        ContractError: ``image`` is not 2-D, ``alpha`` is not in (0, 1), or an outline kind
            is unknown.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ContractError(f"overlay image must be a 2-D grey image, got shape {img.shape}")
    if not 0.0 < alpha < 1.0:
        raise ContractError(f"overlay alpha must be in (0, 1) to show the image, got {alpha}")
    vmin, vmax = _grey_range(img)
    ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    artist = None
    if heat is not None:
        heat_up = resize_to(np.asarray(heat, dtype=np.float32), img.shape, nearest=False)
        artist = ax.imshow(
            np.clip(heat_up, 0.0, 1.0), cmap=HEATMAP_CMAP, alpha=alpha, vmin=0.0, vmax=1.0
        )
    drawn = []
    for kind, mask in (outlines or {}).items():
        if kind not in OUTLINES:
            raise ContractError(f"unknown outline kind {kind!r}; expected one of {list(OUTLINES)}")
        if mask is None or not np.asarray(mask).any():
            continue
        m = resize_to(np.asarray(mask) > 0, img.shape, nearest=True)
        ax.contour(m.astype(np.float32), levels=[0.5], **OUTLINES[kind])
        drawn.append(kind)
    ax.set_axis_off()
    return OverlayLayers(artist, drawn)


def finish_overlay_figure(
    fig: Figure,
    axes: Sequence[Axes] | np.ndarray,
    layers: Iterable[OverlayLayers],
    *,
    heat_label: str = "saliency (min-max normalised)",
) -> None:
    """Add the colour bar of the heatmap and the legend of every outline kind drawn.

    Args:
        fig: The figure.
        axes: All panels (the colour bar takes room from them).
        layers: What ``draw_overlay`` returned for each panel.
        heat_label: Colour bar label.
    """
    layers = list(layers)
    heats = [layer.heat for layer in layers if layer.heat is not None]
    if not heats:
        return
    drawn = {kind for layer in layers for kind in layer.outlines}
    fig.colorbar(heats[0], ax=list(np.ravel(axes)), shrink=0.8, fraction=0.04, label=heat_label)
    handles = [
        Line2D([], [], color=OUTLINES[k]["colors"], linestyle=OUTLINES[k]["linestyles"], label=k)
        for k in OUTLINES
        if k in drawn
    ]
    if handles:
        legend = fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=len(handles),
            fontsize=7,
            facecolor="0.35",
            labelcolor="white",
            framealpha=1.0,
        )
        legend.set_title("outlines", prop={"size": 7})
        legend.get_title().set_color("white")
