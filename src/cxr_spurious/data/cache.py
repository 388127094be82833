"""The model-input image cache: resized uint8 images and masks in memory-mapped arrays.

Training never decodes an image file in its loop: ingestion decodes every image once
(in parallel, with a progress bar), resizes it to ``size`` x ``size`` and writes it, with
its masks, into ``.npy`` files that are opened with ``mmap_mode="r"``.

Folder layout::

    index.json            image ids (row order), tasks, objects, size, fingerprint, variants
    images.npy            (N, S, S) uint8
    masks.npy             (N, T, S, S) uint8   pathology masks (0/1)
    boxes.npy             (N, T, S, S) uint8   filled bounding boxes of each instance
    spurious.npy          (N, K, S, S) uint8   spurious-object masks (chest tube, ...)
    has_mask.npy          (N, T) bool          location label known for (image, task)
    variants/<name>.npy   (M, S, S) uint8      counterfactual renders (ids in index.json)

The cache is rebuilt only when its fingerprint (ids, files, sizes, settings) changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxr_spurious.errors import ContractError, DataFormatError, ParameterError
from cxr_spurious.io.atomic import atomic_dir, write_text_atomic
from cxr_spurious.io.images import read_image
from cxr_spurious.io.masks import decode_rle

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
# Area fraction above which a downsampled pixel counts as inside a mask.
PATHOLOGY_THRESHOLD = 0.5
# Spurious objects are thin (a tube is ~2 px at 256 px): keep any pixel they cover a quarter of.
SPURIOUS_THRESHOLD = 0.25


@dataclass
class CacheSpec:
    """Everything needed to build a cache (what a node hands to ``ImageCacheDataset.save``)."""

    image_ids: list[str]
    paths: list[str]
    sizes: list[tuple[int, int]]  # (h, w) original
    labels: np.ndarray  # (N, T) float 1/0/NaN
    tasks: list[str]
    objects: list[str]
    size: int
    segmentations: Mapping[str, Any] = field(default_factory=dict)
    instance_segmentations: Mapping[str, Any] = field(default_factory=dict)
    annotations: Mapping[str, Any] = field(default_factory=dict)
    spurious_segmentations: Mapping[str, Any] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    n_jobs: int = 1

    def fingerprint(self) -> str:
        """Hash of everything that determines the cache content."""
        h = hashlib.sha256()
        h.update(json.dumps({"v": CACHE_FORMAT_VERSION, "size": self.size, "tasks": self.tasks, "objects": self.objects}).encode())
        for image_id, path in zip(self.image_ids, self.paths):
            h.update(image_id.encode())
            h.update(_file_stamp(path).encode())
        for name in sorted(self.variants):
            for image_id, path in sorted(self.variants[name].items()):
                h.update(f"{name}|{image_id}|{_file_stamp(path)}".encode())
        for blob in (self.segmentations, self.instance_segmentations, self.annotations, self.spurious_segmentations):
            h.update(hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).digest())
        h.update(np.nan_to_num(np.asarray(self.labels, dtype=float), nan=-1).tobytes())
        return h.hexdigest()[:16]


@dataclass
class ImageCache:
    """A loaded cache: memory-mapped arrays plus the index."""

    image_ids: list[str]
    tasks: list[str]
    objects: list[str]
    size: int
    images: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    spurious: np.ndarray
    has_mask: np.ndarray
    variants: dict[str, np.ndarray] = field(default_factory=dict)
    variant_ids: dict[str, list[str]] = field(default_factory=dict)
    fingerprint: str = ""
    _rows: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._rows = {image_id: i for i, image_id in enumerate(self.image_ids)}
        n = len(self.image_ids)
        for name, arr in (("images", self.images), ("masks", self.masks), ("boxes", self.boxes), ("spurious", self.spurious), ("has_mask", self.has_mask)):
            if arr.shape[0] != n:
                raise ContractError(f"image cache array '{name}' has {arr.shape[0]} rows for {n} image ids")

    def __len__(self) -> int:
        return len(self.image_ids)

    def row(self, image_id: str) -> int:
        """Row of ``image_id``; raises ``ContractError`` if it is not cached."""
        try:
            return self._rows[image_id]
        except KeyError as exc:
            raise ContractError(f"image '{image_id}' is not in the image cache ({len(self)} images)") from exc

    def rows(self, image_ids: Iterable[str]) -> np.ndarray:
        """Rows of several ids, in order."""
        return np.array([self.row(i) for i in image_ids], dtype=np.int64)

    def variant(self, name: str, image_ids: Sequence[str]) -> np.ndarray:
        """Counterfactual renders ``name`` of ``image_ids`` as an (n, S, S) array."""
        if name not in self.variants:
            raise ContractError(f"image cache has no variant '{name}'; it has {sorted(self.variants)}")
        lookup = {i: r for r, i in enumerate(self.variant_ids[name])}
        missing = [i for i in image_ids if i not in lookup]
        if missing:
            raise ContractError(f"variant '{name}' lacks {len(missing)} image(s), e.g. {missing[:3]}")
        return self.variants[name][[lookup[i] for i in image_ids]]

    def task_index(self, task: str) -> int:
        """Column of ``task`` in ``masks``/``boxes``."""
        if task not in self.tasks:
            raise ContractError(f"task '{task}' is not in the image cache; cached tasks: {self.tasks}")
        return self.tasks.index(task)


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
        return f"{path}|{st.st_size}|{int(st.st_mtime)}"
    except OSError:
        return f"{path}|missing"


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 image to (size, size) with area interpolation (aspect ratio not kept)."""
    interp = cv2.INTER_AREA if min(image.shape) >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int, threshold: float = PATHOLOGY_THRESHOLD) -> np.ndarray:
    """Resize a 0/1 mask to (size, size): area fraction >= ``threshold`` is inside."""
    if not mask.any():
        return np.zeros((size, size), dtype=np.uint8)
    frac = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (frac >= threshold).astype(np.uint8)


