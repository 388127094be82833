"""Paired artefact renders for the shortcut sweep: exact masks, placement, determinism, config.

A sweep phantom (``sweep_params.SWEEP``): tube probabilities 0 and site markers off (its
originals carry no artefact), every image also rendered ``with_<kind>`` for each kind.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from tests.phantom.sweep_params import BASE, SWEEP

from cxr_spurious.errors import ParameterError
from cxr_spurious.io.images import read_image
from cxr_spurious.io.masks import decode_rle
from cxr_spurious.phantom import (
    ARTEFACT_KINDS,
    PhantomConfig,
    RenderSpec,
    build_cohort,
    generate_phantom,
    lung_mask,
    render_image,
    render_name,
    render_versions,
)
from cxr_spurious.phantom.artefacts import ARTEFACT_STREAMS, ArtefactScene, pneumothorax_region
from cxr_spurious.phantom.render import _S_APPEARANCE, _S_TASK, REMOVABLE

CFG = PhantomConfig.from_dict({"n_images": 48, "image_size": 96, **SWEEP})
# At 256 px the image blur spreads every artefact beyond its footprint (the masks must follow).
CFG_256 = PhantomConfig.from_dict({"n_images": 48, "image_size": 256, **SWEEP})
SEED = 2
# faint_texture: mean absolute change inside its mask, in grey levels, at the default contrast
FAINT_MAX_GREY = 3.0


def _renders(index: int, cfg: PhantomConfig = CFG) -> dict:
    rec = build_cohort(cfg, SEED)[index]
    specs = {"original": RenderSpec(), **{k: RenderSpec(artefact=k) for k in ARTEFACT_KINDS}}
    return render_versions(cfg, rec, SEED, specs)


def test_the_artefact_streams_follow_the_existing_ones() -> None:
    existing = {*range(1, _S_APPEARANCE + 1), *_S_TASK.values(), 90}  # 90: human benchmark
    assert set(ARTEFACT_STREAMS) == set(ARTEFACT_KINDS)
    assert not existing & set(ARTEFACT_STREAMS.values())
    assert min(ARTEFACT_STREAMS.values()) > max(_S_TASK.values())


@pytest.mark.parametrize("kind", ARTEFACT_KINDS)
@pytest.mark.parametrize(("cfg", "step"), [(CFG, 4), (CFG_256, 8)], ids=["96px", "256px"])
def test_a_with_render_differs_from_the_original_only_inside_its_mask(
    kind: str, cfg: PhantomConfig, step: int
) -> None:
    size = cfg.image_size
    for index in range(0, 48, step):
        out = _renders(index, cfg)
        original, added = out["original"], out[kind]
        mask = added.artefact_mask
        assert original.artefact_mask is None and added.artefact == kind
        assert mask.dtype == np.uint8 and mask.shape == (size, size) and 0 < mask.mean() < 0.1
        changed = original.image != added.image
        np.testing.assert_array_equal(added.image[mask == 0], original.image[mask == 0])
        assert changed[mask == 1].any(), (kind, index)
        # the ground truth of the image is that of the original
        assert added.polygons == original.polygons
        assert all(
            np.array_equal(added.spurious[o], original.spurious[o]) for o in original.spurious
        )


def test_the_originals_of_a_sweep_phantom_carry_no_artefact() -> None:
    for index in range(0, 48, 6):
        original = _renders(index)["original"]
        assert (
            not original.spurious["Chest Tube"].any()
            and not original.spurious["Laterality Marker"].any()
        )


def test_tube_lesion_crosses_the_pneumothorax_on_positives_and_its_place_on_negatives() -> None:
    cohort = build_cohort(CFG, SEED)
    positives = [r for r in cohort if r.labels["Pneumothorax"]]
    negatives = [r for r in cohort if not r.labels["Pneumothorax"]]
    assert len(positives) >= 10 and len(negatives) >= 10
    for rec in positives:
        out = render_image(CFG, rec.index, SEED, artefact="tube_lesion")
        ptx = out.masks()["Pneumothorax"]
        assert ptx.any()
        assert (out.artefact_mask & ptx).sum() >= 0.1 * ptx.sum(), rec.index
    for rec in negatives:
        out = render_image(CFG, rec.index, SEED, artefact="tube_lesion")
        assert "Pneumothorax" not in out.polygons
        # the would-be pneumothorax: what the positive image's stream would have drawn
        region = _would_be_pneumothorax(rec.index)
        assert (out.artefact_mask & region).sum() >= 0.1 * region.sum(), rec.index


def _would_be_pneumothorax(index: int) -> np.ndarray:
    from cxr_spurious.phantom.render import _anatomy, _context, _rng

    rec = build_cohort(CFG, SEED)[index]
    anat, layers = _anatomy(CFG, rec, SEED, 1.0)
    scene = ArtefactScene(
        CFG, rec, _context(CFG, anat, layers), lambda t: _rng(SEED, rec.index, _S_TASK[t])
    )
    return pneumothorax_region(scene)


def test_the_would_be_region_of_a_positive_is_its_drawn_pneumothorax() -> None:
    rec = next(
        r
        for r in build_cohort(CFG, SEED)
        if r.labels["Pneumothorax"] and not r.labels["Cardiomegaly"]
    )
    drawn = render_image(CFG, rec.index, SEED).masks()["Pneumothorax"]
    np.testing.assert_array_equal(_would_be_pneumothorax(rec.index), drawn)


def test_tube_random_takes_either_side() -> None:
    sides = set()
    for index in range(48):
        mask = render_image(CFG, index, SEED, artefact="tube_random").artefact_mask
        cols = np.nonzero(mask.any(axis=0))[0]
        sides.add(bool(cols.mean() > 48))
    assert sides == {True, False}


def test_marker_port_lies_outside_the_lung_fields() -> None:
    for index in range(48):
        mask = render_image(CFG, index, SEED, artefact="marker_port").artefact_mask
        lungs = lung_mask(CFG, index, SEED)
        assert lungs.sum() > 0.1 * lungs.size and mask.any()
        assert not (mask & lungs).any(), index
        ys, xs = np.nonzero(mask)
        assert ys.max() < 20 and xs.max() < 40, index  # in the top-left corner


def test_faint_texture_is_faint_but_there() -> None:
    for index in range(0, 48, 3):
        out = _renders(index)
        mask = out["faint_texture"].artefact_mask == 1
        mad = np.abs(out["faint_texture"].image.astype(float) - out["original"].image)[mask].mean()
        assert 0 < mad < FAINT_MAX_GREY, (index, mad)
        # the same disc in every image
        if index == 0:
            first = mask
        assert (mask & first).sum() >= 0.9 * first.sum()


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = PhantomConfig.tiny(**SWEEP)
    return generate_phantom(
        cfg, tmp_path_factory.mktemp("sweep") / "phantom", seed=5, progress=False
    )


def test_same_seed_gives_identical_bytes_for_any_worker_count(
    sweep_dir: Path, tmp_path: Path
) -> None:
    again = generate_phantom(
        PhantomConfig.tiny(**SWEEP), tmp_path / "again", seed=5, n_jobs=2, progress=False
    )
    assert _digests(again) == _digests(sweep_dir)
    other = generate_phantom(
        PhantomConfig.tiny(**SWEEP), tmp_path / "other", seed=6, progress=False
    )
    assert _digests(other) != _digests(sweep_dir)


def test_adding_artefacts_leaves_the_original_images_unchanged(
    sweep_dir: Path, tmp_path: Path
) -> None:
    plain = generate_phantom(PhantomConfig.tiny(**BASE), tmp_path / "plain", seed=5, progress=False)
    with_art, without = _digests(sweep_dir), _digests(plain)
    shared = [f for f in without if f != "phantom_meta.json"]
    assert shared and all(with_art[f] == without[f] for f in shared)
    assert {f for f in with_art if f.startswith("counterfactuals/with_")}


def test_writer_stores_every_render_with_its_mask(sweep_dir: Path) -> None:
    cfg = PhantomConfig.tiny(**SWEEP)
    meta = json.loads((sweep_dir / "phantom_meta.json").read_text())
    assert meta["artefact_images"] == {render_name(k): cfg.n_images for k in ARTEFACT_KINDS}
    attrs = (sweep_dir / "attributes.csv").read_text().splitlines()[1:]
    image_ids = [line.split(",")[0] for line in attrs]
    for kind in ARTEFACT_KINDS:
        folder = sweep_dir / "counterfactuals" / render_name(kind)
        masks = json.loads((folder / "masks.json").read_text())
        assert sorted(masks) == sorted(image_ids)
        for image_id in image_ids:
            rel = Path("images", *image_id.split("_", 2)).with_suffix(".png")
            original, added = read_image(sweep_dir / rel), read_image(folder / rel)
            mask = decode_rle(masks[image_id])
            assert mask.shape == original.shape and mask.any()
            np.testing.assert_array_equal(added[mask == 0], original[mask == 0])


def test_artefacts_only_for_the_listed_splits(tmp_path: Path) -> None:
    cfg = PhantomConfig.tiny(
        **{**BASE, "artefacts": {"kinds": ["faint_texture"], "splits": ["test"]}}
    )
    out = generate_phantom(cfg, tmp_path / "p", seed=1, progress=False)
    tests = sum(1 for r in build_cohort(cfg, 1) if r.split == "test")
    pngs = list((out / "counterfactuals" / "with_faint_texture").rglob("*.png"))
    assert 0 < tests == len(pngs) < cfg.n_images
    assert not (out / "counterfactuals" / "with_marker_port").exists()


def test_render_image_validates_the_artefact() -> None:
    with pytest.raises(ParameterError, match="artefact.*unknown artefact 'tube'.*tube_random"):
        render_image(CFG, 0, SEED, artefact="tube")
    assert "faint_texture" not in REMOVABLE


@pytest.mark.parametrize(
    ("params", "key", "message"),
    [
        (
            {"artefacts": {"kinds": ["tube_random"]}},
            "phantom.tube.p_given_ptx.train",
            "must be 0 when phantom.artefacts.kinds lists tube_random",
        ),
        (
            {"artefacts": {"kinds": ["tube_lesion"], "splits": ["test"]}},
            "phantom.tube.p_given_ptx.test",
            "must be 0",
        ),
        (
            {**BASE, "sites": {"A": {"marker_prob": 0.5}}, "artefacts": {"kinds": ["marker_port"]}},
            "phantom.sites.A.marker_prob",
            "must be 0 when",
        ),
        (
            {"artefacts": {"kinds": ["tattoo"]}},
            "phantom.artefacts.kinds",
            "unknown artefact 'tattoo'",
        ),
        (
            {"artefacts": {"kinds": ["faint_texture", "faint_texture"]}},
            "phantom.artefacts.kinds",
            "twice",
        ),
        ({"artefacts": {"splits": ["training"]}}, "phantom.artefacts.splits", "unknown split"),
        (
            {"artefacts": {"marker_port": {"text": "PORTABLE"}}},
            "phantom.artefacts.marker_port.text",
            "1-6 printable",
        ),
        (
            {"artefacts": {"marker_port": {"corner": "centre"}}},
            "phantom.artefacts.marker_port.corner",
            "top_left",
        ),
        (
            {"artefacts": {"faint_texture": {"contrast": 0.0}}},
            "phantom.artefacts.faint_texture.contrast",
            "(0.0, 0.5]",
        ),
        (
            {"artefacts": {"faint_texture": {"centre": [0.5, 1.5]}}},
            "phantom.artefacts.faint_texture.centre.y",
            "[0.0, 1.0]",
        ),
        (
            {"artefacts": {"faint_texture": {"centre": [0.5]}}},
            "phantom.artefacts.faint_texture.centre",
            "[x, y]",
        ),
        ({"artefacts": {"size": 3}}, "phantom.artefacts.size", "unknown key"),
    ],
)
def test_artefact_settings_are_validated(params: dict, key: str, message: str) -> None:
    with pytest.raises(ParameterError) as info:
        PhantomConfig.from_dict(params)
    assert key in str(info.value) and message in str(info.value)


def test_a_sweep_config_is_expressible_and_faint_texture_is_tunable() -> None:
    cfg = PhantomConfig.from_dict(
        {**SWEEP, "artefacts": {**SWEEP["artefacts"], "faint_texture": {"contrast": 0.05}}}
    )
    assert cfg.artefacts.kinds == ARTEFACT_KINDS and cfg.artefacts.splits == (
        "train",
        "val",
        "test",
    )
    assert all(site.marker_prob == 0 for site in cfg.sites.values())
    assert (
        cfg.artefacts.faint_texture.contrast == 0.05
        and PhantomConfig.from_dict(cfg.to_dict()) == cfg
    )
    assert PhantomConfig.from_dict({}).artefacts.kinds == ()
