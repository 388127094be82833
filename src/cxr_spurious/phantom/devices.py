"""Spurious objects: chest tube, laterality marker, support devices (ECG leads, a line).

Each ``draw_*`` function adds the object's radiopacity to the attenuation map in place and
returns its binary mask (uint8, the object's footprint plus a one-pixel margin): the
outline an annotator would trace, not every pixel the object changes. The exposure blurs
the image after the objects are drawn (``render``), so their visible signal reaches past
the margin at larger sizes: at 256 px, 12 % of the pixels a chest tube changes lie outside
its mask (at most 10 grey levels, within 3 px), 30 % for support devices (within 5 px) and
8 % for the marker (within 2 px); at 96 px the tube's mask holds all but 2 of 2,710
(measured against the counterfactual renders without them, 2026-12-07). The artefacts'
masks (``artefacts``) are the other kind: every changed pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxr_spurious.errors import ParameterError
from cxr_spurious.phantom.geometry import Frame, catmull_rom, dilate, soften, stroke


def tube_path(frame: Frame, rng: np.random.Generator, side: int) -> np.ndarray:
    """Pixel polyline of a chest tube: from outside the body through the lateral chest
    wall, then up along the pleural space towards the apex.

    Args:
        frame: The image's chest frame.
        rng: The tube's stream.
        side: -1 image left, +1 image right.

    Returns:
        (n, 2) pixel points from the outer end to the tip.
    """
    entry_v = rng.uniform(0.05, 0.35)
    ctrl = np.array(
        [
            (1.6, entry_v + rng.uniform(0.0, 0.3)),
            (1.0, entry_v + 0.05),
            (0.84, entry_v - 0.05),
            (rng.uniform(0.62, 0.72), rng.uniform(-0.25, -0.1)),
            (rng.uniform(0.45, 0.58), rng.uniform(-0.6, -0.5)),
            (rng.uniform(0.3, 0.42), rng.uniform(-0.8, -0.68)),
        ]
    )
    ctrl[:, 0] *= side
    return frame.to_px(catmull_rom(ctrl, 10, closed=False))


def draw_tube(
    att: np.ndarray, path: np.ndarray, width_px: float, contrast: float, rng: np.random.Generator
) -> np.ndarray:
    """Radiopaque tube with a lucent lumen and side holes near the tip (in place).

    Returns:
        The tube's mask.
    """
    size = att.shape[0]
    px = size / 256.0
    band = stroke(path, size, width_px)
    lumen = stroke(path, size, max(1.0, 0.35 * width_px))
    holes = np.zeros_like(band)
    n = len(path)
    for frac in np.sort(rng.uniform(0.72, 0.95, int(rng.integers(2, 4)))):
        x, y = path[min(n - 1, int(frac * n))]
        cv2.circle(holes, (round(x), round(y)), max(1, round(0.45 * width_px)), 1.0, -1)
    att += contrast * soften(band * (1.0 - 0.35 * lumen) * (1.0 - 0.8 * holes), 0.4 * px)
    return dilate(stroke(path, size, width_px) > 0, max(1, round(px)))


def draw_marker(
    att: np.ndarray, text: str, corner: str, rng: np.random.Generator, *, key: str = "marker"
) -> np.ndarray:
    """A lead laterality marker / text token in a corner (in place).

    Args:
        att: Attenuation map (changed in place).
        text: Marker text.
        corner: Corner it is drawn in (``top_left``, ...).
        rng: The marker's stream.
        key: Parameter that set ``text``, named when it draws nothing.

    Returns:
        The marker's mask (its bounding box with a small margin).

    Raises:
        ParameterError: ``text`` draws no pixel (e.g. only spaces).
    """
    size = att.shape[0]
    height = 0.055 * size
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 2)
    scale = height / th
    thick = max(1, round(size / 110))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    margin = int(rng.uniform(0.03, 0.06) * size)
    x = margin if corner.endswith("left") else size - margin - tw
    y = margin + th if corner.startswith("top") else size - margin - base
    canvas = np.zeros((size, size), np.uint8)
    cv2.putText(canvas, text, (x, y), font, scale, 255, thick, cv2.LINE_AA)
    if not canvas.any():
        raise ParameterError(key, f"marker text {text!r} draws no pixel; use a visible character")
    ink = canvas.astype(np.float32) / 255.0
    np.maximum(att, ink * 1.1 + (1 - ink) * att, out=att)
    mask = np.zeros((size, size), np.uint8)
    ys, xs = np.nonzero(canvas)
    pad = max(1, round(size / 128))
    mask[
        max(0, ys.min() - pad) : ys.max() + pad + 1, max(0, xs.min() - pad) : xs.max() + pad + 1
    ] = 1
    return mask


def draw_support_devices(att: np.ndarray, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """ECG electrodes with their leads, and (sometimes) a central venous line (in place).

    Returns:
        The devices' mask.
    """
    size = att.shape[0]
    px = size / 256.0
    layer = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        centre = np.array([rng.uniform(-0.85, 0.85), rng.uniform(-0.95, -0.45)])
        ring = catmull_rom(
            np.array(
                [
                    centre + 0.04 * np.array([np.cos(t), np.sin(t)])
                    for t in np.linspace(0, 2 * np.pi, 8, endpoint=False)
                ]
            ),
            4,
        )
        layer = np.maximum(layer, stroke(frame.to_px(ring), size, 1.8 * px, closed=True))
        cv2.circle(
            layer,
            tuple(int(round(c)) for c in frame.to_px(centre)[0]),
            max(1, round(1.5 * px)),
            1.0,
            -1,
        )
        exit_pt = np.array([np.sign(centre[0]) * 1.7, rng.uniform(-1.6, 1.0)])
        mid = (centre + exit_pt) / 2 + rng.normal(0, 0.2, 2)
        wire = catmull_rom(np.array([centre, mid, exit_pt]), 12, closed=False)
        layer = np.maximum(layer, 0.6 * stroke(frame.to_px(wire), size, 1.2 * px))
    if rng.random() < 0.5:
        s = float(rng.choice((-1, 1)))
        line = catmull_rom(
            np.array(
                [
                    (s * 1.4, -1.05),
                    (s * 0.7, -0.93),
                    (s * 0.3, -0.84),
                    (s * 0.06, -0.55),
                    (s * 0.03, rng.uniform(-0.35, -0.2)),
                ]
            ),
            10,
            closed=False,
        )
        layer = np.maximum(layer, 0.7 * stroke(frame.to_px(line), size, 1.8 * px))
    att += 0.45 * soften(layer, 0.4 * px)
    return dilate(layer > 0.05, max(1, round(px)))
