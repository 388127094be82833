"""Pathologies: exact instance outlines (pixel polygons) and how each is drawn.

Each task has a ``sample_*`` function that returns one polygon per instance and a drawing
function that changes the attenuation map from the rasterised outline, so the ground truth
mask IS the rasterisation of the written polygons (``io.masks.rasterize_polygons``): the
outline an annotator would trace. The drawing softens the outline's edge (``soften``, a
sigma of 0.8-2.5 px at 256 px) and the exposure blurs the image, so a finding's visible
signal reaches a few pixels beyond its mask: 3-5 px at 256 px, where 19-37 % of the pixels
changed by at least 3 grey levels lie outside it (measured against the ``no_lesion``
counterfactual, 2026-12-07). Every instance is at least ``min_thickness_px`` thick (largest
inscribed disc).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxr_spurious.io.masks import rasterize_polygons
from cxr_spurious.phantom.anatomy import Anatomy, AnatomyLayers
from cxr_spurious.phantom.geometry import (
    blob,
    dilate,
    largest_contour,
    scale_about,
    smooth_field,
    soften,
    stroke,
)

# Base strengths (attenuation units) at contrast 1.
_PTX_LUCENCY = 0.055
_PTX_LINE = 0.12
_EFFUSION = 0.26
_NODULE = 0.17
#: Smallest nodule diameter, in units of the minimum thickness (the range drawn is 1.15-2.4).
_NODULE_MIN_FACTOR = 1.15
_OPACITY = 0.15


class FindingDoesNotFitError(Exception):
    """No outline of the minimum thickness fits in this image's anatomy.

    ``render`` turns it into a ``ParameterError`` naming ``findings.min_thickness_at_96``,
    the task and the image.
    """

    def __init__(self, message: str, task: str = "Pneumothorax") -> None:
        super().__init__(message)
        self.task = task


@dataclass(frozen=True)
class FindingContext:
    """What the samplers need to know about the image."""

    anatomy: Anatomy
    layers: AnatomyLayers
    size: int
    min_thickness_px: float

    def lung_mask(self, which: int) -> np.ndarray:
        """Binary mask of one lung (0 = image left, 1 = image right)."""
        return rasterize_polygons([self.anatomy.lungs[which].tolist()], self.size, self.size)

    def open_lung(self, which: int | None = None) -> np.ndarray:
        """Lung area not hidden behind the heart (one lung, or both when ``which`` is None)."""
        lungs = self.lung_mask(0) | self.lung_mask(1) if which is None else self.lung_mask(which)
        heart = rasterize_polygons([self.anatomy.heart.tolist()], self.size, self.size)
        return lungs & (1 - dilate(heart, max(1, round(self.min_thickness_px / 2))))


def thickness(mask: np.ndarray) -> float:
    """Diameter (px) of the largest disc inside a binary mask."""
    if not mask.any():
        return 0.0
    padded = np.pad(mask.astype(np.uint8), 1)
    return float(2.0 * cv2.distanceTransform(padded, cv2.DIST_L2, 5).max())


def _region_polygon(region: np.ndarray, min_thickness_px: float) -> np.ndarray | None:
    poly = largest_contour(region, min_area_px=min_thickness_px**2)
    if poly is None:
        return None
    if thickness(rasterize_polygons([poly.tolist()], *region.shape)) < min_thickness_px:
        return None
    return poly


def _interior_points(
    mask: np.ndarray, clearance_px: float, rng: np.random.Generator, k: int
) -> np.ndarray:
    """Up to ``k`` random pixel centres (x, y) at least ``clearance_px`` inside a mask."""
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= clearance_px)
    if len(xs) == 0:
        return np.zeros((0, 2))
    pick = rng.choice(len(xs), size=min(k, len(xs)), replace=False)
    return np.stack([xs[pick], ys[pick]], axis=1).astype(np.float64)


def sample_pneumothorax(
    ctx: FindingContext, rng: np.random.Generator, side: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """A pneumothorax: the lung collapsed away from the apex or the lateral wall.

    Args:
        ctx: Image context.
        rng: The task's stream.
        side: -1 image left (patient right), +1 image right.

    Returns:
        ([outline], collapsed lung outline) in pixels; the pleural line follows the latter.

    Raises:
        FindingDoesNotFitError: no region ``ctx.min_thickness_px`` thick fits in the lung.
    """
    which = 0 if side < 0 else 1
    lung = ctx.anatomy.lungs[which]
    lung_mask = ctx.lung_mask(which)
    apical = rng.random() < 0.5
    lo, hi = lung[:, 1].max(), lung[:, 1].min()
    if apical:
        anchor = np.array([lung[:, 0].mean(), lo - 0.1 * (lo - hi)])
    else:
        medial_x = lung[:, 0].max() if side < 0 else lung[:, 0].min()
        anchor = np.array([medial_x, lung[:, 1].mean() + 0.1 * (lo - hi)])
    u, v = ctx.layers.u, ctx.layers.v
    keep = (v < -0.15) & (side * u > 0.12) if apical else (side * u > 0.42) & (v < 0.3)
    far = float(np.linalg.norm(lung - anchor, axis=1).max())
    target = ctx.min_thickness_px * rng.uniform(1.25, 2.2)
    for _ in range(5):
        factor = max(0.3, 1.0 - 1.4 * target / far)
        collapsed = scale_about(lung, anchor, factor, factor)
        region = (
            lung_mask & (1 - rasterize_polygons([collapsed.tolist()], ctx.size, ctx.size)) & keep
        )
        poly = _region_polygon(region.astype(np.uint8), ctx.min_thickness_px)
        if poly is not None:
            return [poly], collapsed
        target *= 1.3
    lung = "image left" if side < 0 else "image right"
    message = f"no pneumothorax {ctx.min_thickness_px:.2f} px thick fits in the {lung} lung"
    raise FindingDoesNotFitError(message)


def sample_effusion(ctx: FindingContext, rng: np.random.Generator, n_max: int) -> list[np.ndarray]:
    """Pleural effusions: basal fluid with a meniscus rising towards the lateral wall."""
    u, v = ctx.layers.u, ctx.layers.v
    sides = [int(rng.choice((-1, 1)))]
    if n_max > 1 and rng.random() < 0.35:
        sides.append(-sides[0])
    polys = []
    for side in sorted(sides):
        which = 0 if side < 0 else 1
        lateral = np.clip((side * u - 0.1) / 0.75, 0.0, 1.0)
        dome = ctx.anatomy.dome_level[which]
        depth = rng.uniform(0.05, 0.3)
        rise = rng.uniform(0.1, 0.25)
        for _ in range(4):
            boundary = dome - depth - rise * lateral**2
            region = ctx.lung_mask(which) & (v > boundary) & (side * u > 0)
            poly = _region_polygon(region.astype(np.uint8), ctx.min_thickness_px)
            if poly is not None:
                polys.append(poly)
                break
            depth *= 1.4
    return polys


def sample_nodules(ctx: FindingContext, rng: np.random.Generator, n_max: int) -> list[np.ndarray]:
    """Lung lesions: one or several small round opacities well inside the lungs."""
    n = int(rng.integers(1, n_max + 1))
    lungs = ctx.open_lung()
    polys: list[np.ndarray] = []
    centres: list[tuple[np.ndarray, float]] = []
    for _ in range(n):
        radius = 0.5 * ctx.min_thickness_px * rng.uniform(_NODULE_MIN_FACTOR, 2.4)
        for cand in _interior_points(lungs, radius * 1.3 + 2, rng, 8):
            if all(np.linalg.norm(cand - c) > radius + r + 3 for c, r in centres):
                centres.append((cand, radius))
                polys.append(blob(cand, radius, rng, irregularity=0.08, n_points=24))
                break
    if not polys:  # no drawn size fitted (a small lung): once more at the range's smallest
        radius = 0.5 * ctx.min_thickness_px * _NODULE_MIN_FACTOR
        for cand in _interior_points(lungs, radius * 1.3 + 2, rng, 1):
            polys.append(blob(cand, radius, rng, irregularity=0.08, n_points=24))
    return polys


def sample_opacity(ctx: FindingContext, rng: np.random.Generator, n_max: int) -> list[np.ndarray]:
    """Airspace opacities: irregular patches clipped to the lung they lie in."""
    n = int(rng.integers(1, n_max + 1))
    polys = []
    for _ in range(n):
        which = int(rng.integers(0, 2))
        lung = ctx.open_lung(which)
        radius = ctx.min_thickness_px * rng.uniform(1.4, 3.2)
        found = _interior_points(lung, 0.5 * radius, rng, 1)
        if len(found) == 0:
            continue
        outline = blob(
            found[0], radius, rng, irregularity=0.45, n_points=32, aspect=rng.uniform(0.7, 1.3)
        )
        region = lung & rasterize_polygons([outline.tolist()], ctx.size, ctx.size)
        poly = _region_polygon(region, ctx.min_thickness_px)
        if poly is not None:
            polys.append(poly)
    return polys


def draw_pneumothorax(
    att: np.ndarray, mask: np.ndarray, collapsed: np.ndarray, layers: AnatomyLayers, strength: float
) -> None:
    """Darken the rim, remove its lung markings and draw the visceral pleural line (in place)."""
    size = att.shape[0]
    px = size / 256.0
    soft = soften(mask.astype(np.float32), 0.8 * px)
    att -= soft * (_PTX_LUCENCY * strength + 0.09 * layers.markings)
    near = soften(dilate(mask, max(1, round(1.5 * px))).astype(np.float32), 0.5 * px)
    att += _PTX_LINE * strength * stroke(collapsed, size, 1.3 * px, closed=True) * near


def draw_effusion(
    att: np.ndarray, mask: np.ndarray, layers: AnatomyLayers, strength: float
) -> None:
    """Basal opacity, denser towards the bottom (in place)."""
    px = att.shape[0] / 256.0
    soft = soften(mask.astype(np.float32), 1.5 * px)
    rows = np.nonzero(mask.any(axis=1))[0]
    if rows.size:
        depth = np.clip(
            (np.arange(att.shape[0]) - rows.min()) / max(1, rows.max() - rows.min()), 0, 1
        )[:, None]
    else:
        depth = np.zeros((att.shape[0], 1))
    att += (
        _EFFUSION * strength * soft * (0.7 + 0.3 * depth).astype(np.float32)
        - 0.5 * soft * 0.09 * layers.markings
    )


def draw_nodules(att: np.ndarray, mask: np.ndarray, strength: float) -> None:
    """Round soft-edged opacities (in place)."""
    px = att.shape[0] / 256.0
    att += _NODULE * strength * soften(mask.astype(np.float32), 1.2 * px)


def draw_opacity(
    att: np.ndarray, mask: np.ndarray, rng: np.random.Generator, strength: float
) -> None:
    """Patchy, mottled airspace opacity (in place)."""
    size = att.shape[0]
    texture = np.clip(0.7 + 0.3 * smooth_field(rng, size, max(8, size // 12)), 0.2, 1.2)
    att += _OPACITY * strength * soften(mask.astype(np.float32), 2.5 * size / 256.0) * texture


def draw_cardiomegaly(att: np.ndarray, mask: np.ndarray, strength: float) -> None:
    """The enlarged heart is part of the anatomy; add a little extra density (in place)."""
    att += 0.02 * strength * soften(mask.astype(np.float32), att.shape[0] / 256.0)
