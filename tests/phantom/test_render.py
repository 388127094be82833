"""Rendering: determinism, exact counterfactuals, mask thickness, spurious masks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tests.phantom.tube_mask_checks import assert_tube_mask_fits

from cxr_spurious.errors import ParameterError
from cxr_spurious.io.masks import rasterize_polygons
from cxr_spurious.phantom import PhantomConfig, build_cohort, generate_phantom, render_image
from cxr_spurious.phantom.config import DevicesConfig
from cxr_spurious.phantom.devices import draw_marker
from cxr_spurious.phantom.findings import thickness
from cxr_spurious.phantom.geometry import dilate, vertex_normals
from cxr_spurious.tasks import PHANTOM_TASKS, SPURIOUS_OBJECTS

CFG = PhantomConfig.from_dict(
    {"n_images": 60, "image_size": 96, "prevalence": {"Lung Lesion": 0.5, "Airspace Opacity": 0.4}}
)
SEED = 4


def test_same_seed_same_pixels_and_outlines() -> None:
    a, b = render_image(CFG, 3, SEED), render_image(CFG, 3, SEED)
    assert a.image.dtype == np.uint8 and a.image.shape == (96, 96)
    assert np.array_equal(a.image, b.image)
    assert a.polygons == b.polygons
    assert all(np.array_equal(a.spurious[o], b.spurious[o]) for o in SPURIOUS_OBJECTS)


def test_different_seed_or_index_differs() -> None:
    assert not np.array_equal(
        render_image(CFG, 3, SEED).image, render_image(CFG, 3, SEED + 1).image
    )
    assert not np.array_equal(render_image(CFG, 3, SEED).image, render_image(CFG, 4, SEED).image)


def test_image_looks_like_a_radiograph() -> None:
    img = render_image(CFG, 0, SEED).image.astype(float)
    assert 40 < img.mean() < 200 and img.std() > 30  # not blank, not saturated
    centre, corner = img[30:70, 40:56].mean(), img[:10, :10].mean()
    assert centre > corner  # mediastinum brighter than the air outside the body


def _records(predicate) -> list:
    return [r for r in build_cohort(CFG, SEED) if predicate(r)]


def test_no_tube_counterfactual_changes_only_the_tube_region() -> None:
    recs = _records(lambda r: r.tube)[:4]
    assert recs
    for rec in recs:
        orig = render_image(CFG, rec.index, SEED)
        cf = render_image(CFG, rec.index, SEED, remove=frozenset({"Chest Tube"}))
        tube = orig.spurious["Chest Tube"]
        assert tube.any() and not cf.spurious["Chest Tube"].any()
        diff = orig.image != cf.image
        assert diff.any()
        assert not (diff & (dilate(tube, 4) == 0)).any()
        assert cf.polygons == orig.polygons


def test_tube_mask_covers_the_tube_and_little_else() -> None:
    recs = _records(lambda r: r.tube)
    assert len(recs) >= 10
    for rec in recs:
        orig = render_image(CFG, rec.index, SEED)
        cf = render_image(CFG, rec.index, SEED, remove=frozenset({"Chest Tube"}))
        assert_tube_mask_fits(orig.spurious["Chest Tube"], orig.image, cf.image)


def test_no_lesion_counterfactual_changes_only_the_lesion_region() -> None:
    recs = _records(lambda r: r.positives and "Cardiomegaly" not in r.positives)[:4]
    assert recs
    for rec in recs:
        orig = render_image(CFG, rec.index, SEED)
        cf = render_image(CFG, rec.index, SEED, remove=frozenset(PHANTOM_TASKS))
        assert cf.polygons == {}
        lesions = np.zeros((96, 96), np.uint8)
        for mask in orig.masks().values():
            lesions |= mask
        diff = orig.image != cf.image
        assert diff.any()
        assert not (diff & (dilate(lesions, 4) == 0)).any()
        # the lesion is visible: the pixels inside differ on average
        assert np.abs(orig.image[lesions > 0].astype(float) - cf.image[lesions > 0]).mean() > 3


def test_cardiomegaly_counterfactual_restores_a_smaller_heart() -> None:
    # records with another lung finding too: those must stay where they were (the open lung
    # a lesion may occupy excludes the heart, so it moved with a normal heart before)
    others = {"Lung Lesion", "Airspace Opacity"}
    recs = _records(lambda r: "Cardiomegaly" in r.positives and bool(others & set(r.positives)))
    assert len(recs) >= 2
    for rec in recs[:4]:
        orig = render_image(CFG, rec.index, SEED)
        heart = orig.masks()["Cardiomegaly"]
        cf = render_image(CFG, rec.index, SEED, remove=frozenset({"Cardiomegaly"}))
        assert "Cardiomegaly" not in cf.polygons
        assert {t: cf.polygons[t] for t in cf.polygons} == {
            t: orig.polygons[t] for t in orig.polygons if t != "Cardiomegaly"
        }
        assert not ((orig.image != cf.image) & (dilate(heart, 4) == 0)).any()


def test_spurious_masks_follow_the_record() -> None:
    for rec in build_cohort(CFG, SEED)[:30]:
        out = render_image(CFG, rec.index, SEED)
        assert out.spurious["Chest Tube"].any() == bool(rec.tube)
        assert out.spurious["Laterality Marker"].any() == bool(rec.marker)
        assert out.spurious["Support Device"].any() == bool(rec.support_device)
        assert set(out.polygons) == set(rec.positives)


@pytest.mark.parametrize("size", [96, 256])
def test_every_instance_is_at_least_five_pixels_thick_at_96(size: int) -> None:
    cfg = PhantomConfig.from_dict(
        {"n_images": 40, "image_size": size, "prevalence": dict.fromkeys(PHANTOM_TASKS, 0.6)}
    )
    scale = 96.0 / size
    checked = 0
    for index in range(0, 40, 2 if size == 96 else 5):
        for task, instances in render_image(cfg, index, 1).polygons.items():
            for outline in instances:
                at96 = rasterize_polygons([[[x * scale, y * scale] for x, y in outline]], 96, 96)
                assert thickness(at96) >= 5.0, (task, index, thickness(at96))
                checked += 1
    assert checked > 10


# Image sizes where a pneumothorax has the least room relative to min_thickness_at_96 (a
# measurement over every size 32..400 found the largest value that always fits, 10.375,
# at 37 px; 10.75 at 71 px).
@pytest.mark.parametrize("size", [37, 71])
def test_a_pneumothorax_at_the_largest_valid_thickness_always_fits(size: int) -> None:
    cfg = PhantomConfig.from_dict(
        {
            "n_images": 300,
            "image_size": size,
            # the other findings need less room (see the next tests): none drawn here
            "prevalence": {t: float(t == "Pneumothorax") for t in PHANTOM_TASKS},
            "findings": {"min_thickness_at_96": 10.0},
        }
    )
    for index in range(cfg.n_images):
        assert "Pneumothorax" in render_image(cfg, index, 0).polygons


def test_every_lung_lesion_is_drawn_in_small_images() -> None:
    """At 64 px with the default settings, 8 of these 300 Lung Lesion positives used to get
    no outline (no drawn size fitted) and silently became negatives; the nodule sampler now
    tries the smallest size of its range before giving up."""
    cfg = PhantomConfig.from_dict(
        {"n_images": 300, "image_size": 64, "prevalence": {"Lung Lesion": 1.0}}
    )
    for index in range(cfg.n_images):
        rendered = render_image(cfg, index, 0)
        assert "Lung Lesion" in rendered.polygons, index
        assert rendered.masks()["Lung Lesion"].any(), index


def test_a_finding_without_room_stops_the_generation_naming_it(tmp_path: Path) -> None:
    """A positive label needs its outline: a Lung Lesion that does not fit (10 px at 96 px
    in a 64 px image) is a ParameterError naming the key, the finding and the image, where
    its label used to turn negative behind one warning."""
    cfg = PhantomConfig.from_dict(
        {
            "n_images": 60,
            "image_size": 64,
            "prevalence": {t: float(t == "Lung Lesion") for t in PHANTOM_TASKS},
            "findings": {"min_thickness_at_96": 10.0},
        }
    )
    failed = []
    for index in range(cfg.n_images):
        try:
            render_image(cfg, index, 0)
        except ParameterError as err:
            failed.append((index, err))
    assert failed, "expected at least one Lung Lesion without room"
    index, err = failed[0]
    rec = build_cohort(cfg, 0)[index]
    assert err.key == "ingestion.phantom.findings.min_thickness_at_96"
    assert "a Lung Lesion 10 px thick at 96 px (6.7 px at the written 64 px)" in str(err)
    assert f"image {index} ({rec.image_id})" in str(err)
    out = tmp_path / "phantom"
    with pytest.raises(ParameterError, match="a Lung Lesion"):
        generate_phantom(cfg, out, seed=0, progress=False)
    assert not out.exists()


def _no_room_config(n_images: int) -> PhantomConfig:
    """Valid settings whose small bodies leave no room for a 10 px pneumothorax at 37 px."""
    return PhantomConfig.from_dict(
        {
            "n_images": n_images,
            "image_size": 37,
            "prevalence": {"Pneumothorax": 1.0},
            "findings": {"min_thickness_at_96": 10.0},
            "appearance": {"body_scale": [0.4, 0.4]},
        }
    )


def test_a_pneumothorax_that_does_not_fit_names_the_key_and_the_image() -> None:
    cfg = _no_room_config(4)
    rec = build_cohort(cfg, 0)[0]
    with pytest.raises(ParameterError) as info:
        render_image(cfg, 0, 0)
    assert info.value.key == "ingestion.phantom.findings.min_thickness_at_96"
    assert f"image 0 ({rec.image_id})" in str(info.value)
    assert "10 px thick at 96 px (3.9 px at the written 37 px)" in str(info.value)


def test_generation_stops_with_the_parameter_error_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "phantom"
    with pytest.raises(ParameterError, match="min_thickness_at_96"):
        generate_phantom(_no_room_config(4), out, seed=0, progress=False)
    assert not out.exists()


def test_a_marker_that_draws_nothing_names_its_key() -> None:
    att = np.zeros((64, 64), np.float32)
    key = "ingestion.phantom.sites.A.marker"
    with pytest.raises(ParameterError, match="draws no pixel") as info:
        draw_marker(att, " ", "top_left", np.random.default_rng(0), key=key)
    assert info.value.key == key
    assert not att.any()
    assert draw_marker(att, ".", "top_left", np.random.default_rng(0), key=key).any()


def test_polygons_are_one_per_instance_and_inside_the_image() -> None:
    out = render_image(CFG, 1, SEED)
    for instances in out.polygons.values():
        for outline in instances:
            pts = np.asarray(outline)
            assert pts.shape[1] == 2 and len(pts) >= 3
            assert pts.min() >= 0 and pts.max() <= 95


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (dataclasses.replace(CFG, image_size=20), "ingestion.phantom.image_size"),
        (dataclasses.replace(CFG, n_images=0), "ingestion.phantom.n_images"),
        (
            dataclasses.replace(CFG, devices=DevicesConfig(p_support_device=1.5)),
            "ingestion.phantom.devices.p_support_device",
        ),
    ],
)
def test_render_image_checks_a_config_built_without_from_dict(cfg: PhantomConfig, key: str) -> None:
    render_image(CFG, 0, SEED)  # the cohort cache holds the valid config's cohort
    with pytest.raises(ParameterError) as info:
        render_image(cfg, 0, SEED)
    assert info.value.key == key


@pytest.mark.parametrize("seed", [-1, 2.5, False, "4"])
def test_render_image_refuses_a_bad_seed_naming_it(seed: object) -> None:
    # -1 was numpy's "expected non-negative integer", naming no parameter
    with pytest.raises(ParameterError) as info:
        render_image(CFG, 0, seed)  # type: ignore[arg-type]
    assert info.value.key == "seed"
    assert np.array_equal(render_image(CFG, 0, 4.0).image, render_image(CFG, 0, SEED).image)


def test_remove_and_index_are_validated() -> None:
    with pytest.raises(ParameterError, match="remove"):
        render_image(CFG, 0, SEED, remove=frozenset({"Chest tube"}))
    with pytest.raises(ParameterError, match="index"):
        render_image(CFG, 60, SEED)


def test_vertex_normals_point_outward_for_either_orientation() -> None:
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    for pts in (square, square[::-1]):
        moved = pts + 0.1 * vertex_normals(pts)
        centre = pts.mean(axis=0)
        assert np.all(np.linalg.norm(moved - centre, axis=1) > np.linalg.norm(pts - centre, axis=1))
