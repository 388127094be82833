"""Artefacts for the shortcut sweep: objects added to an image in a paired ``with_<kind>`` render.

A sweep phantom's original images carry no artefact; each image of the configured splits is
also rendered once WITH each artefact kind, from the same random streams, so that the pair
(original, ``with_<kind>``) differs only where the artefact is. A confounding level is then
a choice of render per image, and reliance is measured by swapping renders.

Every kind draws from its own sub-stream of the image (``ARTEFACT_STREAMS``, numbers after
the generator's existing ones, never renumbered) and returns its footprint; ``render.py``
grows the footprint by the image blur into the render's exact mask (every pixel where the
render may differ from the original).

Kinds:

* ``tube_random``: the chest tube of ``devices.tube_path`` on a random side;
* ``tube_lesion``: a chest tube through the pneumothorax region: the drawn one on positives,
  on negatives the region the image's pneumothorax stream would have drawn (same side, same
  path), so that its position says nothing about the label;
* ``marker_port``: a text marker ("PORT") in a corner of the image, outside the lung fields;
* ``faint_texture``: a low-contrast fine checker texture in one fixed disc of the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cxr_spurious.io.masks import rasterize_polygons
from cxr_spurious.phantom import devices, findings
from cxr_spurious.phantom.geometry import catmull_rom

if TYPE_CHECKING:
    from cxr_spurious.phantom.cohort import ImageRecord
    from cxr_spurious.phantom.config import PhantomConfig

# Sub-streams of the artefacts (appended after render.py's; never renumber).
ARTEFACT_STREAMS: dict[str, int] = {
    "tube_random": 40,
    "tube_lesion": 41,
    "marker_port": 42,
    "faint_texture": 43,
}
ARTEFACT_KINDS: tuple[str, ...] = tuple(ARTEFACT_STREAMS)
TUBE_KINDS: frozenset[str] = frozenset({"tube_random", "tube_lesion"})
RENDER_PREFIX = "with_"


def render_name(kind: str) -> str:
    """The render of an image with artefact ``kind``: ``with_<kind>``."""
    return f"{RENDER_PREFIX}{kind}"


@dataclass(frozen=True)
class ArtefactScene:
    """What an artefact may depend on.

    Attributes:
        cfg: Generator config (``tube`` look, ``artefacts`` settings).
        record: The image's record (``ptx_side``, labels).
        context: Anatomy, layers, size and lesion thickness of the image.
        task_rng: The stream a task's lesion is drawn from (a fresh generator per call).
    """

    cfg: PhantomConfig
    record: ImageRecord
    context: findings.FindingContext
    task_rng: Callable[[str], np.random.Generator]


def _tube(
    scene: ArtefactScene, att: np.ndarray, path: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    size = scene.context.size
    tube = scene.cfg.tube
    return devices.draw_tube(att, path, max(1.0, tube.width_frac * size), tube.contrast, rng)


def draw_tube_random(scene: ArtefactScene, att: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The generator's chest tube on a side drawn from the artefact's own stream."""
    side = int(rng.choice((-1, 1)))
    return _tube(scene, att, devices.tube_path(scene.context.anatomy.frame, rng, side), rng)


def pneumothorax_region(scene: ArtefactScene) -> np.ndarray:
    """Mask of the image's pneumothorax: drawn on positives, the would-be region on negatives.

    ``sample_pneumothorax`` with the image's own Pneumothorax stream and ``ptx_side`` gives
    the positive image's outline exactly, and on a negative image the outline it would have
    had (that stream is otherwise unused there).
    """
    ctx = scene.context
    polys, _ = findings.sample_pneumothorax(
        ctx, scene.task_rng("Pneumothorax"), scene.record.ptx_side
    )
    outlines = [[[round(float(x), 3), round(float(y), 3)] for x, y in p] for p in polys]
    return rasterize_polygons(outlines, ctx.size, ctx.size)


def lesion_tube_path(
    scene: ArtefactScene, region: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Pixel polyline of a tube entering through the lateral chest wall and passing through
    the deepest point of ``region`` (largest inscribed disc), then on towards the apex."""
    dist = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    layers = scene.context.layers
    u, v = float(layers.u[y, x]), float(layers.v[y, x])
    side = 1.0 if u >= 0 else -1.0
    ctrl = np.array(
        [
            (side * 1.6, v + rng.uniform(0.25, 0.5)),
            (side * 1.02, v + rng.uniform(0.12, 0.2)),
            ((side * 1.02 + u) / 2, v + rng.uniform(0.03, 0.08)),
            (u, v),
            (u - side * rng.uniform(0.08, 0.14), v - rng.uniform(0.12, 0.2)),
        ]
    )
    # Catmull-Rom passes through its control points: the tube crosses pixel (x, y).
    return scene.context.anatomy.frame.to_px(catmull_rom(ctrl, 10, closed=False))


def draw_tube_lesion(scene: ArtefactScene, att: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A chest tube through the pneumothorax region (or where it would be)."""
    region = pneumothorax_region(scene)
    return _tube(scene, att, lesion_tube_path(scene, region, rng), rng)


def draw_marker_port(scene: ArtefactScene, att: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The generator's text marker with the sweep's text and corner."""
    from cxr_spurious.phantom.config import PIPELINE_KEY  # config imports this module

    marker = scene.cfg.artefacts.marker_port
    key = f"{PIPELINE_KEY}.artefacts.marker_port.text"
    return devices.draw_marker(att, marker.text, marker.corner, rng, key=key)


def draw_faint_texture(
    scene: ArtefactScene, att: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A low-contrast checker texture (random phase) in one fixed disc, soft at its rim."""
    tex = scene.cfg.artefacts.faint_texture
    size = att.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    radius = tex.radius * size
    r = np.hypot(xs - tex.centre[0] * size, ys - tex.centre[1] * size)
    rim = np.clip((radius - r) / (0.3 * radius), 0.0, 1.0)
    window = rim * rim * (3.0 - 2.0 * rim)  # smoothstep: 0 outside the disc, 1 inside its core
    k = 2.0 * math.pi / (tex.period * size)
    phase = rng.uniform(0.0, 2.0 * math.pi, 2)
    pattern = np.sin(k * xs + phase[0]) * np.sin(k * ys + phase[1])
    att += (tex.contrast * window * pattern).astype(np.float32)
    return (r < radius).astype(np.uint8)


ArtefactDrawer = Callable[[ArtefactScene, np.ndarray, np.random.Generator], np.ndarray]

#: kind -> function that adds the artefact to the attenuation map in place and returns its
#: footprint (uint8 0/1).
ARTEFACTS: dict[str, ArtefactDrawer] = {
    "tube_random": draw_tube_random,
    "tube_lesion": draw_tube_lesion,
    "marker_port": draw_marker_port,
    "faint_texture": draw_faint_texture,
}
