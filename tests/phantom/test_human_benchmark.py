"""The simulated second reader."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cxr_spurious.io.masks import rasterize_polygons
from cxr_spurious.phantom.config import HumanBenchmarkConfig
from cxr_spurious.phantom.geometry import blob
from cxr_spurious.phantom.human_benchmark import perturb_outline, read_image


def _disc(cx: float, cy: float, r: float) -> list[list[float]]:
    return blob(np.array([cx, cy]), r, np.random.default_rng(0), irregularity=0.0).tolist()


def test_perturbed_outline_overlaps_but_differs() -> None:
    outline = np.asarray(_disc(50, 50, 20))
    moved = perturb_outline(outline, np.random.default_rng(1), amplitude_px=3, shift_px=2, size=100)
    a = rasterize_polygons([outline.tolist()], 100, 100)
    b = rasterize_polygons([moved.tolist()], 100, 100)
    iou = (a & b).sum() / (a | b).sum()
    assert 0.6 < iou < 1.0
    assert np.abs(moved - outline).max() <= 3 + 2 * np.sqrt(2) + 1e-9


def test_reader_misses_small_instances_but_never_all() -> None:
    polygons = {
        "Lung Lesion": [_disc(20, 20, 4), _disc(60, 60, 4), _disc(80, 20, 4)],
        "Cardiomegaly": [_disc(50, 70, 20)],
    }
    always_miss = HumanBenchmarkConfig(p_miss=1.0, small_area=0.01)
    outlines, points = read_image(polygons, np.random.default_rng(0), always_miss, 100)
    assert len(outlines["Lung Lesion"]) == 1  # two missed, the last one kept
    assert len(outlines["Cardiomegaly"]) == 1  # a single instance is never missed
    assert len(points["Lung Lesion"]) == 1
    never_miss = HumanBenchmarkConfig(p_miss=0.0)
    outlines, _ = read_image(polygons, np.random.default_rng(0), never_miss, 100)
    assert len(outlines["Lung Lesion"]) == 3


def test_salient_points_lie_inside_the_readers_outline() -> None:
    polygons = {"Pleural Effusion": [_disc(30, 70, 12)]}
    outlines, points = read_image(polygons, np.random.default_rng(3), HumanBenchmarkConfig(), 100)
    mask = rasterize_polygons(outlines["Pleural Effusion"], 100, 100)
    ((x, y),) = points["Pleural Effusion"]
    assert mask[int(y), int(x)] == 1
    assert np.hypot(x - 30, y - 70) < 6


def test_zero_jitter_and_shift_reproduce_the_true_outline() -> None:
    outline = _disc(128, 128, 30)
    exact = HumanBenchmarkConfig(boundary_jitter=0.0, shift=0.0, p_miss=0.0, point_jitter=0.0)
    outlines, points = read_image({"Lung Lesion": [outline]}, np.random.default_rng(0), exact, 256)
    ((read,),) = outlines.values()
    assert np.abs(np.asarray(read) - np.asarray(outline)).max() < 1e-3  # rounding to 3 decimals
    truth = rasterize_polygons([outline], 256, 256)
    assert np.array_equal(rasterize_polygons([read], 256, 256), truth)
    # The salient point is the deepest interior pixel, the disc's centre (scipy's exact EDT).
    depth = ndimage.distance_transform_edt(truth)
    ((x, y),) = points["Lung Lesion"]
    assert depth[int(y), int(x)] >= depth.max() - 1.0


def test_the_reader_moves_outlines_by_the_configured_fraction_even_in_small_images() -> None:
    # 64 px: boundary_jitter 0.012 is 0.768 px, below the 1.5 px the reader used to force.
    outline = _disc(32, 32, 12)
    cfg = HumanBenchmarkConfig(boundary_jitter=0.012, shift=0.0, p_miss=0.0, point_jitter=0.0)
    outlines, _ = read_image({"Lung Lesion": [outline]}, np.random.default_rng(5), cfg, 64)
    ((read,),) = outlines.values()
    moved = np.linalg.norm(np.asarray(read) - np.asarray(outline), axis=1).max()
    assert moved == pytest.approx(0.012 * 64, abs=2e-3)  # the largest offset is the amplitude
