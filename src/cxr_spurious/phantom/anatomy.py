"""Normal chest anatomy of a frontal radiograph, as an attenuation map.

Body outline and arms, two lung fields with vessel markings, heart and mediastinum,
trachea, spine, posterior ribs, clavicles, diaphragm domes with the abdomen below and a
gastric bubble, breast shadows for female patients. Patient-level shape parameters come
from a patient stream (the same patient looks alike across studies); pose, inspiration and
texture from the image's own streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cxr_spurious.phantom.geometry import (
    Frame,
    catmull_rom,
    fill,
    scale_about,
    smooth_field,
    soften,
    stroke,
)

# Image-left lung (the patient's right lung), normalised frame, clockwise from the apex.
_RIGHT_LUNG = np.array(
    [
        (-0.30, -0.86),
        (-0.48, -0.76),
        (-0.64, -0.52),
        (-0.74, -0.16),
        (-0.80, 0.20),
        (-0.83, 0.48),
        (-0.82, 0.62),
        (-0.68, 0.50),
        (-0.46, 0.37),
        (-0.26, 0.35),
        (-0.13, 0.42),
        (-0.11, 0.15),
        (-0.10, -0.20),
        (-0.13, -0.56),
        (-0.20, -0.80),
    ]
)
_HEART = np.array(
    [
        (-0.02, -0.20),
        (-0.15, -0.10),
        (-0.21, 0.06),
        (-0.20, 0.26),
        (-0.11, 0.41),
        (0.08, 0.47),
        (0.30, 0.45),
        (0.43, 0.34),
        (0.44, 0.16),
        (0.33, -0.01),
        (0.16, -0.13),
    ]
)
_HEART_ANCHOR = np.array([0.10, 0.22])
_MEDIASTINUM = np.array(
    [
        (-0.12, -1.6),
        (0.12, -1.6),
        (0.12, -0.70),
        (0.21, -0.50),
        (0.18, -0.33),
        (0.12, -0.14),
        (-0.12, -0.14),
        (-0.15, -0.45),
        (-0.12, -0.95),
    ]
)
_BODY_HALF = [
    (-0.20, -1.6),
    (-0.24, -1.06),
    (-0.52, -0.98),
    (-0.86, -0.94),
    (-1.04, -0.82),
    (-1.01, -0.48),
    (-0.96, -0.05),
    (-0.95, 0.45),
    (-0.93, 0.95),
    (-0.90, 1.6),
]
_ARM_HALF = [(-1.6, -1.0), (-1.12, -0.92), (-1.09, -0.55), (-1.12, 0.2), (-1.16, 1.6), (-1.6, 1.6)]


@dataclass(frozen=True)
class Anatomy:
    """Pixel-space shapes of one image's normal anatomy.

    Attributes:
        frame: Normalised-to-pixel map.
        lungs: (right, left) lung outlines (image left, image right), pixel polygons.
        heart: Heart outline (pixel polygon); enlarged when cardiomegaly is drawn.
        hila: (2, 2) hilum points (px).
        dome_level: Normalised v of the diaphragm dome tops (right, left).
        female: Draw breast shadows.
    """

    frame: Frame
    lungs: tuple[np.ndarray, np.ndarray]
    heart: np.ndarray
    hila: np.ndarray
    dome_level: tuple[float, float]
    female: bool


@dataclass(frozen=True)
class AnatomyLayers:
    """Rendered anatomy: the attenuation map and the layers pathologies need."""

    attenuation: np.ndarray
    lung_soft: np.ndarray
    markings: np.ndarray
    u: np.ndarray
    v: np.ndarray


def _mirror(points: np.ndarray) -> np.ndarray:
    return np.asarray(points) * np.array([-1.0, 1.0])


def _lung_shape(base: np.ndarray, width: float, height: float, dome_shift: float) -> np.ndarray:
    pts = base.copy()
    pts[:, 0] *= width
    pts[:, 1] = np.where(pts[:, 1] > 0.25, pts[:, 1] + dome_shift, pts[:, 1]) * height
    return pts


def heart_outline(width: float, enlargement: float) -> np.ndarray:
    """Normalised heart control points; ``enlargement`` > 1 widens it (cardiomegaly)."""
    normal = scale_about(_HEART, _HEART_ANCHOR, width, 1.0)
    return scale_about(normal, _HEART_ANCHOR, enlargement, 1.0 + 0.35 * (enlargement - 1.0))


def sample_anatomy(
    patient_rng: np.random.Generator,
    image_rng: np.random.Generator,
    size: int,
    *,
    body_scale: tuple[float, float],
    shift: float,
    rotation_deg: float,
    ap_view: bool,
    female: bool,
    heart_enlargement: float,
) -> Anatomy:
    """Draw one image's anatomy: patient shape plus per-image pose and inspiration.

    Args:
        patient_rng: Patient stream (lung proportions, heart size).
        image_rng: Image stream (pose, inspiration).
        size: Image size in pixels.
        body_scale: Range of the thorax half-width as a fraction of the half image size.
        shift: Largest centre shift as a fraction of the image size.
        rotation_deg: Largest rotation.
        ap_view: AP views magnify the heart a little.
        female: Draw breast shadows.
        heart_enlargement: 1 for a normal heart, > 1 for cardiomegaly.

    Returns:
        The anatomy in pixel coordinates.
    """
    lung_w = patient_rng.uniform(0.93, 1.05)
    lung_h = patient_rng.uniform(0.94, 1.06)
    heart_w = patient_rng.uniform(1.0, 1.15) * (1.06 if ap_view else 1.0)
    aspect = patient_rng.uniform(0.95, 1.08)
    scale = 0.5 * size * image_rng.uniform(*body_scale)
    frame = Frame(
        cx=size / 2 + image_rng.uniform(-shift, shift) * size,
        cy=size / 2 + image_rng.uniform(-shift, shift) * size + 0.02 * size,
        scale=scale,
        aspect=aspect,
        angle=math.radians(image_rng.uniform(-rotation_deg, rotation_deg)),
    )
    inspiration = image_rng.uniform(-0.06, 0.06)
    right = _lung_shape(_RIGHT_LUNG, lung_w, lung_h, inspiration)
    left = _lung_shape(_mirror(_RIGHT_LUNG), lung_w, lung_h, inspiration + 0.05)
    heart = heart_outline(heart_w, heart_enlargement)
    heart[:, 1] += inspiration * 0.6
    hila = np.array([(-0.2, -0.08), (0.22, -0.1)])
    return Anatomy(
        frame=frame,
        lungs=(frame.to_px(catmull_rom(right, 8)), frame.to_px(catmull_rom(left, 8))),
        heart=frame.to_px(catmull_rom(heart, 8)),
        hila=frame.to_px(hila),
        dome_level=(float(0.35 * lung_h + inspiration), float(0.40 * lung_h + inspiration)),
        female=female,
    )


def _vessels(anat: Anatomy, rng: np.random.Generator, size: int) -> np.ndarray:
    """Vessel markings radiating from the hila, thinner and fainter outwards (float32 layer)."""
    n_vessels, n_steps = 18, 5
    canvas = np.zeros((size, size), np.uint8)
    px = size / 256.0
    levels: list[list[np.ndarray]] = [[] for _ in range(n_steps)]
    for side, hilum in zip((-1, 1), anat.hila):
        angle = rng.uniform(
            -0.55 * np.pi, 0.6 * np.pi, n_vessels
        )  # 0 = lateral, +-pi/2 = down / up
        length = anat.frame.scale * rng.uniform(0.35, 0.75, n_vessels) / n_steps
        heading = angle[:, None] + np.cumsum(rng.normal(0, 0.25, (n_vessels, n_steps)), axis=1)
        steps = np.stack([side * np.cos(heading), np.sin(heading)], axis=2) * length[:, None, None]
        points = np.asarray(hilum)[None, None, :] + np.concatenate(
            [np.zeros((n_vessels, 1, 2)), np.cumsum(steps, axis=1)], axis=1
        )
        for k in range(n_steps):
            levels[k].extend(points[:, k : k + 2])
    for k in range(n_steps):
        segments = [np.round(seg * 16).astype(np.int32).reshape(-1, 1, 2) for seg in levels[k]]
        width = max(1, round((3.2 - 0.55 * k) * px))
        cv2.polylines(
            canvas, segments, False, int(255 * (1.0 - 0.15 * k)), width, cv2.LINE_AA, shift=4
        )
    return soften(canvas.astype(np.float32) / 255.0, 0.5 * px)


def _ribs(frame: Frame, rng: np.random.Generator, size: int) -> np.ndarray:
    """Posterior ribs (bands with brighter cortical edges) and anterior rib shadows."""
    spacing = rng.uniform(0.13, 0.15)
    v0 = -0.92 + spacing * np.arange(10)[:, None]
    rib = np.stack(
        [
            np.broadcast_to(np.array([0.07, 0.25, 0.5, 0.72, 0.88]), (10, 5)),
            v0 + np.array([0.0, -0.07, -0.04, 0.08, 0.3]),
        ],
        axis=2,
    )
    ctrl = np.concatenate([rib * np.array([-1.0, 1.0]), rib])
    curves = catmull_rom(ctrl, 6, closed=False)
    posterior = list(frame.to_px(curves.reshape(-1, 2)).reshape(curves.shape))
    t = np.linspace(0.0, 1.0, 16)[:, None]
    anterior = []
    for side in (-1, 1):
        for k in range(5):
            start, end = (
                np.array([side * 0.88, -0.7 + k * 0.17]),
                np.array([side * 0.32, -0.44 + k * 0.17]),
            )
            anterior.append(
                frame.to_px(start + t * (end - start) + np.array([0.0, -0.05]) * np.sin(np.pi * t))
            )
    bands = np.zeros((size, size), np.uint8)
    cores = np.zeros((size, size), np.uint8)
    front = np.zeros((size, size), np.uint8)
    width = frame.length(0.055)
    for canvas, lines, w in (
        (bands, posterior, width),
        (cores, posterior, max(1.0, 0.45 * width)),
        (front, anterior, frame.length(0.045)),
    ):
        cv2.polylines(
            canvas,
            [np.round(line * 16).astype(np.int32).reshape(-1, 1, 2) for line in lines],
            False,
            255,
            max(1, round(w)),
            cv2.LINE_AA,
            shift=4,
        )
    layer = (0.8 * bands.astype(np.float32) - 0.35 * cores + 0.3 * front) / 255.0
    return soften(layer, size / 256.0)


def _spine(frame: Frame, size: int) -> np.ndarray:
    """Vertebral column with endplates and pedicles."""
    body = fill(
        [frame.to_px(np.array([(-0.065, -1.6), (0.065, -1.6), (0.065, 1.6), (-0.065, 1.6)]))], size
    )
    plates = np.zeros((size, size), np.uint8)
    levels = np.arange(-1.5, 1.6, 0.135)
    ends = frame.to_px(
        np.stack(
            [
                np.stack([np.full_like(levels, -0.06), levels], 1),
                np.stack([np.full_like(levels, 0.06), levels], 1),
            ],
            1,
        ).reshape(-1, 2)
    )
    cv2.polylines(
        plates,
        list(np.round(ends * 16).astype(np.int32).reshape(-1, 2, 1, 2)),
        False,
        255,
        max(1, round(frame.length(0.016))),
        cv2.LINE_AA,
        shift=4,
    )
    pedicles = frame.to_px(
        np.concatenate(
            [np.stack([np.full_like(levels, s * 0.045), levels + 0.06], 1) for s in (-1, 1)]
        )
    )
    r = max(1, round(frame.length(0.016)))
    for x, y in pedicles:
        cv2.ellipse(plates, (round(x), round(y)), (r, r + 1), 0, 0, 360, 150, 1, cv2.LINE_AA)
    return soften(body - 0.35 * plates.astype(np.float32) / 255.0, size / 256.0)


def draw_anatomy(anat: Anatomy, rng: np.random.Generator, size: int) -> AnatomyLayers:
    """Render the anatomy as attenuation (bright = dense), before any pathology.

    Args:
        anat: Shapes from ``sample_anatomy``.
        rng: Texture stream (vessels, rib spacing, mottle).
        size: Image size in pixels.

    Returns:
        The attenuation map and the lung / marking layers that pathologies modify.
    """
    f = anat.frame
    px = size / 256.0
    u, v = f.grid(size)
    body_poly = np.vstack([_BODY_HALF, _mirror(_BODY_HALF)[::-1]])
    body = soften(fill([f.to_px(catmull_rom(body_poly, 6))], size), 2.0 * px)
    thickness = np.sqrt(np.clip(1.0 - (u / 1.05) ** 2, 0.0, 1.0))
    arms = soften(fill([f.to_px(np.array(_ARM_HALF)), f.to_px(_mirror(_ARM_HALF))], size), 2.0 * px)
    humeri = fill(
        [
            f.to_px(
                catmull_rom(
                    np.array(
                        [
                            (s * 1.16 + 0.15 * math.cos(t), -0.84 + 0.15 * math.sin(t))
                            for t in np.linspace(0, 2 * np.pi, 12, endpoint=False)
                        ]
                    ),
                    4,
                )
            )
            for s in (-1, 1)
        ],
        size,
    )
    lungs = fill(list(anat.lungs), size)
    lung_soft = soften(lungs, 2.5 * px)
    heart = fill([anat.heart], size)
    mediastinum = fill([f.to_px(catmull_rom(_MEDIASTINUM, 6))], size)
    central = soften(np.maximum(heart, mediastinum), 1.5 * px)
    trachea = soften(
        fill(
            [f.to_px(np.array([(-0.035, -1.6), (0.035, -1.6), (0.035, -0.42), (-0.035, -0.42)]))],
            size,
        )
        + stroke(
            f.to_px(np.array([(-0.13, -0.27), (0.0, -0.42), (0.14, -0.25)])), size, f.length(0.045)
        ),
        1.2 * px,
    )
    clavicles = sum(
        stroke(
            f.to_px(
                catmull_rom(
                    np.array(
                        [(s * 0.09, -0.86), (s * 0.32, -0.9), (s * 0.56, -0.96), (s * 0.82, -0.99)]
                    ),
                    6,
                    closed=False,
                )
            ),
            size,
            f.length(0.07),
        )
        for s in (-1, 1)
    )
    dome = np.where(u < 0, anat.dome_level[0], anat.dome_level[1]) + 0.25 * u**2
    abdomen = (1.0 / (1.0 + np.exp(-(v - dome - 0.08) / 0.04))) * (1.0 - lung_soft)
    bubble = soften(
        fill(
            [
                f.to_px(
                    catmull_rom(
                        np.array(
                            [(0.22, 0.64), (0.38, 0.58), (0.52, 0.63), (0.4, 0.72), (0.25, 0.72)]
                        ),
                        5,
                    )
                )
            ],
            size,
        ),
        2 * px,
    )
    behind_heart = 1.0 - 0.7 * central
    markings = _vessels(anat, rng, size) * lung_soft * behind_heart
    mottle = smooth_field(rng, size, 12)
    att = (0.44 * thickness * body + 0.28 * arms + 0.1 * humeri) * (1.0 + 0.03 * mottle)
    att += 0.12 * abdomen * body - 0.1 * bubble * body
    if anat.female:
        breast = soften(
            ((u / 0.55) ** 2 + ((v - 0.62) / 0.35) ** 2 < 1.0).astype(np.float32)
            * (np.abs(u) > 0.25),
            5 * px,
        )
        att += 0.05 * breast * body
    att -= 0.29 * lung_soft
    att += 0.09 * markings + 0.015 * smooth_field(rng, size, 24) * lung_soft
    att += 0.2 * central + 0.1 * central * lung_soft
    att += 0.05 * _spine(f, size) - 0.07 * trachea
    att += 0.08 * _ribs(f, rng, size) * body * (1.0 - 0.5 * central) + 0.11 * clavicles
    return AnatomyLayers(
        attenuation=att.astype(np.float32), lung_soft=lung_soft, markings=markings, u=u, v=v
    )
