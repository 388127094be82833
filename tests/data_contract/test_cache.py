"""The memory-mapped image cache: content, masks, boxes, renders (and their masks),
skip-if-unchanged, format bump."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_spurious.datasets.image_cache import ImageCacheDataset
from cxr_spurious.errors import ContractError, DataFormatError, ParameterError
from cxr_spurious.io.masks import encode_rle, rasterize_polygons
from cxr_spurious.sources.cache import (
    CACHE_FORMAT_VERSION,
    build_cache,
    estimate_cache_bytes,
    load_cache,
    make_cache_spec,
    resize_image,
    resize_mask,
    resize_support,
    verify_cache_files,
)
from cxr_spurious.sources.contract import normalise_manifest

H, W = 64, 80


def _setup(tmp_path: Path, n: int = 4):
    rng = np.random.default_rng(0)
    rows, seg, ann, spur = [], {}, {}, {}
    renders: dict[str, dict[str, str]] = {"no_tube": {}, "with_box": {}}
    render_masks: dict[str, dict] = {"with_box": {}}
    for i in range(n):
        image_id = f"patient{i:05d}_study1_view1_frontal"
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).save(path)
        cf = tmp_path / f"{image_id}_cf.png"
        Image.fromarray(np.full((H, W), 7, dtype=np.uint8)).save(cf)
        renders["no_tube"][image_id] = str(cf)
        # with_box: the original plus a bright square (rows 30-39, columns 50-61) and its mask
        pixels = np.asarray(Image.open(path))
        box = np.zeros((H, W), dtype=np.uint8)
        box[30:40, 50:62] = 1
        added = tmp_path / f"{image_id}_box.png"
        Image.fromarray(np.where(box == 1, 255, pixels).astype(np.uint8)).save(added)
        renders["with_box"][image_id] = str(added)
        render_masks["with_box"][image_id] = encode_rle(box)
        polys = (
            [[[4, 4], [20, 4], [20, 20], [4, 20]], [[50, 40], [70, 40], [70, 60], [50, 60]]]
            if i % 2 == 0
            else []
        )
        ann[image_id] = {"img_size": [H, W], **({"Lung Lesion": polys} if polys else {})}
        seg[image_id] = {"Lung Lesion": encode_rle(rasterize_polygons(polys, H, W))}
        tube = np.zeros((H, W), dtype=np.uint8)
        tube[:, 10:12] = 1
        spur[image_id] = {"Chest Tube": encode_rle(tube)}
        rows.append(
            {
                "image_id": image_id,
                "patient_id": f"p{i}",
                "study_id": f"p{i}_s1",
                "split": "train",
                "path": str(path),
                "view": "PA",
                "width": W,
                "height": H,
                "Lung Lesion": float(i % 2 == 0),
                "Edema": 0.0 if i < 2 else np.nan,
            }
        )
    manifest = normalise_manifest(pd.DataFrame(rows), ["Lung Lesion", "Edema"], source="unit")
    seg = {k: v for k, v in seg.items()}
    spec = make_cache_spec(
        manifest,
        ["Lung Lesion", "Edema"],
        32,
        segmentations=seg,
        annotations=ann,
        spurious_segmentations=spur,
        objects=["Chest Tube"],
        renders=renders,
        render_masks=render_masks,
    )
    return manifest, spec


def test_cache_content(tmp_path: Path) -> None:
    manifest, spec = _setup(tmp_path)
    build_cache(spec, tmp_path / "cache", progress=False)
    cache = load_cache(tmp_path / "cache")
    assert cache.images.shape == (4, 32, 32) and cache.images.dtype == np.uint8
    assert isinstance(cache.images, np.memmap)
    assert cache.masks.shape == (4, 2, 32, 32) and cache.spurious.shape == (4, 1, 32, 32)
    assert cache.tasks == ["Lung Lesion", "Edema"] and cache.objects == ["Chest Tube"]
    r0 = cache.row("patient00000_study1_view1_frontal")
    # Two square lesions: boxes equal masks for axis-aligned squares.
    assert cache.masks[r0, 0].sum() > 0
    np.testing.assert_array_equal(cache.boxes[r0, 0], cache.masks[r0, 0])
    assert cache.masks[cache.row("patient00001_study1_view1_frontal"), 0].sum() == 0
    # Thin tube (2 px of 80) survives downsampling to 32 px.
    assert cache.spurious[r0, 0].sum() > 0
    # has_mask: Lung Lesion known everywhere (segmentations); Edema known only where label == 0.
    np.testing.assert_array_equal(cache.has_mask[:, 0], [True] * 4)
    np.testing.assert_array_equal(cache.has_mask[:, 1], [True, True, False, False])
    ids = ["patient00002_study1_view1_frontal", "patient00000_study1_view1_frontal"]
    seven = np.full((2, 32, 32), 7, dtype=np.uint8)
    np.testing.assert_array_equal(cache.render("no_tube", ids), seven)
    np.testing.assert_array_equal(cache.render("original", ids), cache.images[cache.rows(ids)])
    with pytest.raises(ContractError, match="not in the image cache"):
        cache.row("nope")
    with pytest.raises(ContractError, match="no render 'no_lesion'"):
        cache.render("no_lesion", ids)
    with pytest.raises(ContractError, match="render 'no_tube' of the image cache has no mask.*box"):
        cache.render_mask("no_tube", ids)


def test_render_masks_round_trip_and_bound_every_changed_pixel(tmp_path: Path) -> None:
    _, spec = _setup(tmp_path)
    build_cache(spec, tmp_path / "cache", progress=False)
    folder = tmp_path / "cache"
    renders = folder / "renders"
    assert (renders / "with_box.npy").is_file() and (renders / "with_box.mask.npy").is_file()
    assert not (renders / "no_tube.mask.npy").exists() and not (folder / "variants").exists()
    index = json.loads((folder / "index.json").read_text())
    assert index["format_version"] == CACHE_FORMAT_VERSION == 3
    assert index["render_masks"] == ["with_box"]
    assert set(index["render_ids"]) == {"no_tube", "with_box"}
    files = {"renders/with_box.npy", "renders/with_box.mask.npy", "renders/no_tube.npy"}
    assert files <= set(index["files"])
    assert verify_cache_files(folder) == []
    cache = load_cache(folder)
    ids = cache.image_ids
    box = np.zeros((H, W), dtype=np.uint8)
    box[30:40, 50:62] = 1
    mask = cache.render_mask("with_box", ids)
    np.testing.assert_array_equal(mask, np.broadcast_to(resize_support(box, 32), mask.shape))
    # the cached mask covers the box's whole reach: the renders equal the originals outside it
    with_box, original = cache.render("with_box", ids), cache.render("original", ids)
    np.testing.assert_array_equal(with_box[mask == 0], original[mask == 0])
    assert (with_box != original)[mask == 1].any()
    full = np.asarray(Image.open(spec.renders["with_box"][ids[0]]))
    np.testing.assert_array_equal(with_box[0], resize_image(full, 32))
    # damage to a mask file is caught like damage to any other array
    raw = bytearray((folder / "renders" / "with_box.mask.npy").read_bytes())
    raw[-1] ^= 1
    (folder / "renders" / "with_box.mask.npy").write_bytes(bytes(raw))
    assert any("with_box.mask.npy" in p for p in verify_cache_files(folder))


def test_select_renders_picks_one_render_per_image(tmp_path: Path) -> None:
    _, spec = _setup(tmp_path)
    build_cache(spec, tmp_path / "cache", progress=False)
    cache = load_cache(tmp_path / "cache")
    ids = cache.image_ids
    names = ["with_box", "original", "no_tube", "with_box"]
    picked = cache.select_renders(ids, names)
    for k, (image_id, name) in enumerate(zip(ids, names)):
        np.testing.assert_array_equal(picked[k], cache.render(name, [image_id])[0])
    with pytest.raises(ContractError, match="4 image ids but 3 render names"):
        cache.select_renders(ids, names[:3])


def test_render_masks_must_cover_every_image_of_their_render(tmp_path: Path) -> None:
    manifest, spec = _setup(tmp_path)
    masks = dict(spec.render_masks["with_box"])
    task = ["Lung Lesion"]
    missing = sorted(masks)[1]
    del masks[missing]
    with pytest.raises(ContractError, match=f"render 'with_box' has no mask for 1 .*{missing}"):
        make_cache_spec(manifest, task, 32, renders=spec.renders, render_masks={"with_box": masks})
    with pytest.raises(ContractError, match="render 'with_tube', which has no images"):
        make_cache_spec(manifest, task, 32, renders=spec.renders, render_masks={"with_tube": masks})


def test_disk_estimate_counts_renders_and_their_masks(tmp_path: Path) -> None:
    _, spec = _setup(tmp_path)
    n, t, k, s = 4, 2, 1, 32
    # images + masks + boxes + spurious + has_mask, then 2 renders of 4 images and 1 mask array
    assert estimate_cache_bytes(spec) == n * s * s * (1 + 2 * t + k) + n * t + (2 * 4 + 4) * s * s
    build_cache(spec, tmp_path / "cache", progress=False)
    arrays = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.npy"))
    assert 0 <= arrays - estimate_cache_bytes(spec) <= 128 * 9  # only the .npy headers on top


def test_a_cache_of_the_previous_format_is_rebuilt_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, spec = _setup(tmp_path)
    folder = tmp_path / "cache"
    build_cache(spec, folder, progress=False)
    # turn it into what format 2 wrote: variants/<name>.npy and variant_ids, no masks
    (folder / "renders" / "with_box.mask.npy").unlink()
    (folder / "renders").rename(folder / "variants")
    index = json.loads((folder / "index.json").read_text())
    index["format_version"] = 2
    index["variant_ids"] = index.pop("render_ids")
    del index["render_masks"]
    files = index["files"].items()
    index["files"] = {k.replace("renders/", "variants/"): v for k, v in files if "mask" not in k}
    (folder / "index.json").write_text(json.dumps(index))
    old = r"index\.json.*format 2, this version reads format 3.*kedro run --pipeline ingestion"
    with pytest.raises(DataFormatError, match=old):
        load_cache(folder)
    assert "format 2" in verify_cache_files(folder)[0]
    with caplog.at_level(logging.INFO, logger="cxr_spurious.datasets.image_cache"):
        ImageCacheDataset(path=str(folder), progress=False).save(spec)
    assert "was written in format 2; this version writes format 3" in caplog.text
    cache = load_cache(folder)
    assert not (folder / "variants").exists() and set(cache.render_masks) == {"with_box"}
    assert verify_cache_files(folder) == []


def test_boxes_fill_bounding_box_of_each_instance(tmp_path: Path) -> None:
    _, spec = _setup(tmp_path, n=1)
    tri = [[[4, 4], [40, 4], [4, 40]]]
    spec.segmentations["patient00000_study1_view1_frontal"]["Lung Lesion"] = encode_rle(
        rasterize_polygons(tri, H, W)
    )
    spec.annotations["patient00000_study1_view1_frontal"]["Lung Lesion"] = tri
    build_cache(spec, tmp_path / "c", progress=False)
    cache = load_cache(tmp_path / "c")
    assert cache.boxes[0, 0].sum() > 1.7 * cache.masks[0, 0].sum()  # a box is ~2x a right triangle


def test_dataset_skips_rebuild_when_unchanged(tmp_path: Path) -> None:
    _, spec = _setup(tmp_path)
    ds = ImageCacheDataset(path=str(tmp_path / "cache"), progress=False)
    assert not ds.exists()
    ds.save(spec)
    stamp = (tmp_path / "cache" / "images.npy").stat().st_mtime_ns
    ds.save(spec)
    assert (tmp_path / "cache" / "images.npy").stat().st_mtime_ns == stamp
    spec.size = 16
    ds.save(spec)
    assert ds.load().images.shape == (4, 16, 16)


@pytest.mark.parametrize("mtime", ["preserved", "same_second"])
def test_same_size_source_change_with_same_second_mtime_rebuilds(
    tmp_path: Path, mtime: str
) -> None:
    """A corrected source copied in with ``cp -p``/``rsync -a`` (mtime kept), or rewritten
    within the same second, keeps its size and whole-second mtime: the cache must rebuild."""
    img = tmp_path / "a.png"

    def write(value: int) -> None:
        Image.fromarray(np.full((32, 32), value, np.uint8)).save(img, compress_level=0)

    def spec():
        manifest = pd.DataFrame(
            {"image_id": ["a"], "path": [str(img)], "height": [32], "width": [32],
             "Pneumothorax": [0.0]}
        )  # fmt: skip
        return make_cache_spec(manifest, ["Pneumothorax"], 16)

    ds = ImageCacheDataset(path=str(tmp_path / "cache"), progress=False)
    write(10)
    before = img.stat()
    first = spec().fingerprint()  # read from the files on each call
    ds.save(spec())
    assert int(ds.load().images[0, 0, 0]) == 10
    write(200)
    if mtime == "preserved":
        os.utime(img, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        whole = before.st_mtime_ns // 10**9 * 10**9
        other = whole + (999_000_000 if before.st_mtime_ns - whole < 500_000_000 else 1_000)
        os.utime(img, ns=(before.st_atime_ns, other))
    after = img.stat()
    assert after.st_size == before.st_size and int(after.st_mtime) == int(before.st_mtime)
    second = spec()
    assert second.fingerprint() != first
    ds.save(second)
    assert int(ds.load().images[0, 0, 0]) == 200


def test_image_size_disagreeing_with_manifest_is_reported(tmp_path: Path) -> None:
    _, spec = _setup(tmp_path, n=2)
    spec.sizes[1] = (H + 1, W)
    with pytest.raises(
        DataFormatError, match="patient00001_study1_view1_frontal.*the manifest says 80x65"
    ):
        build_cache(spec, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_parallel_build_equals_serial(tmp_path: Path) -> None:
    _, spec = _setup(tmp_path)
    build_cache(spec, tmp_path / "a", progress=False)
    spec.n_jobs = 2
    build_cache(spec, tmp_path / "b", progress=False)
    a, b = load_cache(tmp_path / "a"), load_cache(tmp_path / "b")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_bad_cache_parameters(tmp_path: Path) -> None:
    manifest, _ = _setup(tmp_path, n=1)
    with pytest.raises(ParameterError, match="ingestion.cache.size"):
        make_cache_spec(manifest, ["Lung Lesion"], 4)
    with pytest.raises(ParameterError, match="ingestion.n_jobs"):
        make_cache_spec(manifest, ["Lung Lesion"], 32, n_jobs=0)


def test_resize_mask_threshold() -> None:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :3] = 1  # 3/4 of the first 4 columns
    np.testing.assert_array_equal(resize_mask(mask, 2), [[1, 0], [1, 0]])
    np.testing.assert_array_equal(resize_mask(mask[:, :1].repeat(8, 1) * 0, 2), np.zeros((2, 2)))
