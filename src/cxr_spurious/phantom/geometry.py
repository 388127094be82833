"""Geometry and drawing primitives of the phantom: frames, splines, polygons, soft masks.

Shapes are designed in a normalised chest frame (``u`` left-right, ``v`` top-bottom, the
thorax spanning about u in [-0.9, 0.9]) and mapped to pixels by a ``Frame`` that carries
the image's scale, position and rotation. Drawing uses OpenCV on uint8 canvases with
anti-aliasing and 1/16-pixel vertex precision; layers are float32 in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

_SHIFT = 4  # OpenCV fractional bits: vertices at 1/16 px


@dataclass(frozen=True)
class Frame:
    """Affine map from the normalised chest frame to pixel coordinates.

    Attributes:
        cx: Centre column (px).
        cy: Centre row (px).
        scale: Pixels per normalised unit (horizontal).
        aspect: Vertical / horizontal scale ratio.
        angle: Rotation in radians (positive = clockwise on screen).
    """

    cx: float
    cy: float
    scale: float
    aspect: float
    angle: float

    def to_px(self, points: np.ndarray) -> np.ndarray:
        """Map (n, 2) normalised (u, v) points to (n, 2) pixel (x, y) points."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        u = pts[:, 0] * self.scale
        v = pts[:, 1] * self.scale * self.aspect
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.stack([self.cx + c * u - s * v, self.cy + s * u + c * v], axis=1)

    def grid(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised (u, v) coordinates of every pixel centre, each (size, size) float32."""
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        dx, dy = xs - self.cx, ys - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (c * dx + s * dy) / self.scale
        v = (-s * dx + c * dy) / (self.scale * self.aspect)
        return u.astype(np.float32), v.astype(np.float32)

    def length(self, normalised: float) -> float:
        """A normalised length in pixels (horizontal scale)."""
        return float(normalised * self.scale)


def catmull_rom(ctrl: np.ndarray, n_per_segment: int = 8, *, closed: bool = True) -> np.ndarray:
    """Sample a Catmull-Rom spline through control points.

    Args:
        ctrl: (k, 2) control points, or (b, k, 2) for a batch of curves.
        n_per_segment: Samples per segment.
        closed: Whether the curve closes on itself.

    Returns:
        (m, 2) points on the curve (the closing point is not repeated), or (b, m, 2).
    """
    pts = np.asarray(ctrl, dtype=np.float64)
    batch = pts if pts.ndim == 3 else pts[None]
    if closed:
        padded = np.concatenate([batch[:, -1:], batch, batch[:, :2]], axis=1)
        n_seg = batch.shape[1]
    else:
        padded = np.concatenate(
            [2 * batch[:, :1] - batch[:, 1:2], batch, 2 * batch[:, -1:] - batch[:, -2:-1]], axis=1
        )
        n_seg = batch.shape[1] - 1
    p0, p1, p2, p3 = (padded[:, k : k + n_seg, None, :] for k in range(4))
    t = np.linspace(0.0, 1.0, n_per_segment, endpoint=False)[None, None, :, None]
    curve = 0.5 * (
        (2 * p1)
        + (-p0 + p2) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
    )
    curve = curve.reshape(batch.shape[0], -1, 2)
    if not closed:
        curve = np.concatenate([curve, batch[:, -1:]], axis=1)
    return curve if pts.ndim == 3 else curve[0]


def blob(
    center: np.ndarray,
    radius: float,
    rng: np.random.Generator,
    *,
    irregularity: float = 0.15,
    n_points: int = 28,
    aspect: float = 1.0,
) -> np.ndarray:
    """A smooth irregular closed outline around ``center`` (in whatever units it is given).

    Args:
        center: (2,) centre.
        radius: Mean radius.
        rng: Random generator (harmonic amplitudes and phases).
        irregularity: Relative amplitude of the low-order harmonics of the radius.
        n_points: Number of vertices.
        aspect: Vertical / horizontal stretch.

    Returns:
        (n_points, 2) outline.
    """
    theta = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 4):
        r += (
            irregularity
            / (k - 1)
            * rng.uniform(-1, 1)
            * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        )
    r = np.clip(r, 0.55, 1.6) * radius
    return np.stack([center[0] + r * np.cos(theta), center[1] + aspect * r * np.sin(theta)], axis=1)


def scale_about(points: np.ndarray, anchor: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """Scale points about ``anchor`` by (fx, fy)."""
    pts = np.asarray(points, dtype=np.float64)
    return anchor + (pts - anchor) * np.array([fx, fy])


def _int_pts(points_px: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points_px) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def fill(polygons_px: list[np.ndarray], size: int) -> np.ndarray:
    """Anti-aliased fill of pixel polygons as a float32 (size, size) layer in [0, 1]."""
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [_int_pts(p) for p in polygons_px], 255, cv2.LINE_AA, shift=_SHIFT)
    return canvas.astype(np.float32) / 255.0


def stroke(
    polyline_px: np.ndarray, size: int, width_px: float, *, closed: bool = False
) -> np.ndarray:
    """Anti-aliased stroke of a pixel polyline as a float32 layer in [0, 1]."""
    canvas = np.zeros((size, size), np.uint8)
    stroke_into(canvas, polyline_px, width_px, closed=closed)
    return canvas.astype(np.float32) / 255.0


def stroke_into(
    canvas: np.ndarray,
    polyline_px: np.ndarray,
    width_px: float,
    value: float = 1.0,
    *,
    closed: bool = False,
) -> None:
    """Draw an anti-aliased polyline into a uint8 canvas (``value`` in [0, 1]), in place."""
    colour = int(round(255 * min(1.0, max(0.0, value))))
    cv2.polylines(
        canvas,
        [_int_pts(polyline_px)],
        closed,
        colour,
        max(1, int(round(width_px))),
        cv2.LINE_AA,
        shift=_SHIFT,
    )


def soften(layer: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur (no-op below 0.3 px)."""
    if sigma_px < 0.3:
        return layer
    return cv2.GaussianBlur(layer, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary dilation with a disc of the given radius (uint8 0/1 in and out)."""
    if radius_px <= 0:
        return mask.astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    return cv2.dilate(mask.astype(np.uint8), k)


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field (bicubic upsampling of a coarse Gaussian grid), float32, sd ~1."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def largest_contour(mask: np.ndarray, min_area_px: float = 4.0) -> np.ndarray | None:
    """Outline (n, 2) pixel polygon of the largest connected region of a binary mask.

    Vertices are pixel centres on the region's border, so the filled polygon (outline
    included) reproduces the region. Returns ``None`` when the region is smaller than
    ``min_area_px`` or the mask is empty.
    """
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return None
    best = max(contours, key=cv2.contourArea)
    if cv2.contourArea(best) < min_area_px or len(best) < 3:
        return None
    return best.reshape(-1, 2).astype(np.float64)


def polygon_area(points: np.ndarray) -> float:
    """Absolute shoelace area of a polygon (n, 2)."""
    x, y = np.asarray(points, dtype=np.float64).T
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def vertex_normals(points: np.ndarray) -> np.ndarray:
    """Unit normals (n, 2) of a closed polygon's vertices (pointing outward for CCW-in-image)."""
    pts = np.asarray(points, dtype=np.float64)
    tangent = np.roll(pts, -1, axis=0) - np.roll(pts, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    norm = np.linalg.norm(normal, axis=1, keepdims=True)
    normal = normal / np.where(norm > 0, norm, 1.0)
    # orient outward: the signed area decides
    x, y = pts.T
    signed = np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))
    return normal if signed > 0 else -normal
