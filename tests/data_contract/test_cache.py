"""The memory-mapped image cache: content, masks, boxes, variants, skip-if-unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_spurious.data.cache import build_cache, load_cache, make_cache_spec, resize_mask
from cxr_spurious.data.contract import normalise_manifest
from cxr_spurious.datasets.image_cache import ImageCacheDataset
from cxr_spurious.errors import ContractError, DataFormatError, ParameterError
from cxr_spurious.io.masks import encode_rle, rasterize_polygons

H, W = 64, 80


def _setup(tmp_path: Path, n: int = 4):
    rng = np.random.default_rng(0)
    rows, seg, ann, spur, variants = [], {}, {}, {}, {"no_tube": {}}
    for i in range(n):
        image_id = f"patient{i:05d}_study1_view1_frontal"
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).save(path)
        cf = tmp_path / f"{image_id}_cf.png"
        Image.fromarray(np.full((H, W), 7, dtype=np.uint8)).save(cf)
        variants["no_tube"][image_id] = str(cf)
        polys = [[[4, 4], [20, 4], [20, 20], [4, 20]], [[50, 40], [70, 40], [70, 60], [50, 60]]] if i % 2 == 0 else []
        ann[image_id] = {"img_size": [H, W], **({"Lung Lesion": polys} if polys else {})}
        seg[image_id] = {"Lung Lesion": encode_rle(rasterize_polygons(polys, H, W))}
        tube = np.zeros((H, W), dtype=np.uint8)
        tube[:, 10:12] = 1
        spur[image_id] = {"Chest Tube": encode_rle(tube)}
        rows.append({"image_id": image_id, "patient_id": f"p{i}", "study_id": f"p{i}_s1", "split": "train", "path": str(path), "view": "PA", "width": W, "height": H, "Lung Lesion": float(i % 2 == 0), "Edema": 0.0 if i < 2 else np.nan})
    manifest = normalise_manifest(pd.DataFrame(rows), ["Lung Lesion", "Edema"], source="unit")
    seg = {k: v for k, v in seg.items()}
    spec = make_cache_spec(manifest, ["Lung Lesion", "Edema"], 32, segmentations=seg, annotations=ann, spurious_segmentations=spur, objects=["Chest Tube"], variants=variants)
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
    np.testing.assert_array_equal(cache.variant("no_tube", ids), np.full((2, 32, 32), 7, dtype=np.uint8))
    with pytest.raises(ContractError, match="not in the image cache"):
        cache.row("nope")
    with pytest.raises(ContractError, match="no variant 'no_lesion'"):
        cache.variant("no_lesion", ids)


def test_boxes_fill_bounding_box_of_each_instance(tmp_path: Path) -> None:
    _, spec = _setup(tmp_path, n=1)
    tri = [[[4, 4], [40, 4], [4, 40]]]
    spec.segmentations["patient00000_study1_view1_frontal"]["Lung Lesion"] = encode_rle(rasterize_polygons(tri, H, W))
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


def test_image_size_disagreeing_with_manifest_is_reported(tmp_path: Path) -> None:
    _, spec = _setup(tmp_path, n=2)
    spec.sizes[1] = (H + 1, W)
    with pytest.raises(DataFormatError, match="patient00001_study1_view1_frontal.*the manifest says 80x65"):
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
