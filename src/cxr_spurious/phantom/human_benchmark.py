"""A simulated second reader ("human benchmark") in CheXlocalize's ``hb_*`` formats.

The reader's outline of an instance is the true outline moved along its normals by a
smooth random amount plus a small shift; a small instance is sometimes missed when the
task has another one. Salient points sit near the deepest interior point of each
instance the reader saw.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxr_spurious.io.masks import rasterize_polygons
from cxr_spurious.phantom.config import HumanBenchmarkConfig
from cxr_spurious.phantom.geometry import polygon_area, vertex_normals

Polygons = dict[str, list[list[list[float]]]]


def perturb_outline(
    points: np.ndarray, rng: np.random.Generator, amplitude_px: float, shift_px: float, size: int
) -> np.ndarray:
    """Move each vertex along its normal by a smooth random offset, then shift the outline.

    Args:
        points: (n, 2) closed outline in pixels.
        rng: Random generator.
        amplitude_px: Largest normal displacement.
        shift_px: Largest translation.
        size: Image size (the result is clipped to the image).

    Returns:
        The perturbed (n, 2) outline.
    """
    pts = np.asarray(points, dtype=np.float64)
    seg = np.linalg.norm(np.diff(np.vstack([pts, pts[:1]]), axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)[:-1]]) / max(seg.sum(), 1e-9)
    offset = np.zeros(len(pts))
    for k in (1, 2, 3, 5):
        offset += rng.uniform(-1, 1) / k * np.cos(2 * np.pi * k * s + rng.uniform(0, 2 * np.pi))
    offset *= amplitude_px / max(1e-9, np.abs(offset).max())
    moved = pts + vertex_normals(pts) * offset[:, None] + rng.uniform(-shift_px, shift_px, 2)
    return np.clip(moved, 0.0, size - 1.0)


def salient_point(
    outline: list[list[float]], rng: np.random.Generator, jitter_px: float, size: int
) -> list[float]:
    """The most representative point of an instance: its deepest interior pixel, jittered
    but kept inside the instance."""
    mask = rasterize_polygons([outline], size, size)
    dist = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    for _ in range(10):
        px, py = x + rng.uniform(-jitter_px, jitter_px), y + rng.uniform(-jitter_px, jitter_px)
        if 0 <= px < size and 0 <= py < size and mask[int(py), int(px)]:
            return [round(float(px), 2), round(float(py), 2)]
    return [float(x), float(y)]


def read_image(
    polygons: Polygons, rng: np.random.Generator, cfg: HumanBenchmarkConfig, size: int
) -> tuple[Polygons, dict[str, list[list[float]]]]:
    """Simulate the second reader on one image.

    Args:
        polygons: True ``{task: [outline, ...]}`` of the image.
        rng: The image's reader stream.
        cfg: Reader settings.
        size: Image size in pixels.

    Returns:
        (reader outlines, salient points), both keyed by task (only tasks with outlines).
    """
    outlines: Polygons = {}
    points: dict[str, list[list[float]]] = {}
    amplitude = cfg.boundary_jitter * size
    shift = cfg.shift * size
    for task, instances in polygons.items():
        areas = [polygon_area(np.asarray(o)) for o in instances]
        missed = [
            len(instances) > 1 and a < cfg.small_area * size * size and rng.random() < cfg.p_miss
            for a in areas
        ]
        if all(missed):
            missed[int(np.argmax(areas))] = False  # the reader always sees the largest one
        kept = []
        for outline, miss in zip(instances, missed):
            if miss:
                continue
            moved = perturb_outline(np.asarray(outline), rng, amplitude, shift, size)
            kept.append([[round(float(x), 3), round(float(y), 3)] for x, y in moved])
        outlines[task] = kept
        points[task] = [salient_point(o, rng, cfg.point_jitter * size, size) for o in kept]
    return outlines, points
