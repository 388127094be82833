"""A sweep phantom through the phantom adapter into the image cache: renders and their masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.phantom.sweep_params import SWEEP

from cxr_spurious.errors import ContractError, DataFormatError
from cxr_spurious.io.images import read_image
from cxr_spurious.io.masks import decode_rle
from cxr_spurious.phantom import ARTEFACT_KINDS, PhantomConfig, generate_phantom, render_name
from cxr_spurious.sources.adapters.phantom import read_phantom
from cxr_spurious.sources.cache import (
    build_cache,
    estimate_cache_bytes,
    load_cache,
    make_cache_spec,
    resize_image,
    resize_support,
)

WITH = [render_name(k) for k in ARTEFACT_KINDS]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = PhantomConfig.tiny(**SWEEP, image_size=96)
    return generate_phantom(
        cfg, tmp_path_factory.mktemp("sweep") / "phantom", seed=3, progress=False
    )


def test_adapter_reads_every_render_and_its_masks(phantom: Path) -> None:
    ingested = read_phantom(phantom, {})
    ids = set(ingested.manifest["image_id"])
    assert set(ingested.renders) == {"no_tube", "no_lesion", *WITH}
    assert set(ingested.render_masks) == set(WITH)
    test_ids = set(ingested.manifest.loc[ingested.manifest["split"] == "test", "image_id"])
    assert set(ingested.renders["no_tube"]) == test_ids
    for name in WITH:
        assert set(ingested.renders[name]) == ids == set(ingested.render_masks[name])


def test_cache_round_trip_of_renders_and_masks(phantom: Path, tmp_path: Path) -> None:
    ingested = read_phantom(phantom, {})
    spec = make_cache_spec(
        ingested.manifest,
        ingested.tasks,
        32,
        renders=ingested.renders,
        render_masks=ingested.render_masks,
    )
    assert (
        estimate_cache_bytes(spec)
        == estimate_cache_bytes(
            make_cache_spec(ingested.manifest, ingested.tasks, 32, renders=ingested.renders)
        )
        + 4 * len(ingested.manifest) * 32 * 32
    )
    build_cache(spec, tmp_path / "cache", progress=False)
    cache = load_cache(tmp_path / "cache")
    ids = cache.image_ids
    for name in WITH:
        assert (tmp_path / "cache" / "renders" / f"{name}.mask.npy").is_file()
        renders, masks, originals = (
            cache.render(name, ids),
            cache.render_mask(name, ids),
            cache.render("original", ids),
        )
        for k in (0, len(ids) - 1):
            full = read_image(ingested.renders[name][ids[k]])
            np.testing.assert_array_equal(renders[k], resize_image(full, 32))
            rle = ingested.render_masks[name][ids[k]]
            np.testing.assert_array_equal(masks[k], resize_support(decode_rle(rle), 32))
        # at cache resolution too: the render equals the original outside its mask
        np.testing.assert_array_equal(renders[masks == 0], originals[masks == 0])
        assert (renders != originals)[masks == 1].any()
    with pytest.raises(ContractError, match="render 'no_tube' of the image cache has no mask"):
        cache.render_mask("no_tube", cache.render_ids["no_tube"])
    assert cache.render("no_tube", cache.render_ids["no_tube"]).shape == (
        len(cache.render_ids["no_tube"]),
        32,
        32,
    )


def test_a_masks_file_missing_an_image_is_named(phantom: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "phantom"
    shutil.copytree(phantom, copy)
    path = copy / "counterfactuals" / "with_marker_port" / "masks.json"
    masks = json.loads(path.read_text())
    dropped = sorted(masks)[0]
    del masks[dropped]
    path.write_text(json.dumps(masks))
    with pytest.raises(
        DataFormatError,
        match=rf"with_marker_port/masks\.json.*render 'with_marker_port'.*{dropped}",
    ):
        read_phantom(copy, {})
