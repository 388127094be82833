"""Heatmap -> binary segmentation with CheXlocalize's exact semantics, one map at a time.

Reference semantics (rajpurkarlab/cheXlocalize ``heatmap_to_segmentation.py``):

* bilinear upsampling (``align_corners=False``) of the map to the original (h, w);
* min-max normalisation in float32 (``(m - min) / (max - min)``);
* Otsu (default): ``uint8(255 * norm)``, ``cv2.threshold(..., THRESH_OTSU)``, then the
  contours drawn as filled polygons with their outline (holes filled); contours of a
  single point are not drawn, so a one-pixel component (8-connectivity) is dropped;
* fixed threshold: ``norm > threshold`` (float32 comparison);
* optional box-filter smoothing with kernel ``k`` (JET colour map -> grey -> box filter
  -> inverted), Otsu mode only;
* optional probability cutoff: below it the mask is empty.

A constant map (max == min at native resolution) has no normalised form: it gives an
empty mask, never NaN. Constancy is tested before upsampling because bilinear weights do
not sum to exactly 1 in float32, so an upsampled constant map can show ulp-level ripples.
Where the upsampled copy is exactly constant the reference is empty too (it divides 0 by 0
and casts NaN to 0); where it ripples, the reference stretches the ripples to [0, 1] and
cuts a mask of them. That mask says nothing about location, so this is a deliberate
departure (the localization pipeline's README, "Semantics").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cxr_spurious.errors import DataFormatError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationConfig:
    """How to binarise one map.

    Attributes:
        threshold: Fixed threshold on the normalised map; ``None`` = Otsu.
        smoothing_k: Box-filter kernel size (0 = no smoothing); Otsu mode only.
        prob_cutoff: Below this model probability the mask is empty.
        fill_contours: Fill the outer contours of the Otsu mask (reference default).
    """

    threshold: float | None = None
    smoothing_k: int = 0
    prob_cutoff: float = 0.0
    fill_contours: bool = True


GPU_PATH_NOTE = (
    "localization on CUDA (prefer_gpu: true): torch's CUDA bilinear upsampling and the GPU "
    "histogram are not the reference's arithmetic, and this path has not been measured "
    "against the exact CPU kernel; masks, IoUs and hit/miss may differ from CheXlocalize's. "
    "Set localization.prefer_gpu: false for the exact kernel."
)


def pick_device(prefer_gpu: bool = False) -> torch.device:
    """The device of the evaluation kernels: the exact CPU kernel unless the GPU is opted into.

    CUDA is used only when ``prefer_gpu`` is true and CUDA is available; the choice is then
    logged with ``GPU_PATH_NOTE`` (a warning): the CUDA path is not the reference's
    arithmetic and its parity with the exact kernel is not measured.
    """
    if not prefer_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        logger.info(
            "localization: prefer_gpu is set but CUDA is not available; using the exact CPU kernel"
        )
        return torch.device("cpu")
    logger.warning(GPU_PATH_NOTE)
    return torch.device("cuda")


def check_finite(map2d: np.ndarray | torch.Tensor, *, source: object, key: str) -> None:
    """Raise ``DataFormatError`` naming ``source``/``key`` when the map has NaN or inf."""
    t = torch.as_tensor(map2d)
    if not bool(torch.isfinite(t).all()):
        raise DataFormatError(
            source, "heatmap holds NaN or infinite values; expected finite floats", where=key
        )


def upsample(
    map2d: np.ndarray | torch.Tensor, height: int, width: int, device: torch.device | None = None
) -> torch.Tensor:
    """Bilinear (align_corners=False) upsampling of a 2-D map to (height, width), float32."""
    t = torch.as_tensor(np.ascontiguousarray(map2d) if isinstance(map2d, np.ndarray) else map2d)
    t = t.to(device=device or t.device, dtype=torch.float32).reshape(1, 1, *t.shape[-2:])
    if tuple(t.shape[-2:]) == (height, width):
        return t[0, 0]
    return F.interpolate(t, size=(int(height), int(width)), mode="bilinear", align_corners=False)[
        0, 0
    ]


def is_constant(map2d: np.ndarray | torch.Tensor) -> bool:
    """True when the native-resolution map has max == min (no spatial information)."""
    t = torch.as_tensor(map2d)
    return bool(t.max() == t.min())


def normalise(up: torch.Tensor) -> torch.Tensor | None:
    """Min-max normalise in float32 exactly as the reference; ``None`` for a constant map."""
    lo, hi = torch.aminmax(up)
    span = hi - lo
    if not bool(span > 0):
        return None
    out = torch.sub(up, lo)
    out.div_(span)
    return out


def otsu_binary(norm: torch.Tensor | None, *, smoothing_k: int = 0) -> np.ndarray:
    """Otsu binarisation of ``uint8(255 * norm)``; uint8 0/1 (h, w). Empty for ``None``."""
    if norm is None:
        raise ValueError("otsu_binary needs a normalised map; handle constant maps before")
    u8 = torch.mul(norm, 255).to(torch.uint8).cpu().numpy()
    if smoothing_k > 0:
        jet = cv2.applyColorMap(u8, cv2.COLORMAP_JET)
        grey = cv2.boxFilter(cv2.cvtColor(jet, cv2.COLOR_RGB2GRAY), -1, (smoothing_k, smoothing_k))
        u8 = 255 - grey
    maxval = int(u8.max())
    _, binary = cv2.threshold(u8, 0, maxval, cv2.THRESH_OTSU)
    return (binary > 0).astype(np.uint8)


def drop_isolated_pixels(binary: np.ndarray) -> np.ndarray:
    """The 0/1 mask without its one-pixel components (no set pixel among the 8 neighbours).

    The reference's ``cam_to_segmentation`` only draws contours with ``len(cnt) > 1``; the
    contour of an isolated pixel is a single point, so that pixel is never drawn. Every
    larger 8-connected component has a contour of at least two points. O(pixels): one
    3 x 3 box sum.
    """
    b = np.ascontiguousarray(binary, dtype=np.uint8)
    around = cv2.boxFilter(b, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    isolated = (b > 0) & (around == 1)  # the pixel itself is the only one set in its 3 x 3
    if not isolated.any():
        return b
    out = b.copy()
    out[isolated] = 0
    return out


def fill_outer_contours(binary: np.ndarray) -> np.ndarray:
    """Draw the contours of a 0/1 mask like the reference (PIL polygon, outline included).

    One-pixel components are dropped first (``drop_isolated_pixels``: the reference skips
    single-point contours). When the remaining mask has no hole (the common case) the filled
    contours equal the mask itself, so the PIL rasterisation only runs for masks with holes.
    """
    binary = drop_isolated_pixels(binary)
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or not (hierarchy[0][:, 3] >= 0).any():
        return binary
    outer = [c for c, h in zip(contours, hierarchy[0]) if h[3] < 0 and len(c) > 1]
    canvas = Image.new("1", (binary.shape[1], binary.shape[0]))
    draw = ImageDraw.Draw(canvas)
    for contour in outer:
        draw.polygon([(int(p[0][0]), int(p[0][1])) for p in contour], outline=1, fill=1)
    filled = np.array(canvas, dtype=np.uint8)
    return np.maximum(filled, binary)


def segment(
    norm: torch.Tensor | None, shape: tuple[int, int], prob: float, config: SegmentationConfig
) -> np.ndarray:
    """Binary uint8 (h, w) segmentation of a normalised map (``None`` = constant map)."""
    if norm is None or prob < config.prob_cutoff:
        return np.zeros(shape, dtype=np.uint8)
    if config.threshold is not None:
        return (norm > float(config.threshold)).to(torch.uint8).cpu().numpy()
    binary = otsu_binary(norm, smoothing_k=config.smoothing_k)
    return fill_outer_contours(binary) if config.fill_contours else binary


def heatmap_to_segmentation(
    map2d: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    config: SegmentationConfig | None = None,
    prob: float = 1.0,
) -> np.ndarray:
    """One map (native resolution) to its binary segmentation at (height, width).

    Args:
        map2d: 2-D map (or (1, 1, h, w)).
        height: Original image height.
        width: Original image width.
        config: Thresholding options (Otsu by default).
        prob: Model probability (for the probability cutoff).

    Returns:
        uint8 0/1 mask of shape (height, width).
    """
    cfg = config or SegmentationConfig()
    up = upsample(map2d, height, width)
    norm = None if is_constant(map2d) else normalise(up)
    return segment(norm, (height, width), prob, cfg)