def boxes_from_polygons(polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int) -> np.ndarray:
    """Filled bounding box of each polygon, unioned, as an (h, w) uint8 mask."""
    out = np.zeros((height, width), dtype=np.uint8)
    for poly in polygons:
        pts = np.asarray(poly, dtype=float)
        if pts.ndim != 2 or len(pts) == 0:
            continue
        x0, y0 = np.floor(pts.min(axis=0)).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
        out[max(y0, 0) : min(y1, height - 1) + 1, max(x0, 0) : min(x1, width - 1) + 1] = 1
    return out


def boxes_from_mask(mask: np.ndarray) -> np.ndarray:
    """Filled bounding box of each connected component of ``mask``."""
    out = np.zeros_like(mask, dtype=np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    for k in range(1, n):
        x, y, w, h = stats[k, :4]
        out[y : y + h, x : x + w] = 1
    return out


def _row_payload(args: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image and its masks at cache resolution (runs in worker processes)."""
    (image_id, path, hw, labels, tasks, objects, size, seg, inst, ann, spur) = args
    image = read_image(path)
    h, w = hw
    if image.shape != (h, w):
        raise DataFormatError(path, f"image is {image.shape[1]}x{image.shape[0]} (w x h) but the manifest says {w}x{h}", where=image_id)
    small = resize_image(image, size)
    t = len(tasks)
    masks = np.zeros((t, size, size), dtype=np.uint8)
    boxes = np.zeros((t, size, size), dtype=np.uint8)
    known = np.zeros(t, dtype=bool)
    for j, task in enumerate(tasks):
        full = None
        if seg is not None and task in seg:
            full = decode_rle(seg[task], source="gt_segmentations", key=f"{image_id}/{task}")
            if full.shape != (h, w):
                raise DataFormatError("gt_segmentations", f"mask size {list(full.shape)} disagrees with image size [{h}, {w}]", where=f"{image_id}/{task}")
            known[j] = True
        elif labels[j] == 0:
            known[j] = True  # a negative label means an empty mask is known
        if full is None or not full.any():
            continue
        masks[j] = resize_mask(full, size)
        if ann is not None and task in ann:
            full_boxes = boxes_from_polygons(ann[task], h, w)
        elif inst is not None and task in inst:
            full_boxes = np.zeros((h, w), dtype=np.uint8)
            for k, rle in enumerate(inst[task]):
                full_boxes |= boxes_from_mask(decode_rle(rle, source="instance_segmentations", key=f"{image_id}/{task}/{k}"))
        else:
            full_boxes = boxes_from_mask(full)
        boxes[j] = resize_mask(full_boxes, size)
    spurious = np.zeros((len(objects), size, size), dtype=np.uint8)
    for k, obj in enumerate(objects):
        if spur is not None and obj in spur:
            full = decode_rle(spur[obj], source="spurious_segmentations", key=f"{image_id}/{obj}")
            spurious[k] = resize_mask(full, size, SPURIOUS_THRESHOLD)
    return small, masks, boxes, spurious, known


def _variant_payload(args: tuple[str, str, int]) -> np.ndarray:
    _, path, size = args
    return resize_image(read_image(path), size)


def build_cache(spec: CacheSpec, folder: str | os.PathLike[str], *, progress: bool = True) -> None:
    """Decode, resize and write every image and mask of ``spec`` into ``folder`` (atomically).

    Args:
        spec: What to cache.
        folder: Destination folder (replaced only when the new cache is complete).
        progress: Show progress bars.
    """
    if spec.size < 8:
        raise ParameterError("ingestion.cache.size", f"must be >= 8 pixels, got {spec.size}")
    n, t, k, s = len(spec.image_ids), len(spec.tasks), len(spec.objects), spec.size
    jobs = (
        (
            image_id,
            path,
            hw,
            spec.labels[i],
            spec.tasks,
            spec.objects,
            s,
            spec.segmentations.get(image_id),
            spec.instance_segmentations.get(image_id),
            spec.annotations.get(image_id),
            spec.spurious_segmentations.get(image_id),
        )
        for i, (image_id, path, hw) in enumerate(zip(spec.image_ids, spec.paths, spec.sizes))
    )
    with atomic_dir(folder) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, s, s))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, t, s, s))
        boxes = np.lib.format.open_memmap(tmp / "boxes.npy", mode="w+", dtype=np.uint8, shape=(n, t, s, s))
        spurious = np.lib.format.open_memmap(tmp / "spurious.npy", mode="w+", dtype=np.uint8, shape=(n, k, s, s))
        has_mask = np.zeros((n, t), dtype=bool)
        results = _map(_row_payload, jobs, spec.n_jobs, total=n, desc="caching images", progress=progress)
        for i, (img, msk, box, spur, known) in enumerate(results):
            images[i], masks[i], boxes[i], spurious[i], has_mask[i] = img, msk, box, spur, known
        for arr in (images, masks, boxes, spurious):
            arr.flush()
        del images, masks, boxes, spurious
        np.save(tmp / "has_mask.npy", has_mask)
        variant_ids: dict[str, list[str]] = {}
        if spec.variants:
            (tmp / "variants").mkdir()
        for name, mapping in sorted(spec.variants.items()):
            ids = sorted(mapping)
            arr = np.lib.format.open_memmap(tmp / "variants" / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(len(ids), s, s))
            for i, img in enumerate(_map(_variant_payload, ((i, mapping[i], s) for i in ids), spec.n_jobs, total=len(ids), desc=f"caching '{name}' renders", progress=progress)):
                arr[i] = img
            arr.flush()
            del arr
            variant_ids[name] = ids
        index = {
            "format_version": CACHE_FORMAT_VERSION,
            "fingerprint": spec.fingerprint(),
            "size": s,
            "tasks": spec.tasks,
            "objects": spec.objects,
            "image_ids": spec.image_ids,
            "variant_ids": variant_ids,
        }
        write_text_atomic(tmp / "index.json", json.dumps(index))
    logger.info("Image cache: %d images at %dx%d, %d tasks, %d objects, variants %s -> %s", n, s, s, t, k, sorted(variant_ids), folder)


def _map(func: Any, jobs: Iterable[Any], n_jobs: int, *, total: int, desc: str, progress: bool) -> Iterable[Any]:
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if n_jobs <= 1:
            for job in jobs:
                yield func(job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=n_jobs) as pool:
                for result in pool.map(func, jobs, chunksize=16):
                    yield result
                    bar.update()
    finally:
        bar.close()


def read_cache_index(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The cache's ``index.json`` or None if there is no complete cache in ``folder``."""
    path = Path(folder) / "index.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def load_cache(folder: str | os.PathLike[str], *, mmap: bool = True) -> ImageCache:
    """Open a cache folder (arrays memory-mapped read-only by default)."""
    folder = Path(folder)
    index = read_cache_index(folder)
    if index is None:
        raise DataFormatError(folder, "no image cache here (index.json missing or unreadable); run the ingestion pipeline")
    mode = "r" if mmap else None
    variants = {name: np.load(folder / "variants" / f"{name}.npy", mmap_mode=mode) for name in index["variant_ids"]}
    return ImageCache(
        image_ids=list(index["image_ids"]),
        tasks=list(index["tasks"]),
        objects=list(index["objects"]),
        size=int(index["size"]),
        images=np.load(folder / "images.npy", mmap_mode=mode),
        masks=np.load(folder / "masks.npy", mmap_mode=mode),
        boxes=np.load(folder / "boxes.npy", mmap_mode=mode),
        spurious=np.load(folder / "spurious.npy", mmap_mode=mode),
        has_mask=np.load(folder / "has_mask.npy"),
        variants=variants,
        variant_ids={k: list(v) for k, v in index["variant_ids"].items()},
        fingerprint=str(index.get("fingerprint", "")),
    )


def make_cache_spec(
    manifest: pd.DataFrame,
    tasks: Sequence[str],
    size: int,
    *,
    segmentations: Mapping[str, Any] | None = None,
    instance_segmentations: Mapping[str, Any] | None = None,
    annotations: Mapping[str, Any] | None = None,
    spurious_segmentations: Mapping[str, Any] | None = None,
    objects: Sequence[str] = (),
    variants: Mapping[str, Mapping[str, str]] | None = None,
    n_jobs: int = 1,
) -> CacheSpec:
    """Build a ``CacheSpec`` from a manifest and the ground truth dicts."""
    if not isinstance(size, int) or size < 8:
        raise ParameterError("ingestion.cache.size", f"must be an integer >= 8, got {size!r}")
    if not isinstance(n_jobs, int) or n_jobs < 1:
        raise ParameterError("ingestion.n_jobs", f"must be an integer >= 1, got {n_jobs!r}")
    ann = {
        image_id: {task: polys for task, polys in entry.items() if task != "img_size"}
        for image_id, entry in (annotations or {}).items()
    }
    return CacheSpec(
        image_ids=manifest["image_id"].astype(str).tolist(),
        paths=manifest["path"].astype(str).tolist(),
        sizes=list(zip(manifest["height"].astype(int), manifest["width"].astype(int))),
        labels=manifest[list(tasks)].to_numpy(dtype=float),
        tasks=list(tasks),
        objects=list(objects),
        size=int(size),
        segmentations=dict(segmentations or {}),
        instance_segmentations=dict(instance_segmentations or {}),
        annotations=ann,
        spurious_segmentations=dict(spurious_segmentations or {}),
        variants={k: dict(v) for k, v in (variants or {}).items()},
        n_jobs=n_jobs,
    )

