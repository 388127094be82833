"""The model-input image cache: resized uint8 images and masks in memory-mapped arrays.

Training never decodes an image file in its loop: ingestion decodes every image once
(in parallel, with a progress bar), resizes it to ``size`` x ``size`` and writes it, with
its masks, into ``.npy`` files that are opened with ``mmap_mode="r"``.

Folder layout::

    index.json               image ids (row order), tasks, objects, size, fingerprint,
                             render ids (``render_ids``) and masked renders (``render_masks``)
    images.npy               (N, S, S) uint8
    masks.npy                (N, T, S, S) uint8   pathology masks (0/1)
    boxes.npy                (N, T, S, S) uint8   filled bounding boxes of each instance
    spurious.npy             (N, K, S, S) uint8   spurious-object masks (chest tube, ...)
    has_mask.npy             (N, T) bool          location label known for (image, task)
    renders/<name>.npy       (M, S, S) uint8      counterfactual renders (ids in index.json)
    renders/<name>.mask.npy  (M, S, S) uint8      where the render may differ from the
                                                  original (artefact renders only)

The cache is rebuilt when its fingerprint (ids, settings, and each source file's size,
nanosecond mtime, inode change time and inode: ``_file_stamp``) changes or when
``verify_cache_files`` finds a file damaged: ``index.json`` records every array file's size
and a sampled hash at build time. A build writes into ``.image_cache.tmp.*`` next to the
cache (with an owner record); an interrupt (SIGINT / SIGTERM) stops the worker processes and
removes it, and a later build removes any such folder whose owner process no longer runs.
Before writing, ``check_disk_space`` refuses a build the disk cannot hold.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from cxr_spurious.errors import (
    ContractError,
    CxrSpuriousError,
    DataFormatError,
    ParameterError,
    check_integer,
)
from cxr_spurious.io.atomic import (
    atomic_dir,
    destination,
    stale_old_reason,
    write_text_atomic,
)
from cxr_spurious.io.images import read_image
from cxr_spurious.io.masks import decode_rle
from cxr_spurious.progress import progress_bar

logger = logging.getLogger(__name__)

# 2: index.json records each array file's size and sampled hash (``files``).
# 3: counterfactual renders under ``renders/`` (was ``variants/``), ``render_ids`` (was
#    ``variant_ids``) and render masks (``renders/<name>.mask.npy``, ``render_masks``).
CACHE_FORMAT_VERSION = 3
# How pixels and masks are derived (in the fingerprint, so that a cache made under older
# rules is rebuilt): 2: a non-empty mask keeps its largest-fraction pixel, and polygons
# wholly outside the image draw no box. 3: boxes come from instance masks before polygons
# (NIH boxes as their masks, [x, x + w), not a row and column larger).
CACHE_RULES_VERSION = 3
# The render name that means the cached original images.
ORIGINAL_RENDER = "original"
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
    renders: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    render_masks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    n_jobs: int = 1

    def fingerprint(self) -> str:
        """Hash of everything that determines the cache content."""
        h = hashlib.sha256()
        h.update(
            json.dumps(
                {
                    "v": CACHE_FORMAT_VERSION,
                    "rules": CACHE_RULES_VERSION,
                    "size": self.size,
                    "tasks": self.tasks,
                    "objects": self.objects,
                }
            ).encode()
        )
        for image_id, path in zip(self.image_ids, self.paths):
            h.update(image_id.encode())
            h.update(_file_stamp(path).encode())
        for name in sorted(self.renders):
            for image_id, path in sorted(self.renders[name].items()):
                h.update(f"{name}|{image_id}|{_file_stamp(path)}".encode())
        blobs = (
            self.segmentations,
            self.instance_segmentations,
            self.annotations,
            self.spurious_segmentations,
            self.render_masks,
        )
        for blob in blobs:
            inner = hashlib.sha256()
            _hash_json(inner, blob, depth=2)
            h.update(inner.digest())
        h.update(np.nan_to_num(np.asarray(self.labels, dtype=float), nan=-1).tobytes())
        return h.hexdigest()[:16]


def _hash_json(h: Any, obj: Any, depth: int) -> None:
    """Feed a JSON-like document to ``h`` entry by entry (keys sorted) down to ``depth``
    levels of mappings, so that the whole document is never encoded as one string (its
    encoding is several times the size of the document)."""
    if depth > 0 and isinstance(obj, Mapping):
        h.update(b"{")
        for key in sorted(obj, key=str):
            h.update(json.dumps(str(key)).encode() + b":")
            _hash_json(h, obj[key], depth - 1)
            h.update(b",")
        h.update(b"}")
    else:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())


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
    renders: dict[str, np.ndarray] = field(default_factory=dict)
    render_ids: dict[str, list[str]] = field(default_factory=dict)
    render_masks: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprint: str = ""
    _rows: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._rows = {image_id: i for i, image_id in enumerate(self.image_ids)}
        n = len(self.image_ids)
        for name, arr in (
            ("images", self.images),
            ("masks", self.masks),
            ("boxes", self.boxes),
            ("spurious", self.spurious),
            ("has_mask", self.has_mask),
        ):
            if arr.shape[0] != n:
                raise ContractError(
                    f"image cache array '{name}' has {arr.shape[0]} rows for {n} image ids"
                )

    def __len__(self) -> int:
        return len(self.image_ids)

    def row(self, image_id: str) -> int:
        """Row of ``image_id``; raises ``ContractError`` if it is not cached."""
        try:
            return self._rows[image_id]
        except KeyError as exc:
            raise ContractError(
                f"image '{image_id}' is not in the image cache ({len(self)} images)"
            ) from exc

    def rows(self, image_ids: Iterable[str]) -> np.ndarray:
        """Rows of several ids, in order."""
        return np.array([self.row(i) for i in image_ids], dtype=np.int64)

    def _render_rows(self, name: str, image_ids: Sequence[str]) -> list[int]:
        if name not in self.renders:
            raise ContractError(
                f"image cache has no render '{name}'; it has {sorted(self.renders)}"
            )
        lookup = {i: r for r, i in enumerate(self.render_ids[name])}
        missing = [i for i in image_ids if i not in lookup]
        if missing:
            raise ContractError(
                f"render '{name}' lacks {len(missing)} image(s), e.g. {missing[:3]}"
            )
        return [lookup[i] for i in image_ids]

    def render(self, name: str, image_ids: Sequence[str]) -> np.ndarray:
        """Render ``name`` of ``image_ids`` as an (n, S, S) uint8 array.

        ``"original"`` (``ORIGINAL_RENDER``) is the cached images themselves; any other name
        is a counterfactual render (``no_tube``, ``with_<kind>``, ...).
        """
        if name == ORIGINAL_RENDER:
            return np.asarray(self.images[self.rows(image_ids)])
        rows = self._render_rows(name, image_ids)
        return np.asarray(self.renders[name][rows])

    def render_mask(self, name: str, image_ids: Sequence[str]) -> np.ndarray:
        """Mask of render ``name`` for ``image_ids`` as an (n, S, S) uint8 0/1 array.

        The mask holds every cache pixel where the render may differ from the original
        (the artefact's mask, any overlap at cache resolution); outside it the render
        equals the original exactly.

        Raises:
            ContractError: the cache has no such render, the render has no mask (e.g.
                ``no_tube``), or an image is not in the render.
        """
        rows = self._render_rows(name, image_ids)
        if name not in self.render_masks:
            raise ContractError(
                f"render '{name}' of the image cache has no mask; renders with masks:"
                f" {sorted(self.render_masks)}"
            )
        return np.asarray(self.render_masks[name][rows])

    def select_renders(self, image_ids: Sequence[str], names: Sequence[str]) -> np.ndarray:
        """One render per image: image ``i`` from render ``names[i]`` (``"original"`` allowed).

        A confounding level of the shortcut sweep is such a choice (which images carry the
        artefact). Returns an (n, S, S) uint8 array in the order of ``image_ids``.
        """
        if len(image_ids) != len(names):
            raise ContractError(
                f"select_renders: {len(image_ids)} image ids but {len(names)} render names"
            )
        out = np.empty((len(image_ids), self.size, self.size), dtype=np.uint8)
        for name in sorted(set(names)):
            where = [k for k, n in enumerate(names) if n == name]
            out[where] = self.render(name, [image_ids[k] for k in where])
        return out

    def task_index(self, task: str) -> int:
        """Column of ``task`` in ``masks``/``boxes``."""
        if task not in self.tasks:
            raise ContractError(
                f"task '{task}' is not in the image cache; cached tasks: {self.tasks}"
            )
        return self.tasks.index(task)


def _file_stamp(path: str) -> str:
    """What identifies a source file's version without reading it (one ``stat``).

    Size and whole-second mtime alone miss a same-size rewrite within the same second and a
    file copied in with its mtime preserved (``cp -p``, ``rsync -a``, ``tar x``); the
    nanosecond mtime, the inode change time (which no copy tool can preserve) and the inode
    number catch both. ``chmod``/``chown``/``touch`` of a source also change the stamp (one
    extra rebuild, never a stale cache).
    """
    try:
        st = os.stat(path)
        return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    except OSError:
        return f"{path}|missing"


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 image to (size, size) with area interpolation (aspect ratio not kept)."""
    interp = cv2.INTER_AREA if min(image.shape) >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def resize_mask(
    mask: np.ndarray,
    size: int,
    threshold: float = PATHOLOGY_THRESHOLD,
    *,
    keep_nonempty: bool = False,
) -> np.ndarray:
    """Resize a 0/1 mask to (size, size): area fraction >= ``threshold`` is inside.

    ``keep_nonempty``: a non-empty mask whose every cache pixel falls below ``threshold``
    (a lesion smaller than about half a cache pixel) keeps the pixel(s) with the largest
    area fraction, so a positive finding is not cached as a known-empty location.
    """
    if not mask.any():
        return np.zeros((size, size), dtype=np.uint8)
    frac = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    out = (frac >= threshold).astype(np.uint8)
    if keep_nonempty and not out.any():
        out = ((frac > 0) & (frac == frac.max())).astype(np.uint8)
    return out


def boxes_from_polygons(
    polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int
) -> np.ndarray:
    """Filled bounding box of each polygon, unioned, as an (h, w) uint8 mask."""
    out = np.zeros((height, width), dtype=np.uint8)
    for poly in polygons:
        pts = np.asarray(poly, dtype=float)
        if pts.ndim != 2 or len(pts) == 0:
            continue
        x0, y0 = np.floor(pts.min(axis=0)).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)
        if x1 < x0 or y1 < y0:  # wholly outside the image (a negative slice end would
            continue  # otherwise fill most of it)
        out[y0 : y1 + 1, x0 : x1 + 1] = 1
    return out


def boxes_from_mask(mask: np.ndarray) -> np.ndarray:
    """Filled bounding box of each connected component of ``mask``."""
    out = np.zeros_like(mask, dtype=np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    for k in range(1, n):
        x, y, w, h = stats[k, :4]
        out[y : y + h, x : x + w] = 1
    return out


def _check_mask_size(mask: np.ndarray, hw: tuple[int, int], source: str, key: str) -> None:
    """A full-resolution mask must be the image's size (a transposed or other-sized mask
    would otherwise be stretched onto it)."""
    if mask.shape != tuple(hw):
        raise DataFormatError(
            source,
            f"mask size {list(mask.shape)} disagrees with image size {list(hw)}",
            where=key,
        )


def _row_payload(
    args: tuple[Any, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image and its masks at cache resolution (runs in worker processes)."""
    (image_id, path, hw, labels, tasks, objects, size, seg, inst, ann, spur) = args
    image = read_image(path)
    h, w = hw
    if image.shape != (h, w):
        raise DataFormatError(
            path,
            f"image is {image.shape[1]}x{image.shape[0]} (w x h) but the manifest says {w}x{h}",
            where=image_id,
        )
    small = resize_image(image, size)
    t = len(tasks)
    masks = np.zeros((t, size, size), dtype=np.uint8)
    boxes = np.zeros((t, size, size), dtype=np.uint8)
    known = np.zeros(t, dtype=bool)
    for j, task in enumerate(tasks):
        full = None
        if seg is not None and task in seg:
            full = decode_rle(seg[task], source="gt_segmentations", key=f"{image_id}/{task}")
            _check_mask_size(full, (h, w), "gt_segmentations", f"{image_id}/{task}")
            known[j] = True
        elif labels[j] == 0:
            known[j] = True  # a negative label means an empty mask is known
        if full is None or not full.any():
            continue
        masks[j] = resize_mask(full, size, keep_nonempty=True)
        # Instance masks before polygons: they are exact extents (NIH's box_mask fills
        # [x, x + w), where the box of its corner polygon adds the outline's row and column).
        # Only NIH has both; CheXlocalize and the phantom have polygons, SIIM instances.
        if inst is not None and task in inst:
            full_boxes = np.zeros((h, w), dtype=np.uint8)
            for k, rle in enumerate(inst[task]):
                key = f"{image_id}/{task}/{k}"
                instance = decode_rle(rle, source="instance_segmentations", key=key)
                _check_mask_size(instance, (h, w), "instance_segmentations", key)
                full_boxes |= boxes_from_mask(instance)
        elif ann is not None and task in ann:
            full_boxes = boxes_from_polygons(ann[task], h, w)
        else:
            full_boxes = boxes_from_mask(full)
        boxes[j] = resize_mask(full_boxes, size, keep_nonempty=True)
    spurious = np.zeros((len(objects), size, size), dtype=np.uint8)
    for k, obj in enumerate(objects):
        if spur is not None and obj in spur:
            full = decode_rle(spur[obj], source="spurious_segmentations", key=f"{image_id}/{obj}")
            _check_mask_size(full, (h, w), "spurious_segmentations", f"{image_id}/{obj}")
            spurious[k] = resize_mask(full, size, SPURIOUS_THRESHOLD)
    return small, masks, boxes, spurious, known


def resize_support(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a 0/1 mask to (size, size) keeping every pixel it touches at all.

    Uses ``resize_image``'s interpolation, so a cached pixel outside the result depends on
    no pixel inside ``mask``: two images equal outside ``mask`` stay equal outside it.
    """
    interp = cv2.INTER_AREA if min(mask.shape) >= size else cv2.INTER_LINEAR
    reach = cv2.resize(mask.astype(np.float32), (size, size), interpolation=interp)
    return (reach > 0).astype(np.uint8)


def _render_payload(
    args: tuple[str, str, int, str, Any, tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode one render (and its mask, when it has one) at cache resolution; a render
    must be its original's size (``hw``), or it would be stretched onto the cache grid."""
    image_id, path, size, name, rle, hw = args
    image = read_image(path)
    if image.shape != tuple(hw):
        raise DataFormatError(
            path,
            f"render is {image.shape[1]}x{image.shape[0]} (w x h) but its original image is "
            f"{hw[1]}x{hw[0]}",
            where=f"{name}/{image_id}",
        )
    if rle is None:
        return resize_image(image, size), None
    full = decode_rle(rle, source=f"render_masks/{name}", key=image_id)
    if full.shape != image.shape:
        raise DataFormatError(
            path,
            f"render mask is {list(full.shape)} but the image is {list(image.shape)} (h, w)",
            where=f"{name}/{image_id}",
        )
    return resize_image(image, size), resize_support(full, size)


# Every build writes here first: ``.<name>.tmp.*`` (see ``atomic_dir``), with an owner record.
_OWNER_FILE = ".owner.json"
# A temporary folder without an owner record (written by an older version) counts as stale
# once nothing in it changed for this long; one from another host after a day.
_UNOWNED_GRACE_S = 120.0
_FOREIGN_GRACE_S = 86400.0
# Extra free space a build keeps in reserve (index.json, headers, filesystem slack).
_DISK_HEADROOM = 64 * 2**20
_ARRAY_FILES = ("images.npy", "masks.npy", "boxes.npy", "spurious.npy", "has_mask.npy")
_SAMPLE_BLOCK = 4096
_SAMPLE_BLOCKS = 32
REBUILD_HINT = "run `kedro run --pipeline ingestion` to rebuild the image cache"


def build_cache(spec: CacheSpec, folder: str | os.PathLike[str], *, progress: bool = True) -> None:
    """Decode, resize and write every image and mask of ``spec`` into ``folder`` (atomically).

    Stale temporary folders of interrupted builds are removed first and the free disk space
    is checked against the cache's size. SIGINT / SIGTERM during the build stop the worker
    processes and remove the temporary folder before the exception propagates.

    Args:
        spec: What to cache.
        folder: Destination folder (replaced only when the new cache is complete).
        progress: Show progress bars.

    Raises:
        ParameterError: ``ingestion.cache.size`` too small, or a cache too large for the disk.
    """
    if spec.size < 8:
        raise ParameterError("ingestion.cache.size", f"must be >= 8 pixels, got {spec.size}")
    # The source files' stamps before any is read: a file rewritten during the build then
    # no longer matches the record, and the next save rebuilds instead of keeping old pixels.
    fingerprint = spec.fingerprint()
    original_hw = {i: tuple(hw) for i, hw in zip(spec.image_ids, spec.sizes, strict=True)}
    folder = Path(folder)
    n, t, k, s = len(spec.image_ids), len(spec.tasks), len(spec.objects), spec.size
    jobs = (
        (
            i,
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
            ),
        )
        for i, (image_id, path, hw) in enumerate(zip(spec.image_ids, spec.paths, spec.sizes))
    )
    remove_stale_builds(folder)
    check_disk_space(spec, folder)
    with _sigterm_raises(), atomic_dir(folder) as tmp:
        (tmp / _OWNER_FILE).write_text(json.dumps(_owner_record()))
        for name, shape in (
            ("images", (n, s, s)),
            ("masks", (n, t, s, s)),
            ("boxes", (n, t, s, s)),
            ("spurious", (n, k, s, s)),
        ):
            _allocate(tmp / f"{name}.npy", shape)
        has_mask = np.zeros((n, t), dtype=bool)
        render_ids: dict[str, list[str]] = {}
        try:
            with _worker_pool(spec.n_jobs) as pool:
                write_row = functools.partial(_cache_row, str(tmp), _row_payload)
                for i, known in _map(
                    write_row, jobs, pool, total=n, desc="caching images", progress=progress
                ):
                    has_mask[i] = known
                if spec.renders:
                    (tmp / "renders").mkdir()
                for name, mapping in sorted(spec.renders.items()):
                    ids = sorted(mapping)
                    masks = spec.render_masks.get(name)
                    target, mask_target = (tmp / f for f in _render_files(name))
                    _allocate(target, (len(ids), s, s))
                    if masks is not None:
                        _allocate(mask_target, (len(ids), s, s))
                    paths = (str(target), str(mask_target) if masks is not None else None)
                    write_render = functools.partial(_cache_render, paths, _render_payload)
                    renders = (
                        (
                            r,
                            (i, mapping[i], s, name, None if masks is None else masks[i],
                             original_hw[i]),
                        )
                        for r, i in enumerate(ids)
                    )  # fmt: skip
                    desc = f"caching '{name}' renders"
                    for _ in _map(
                        write_render, renders, pool, total=len(ids), desc=desc, progress=progress
                    ):
                        pass
                    render_ids[name] = ids
        finally:
            _close_targets()
        np.save(tmp / "has_mask.npy", has_mask)
        index = {
            "format_version": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "size": s,
            "tasks": spec.tasks,
            "objects": spec.objects,
            "image_ids": spec.image_ids,
            "render_ids": render_ids,
            "render_masks": sorted(spec.render_masks),
            "files": {
                name: _file_record(tmp / name)
                for name in _array_files(render_ids, spec.render_masks)
            },
        }
        write_text_atomic(tmp / "index.json", json.dumps(index))
        (tmp / _OWNER_FILE).unlink()
    logger.info(
        "Image cache: %d images at %dx%d, %d tasks, %d objects, renders %s (with masks %s) -> %s",
        *(n, s, s, t, k),
        sorted(render_ids),
        sorted(spec.render_masks),
        folder,
    )


def _allocate(path: Path, shape: tuple[int, ...]) -> None:
    """Create a zero-filled uint8 ``.npy`` file that workers then fill in place."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    del arr


# Arrays a process has open for writing (``np.load(mmap_mode="r+")``), by path.
_TARGETS: dict[str, np.ndarray] = {}


def _target(path: str) -> np.ndarray:
    arr = _TARGETS.get(path)
    if arr is None:
        arr = _TARGETS[path] = np.load(path, mmap_mode="r+")
    return arr


def _close_targets() -> None:
    # No msync: the pages are shared with every process through the page cache, and a
    # worker that synced a large cache on exit could outlast ``_WorkerPool.close``.
    _TARGETS.clear()


def _cache_row(
    folder: str, payload: Any, item: tuple[int, tuple[Any, ...]]
) -> tuple[int, np.ndarray]:
    """Decode row ``i`` with ``payload`` and write it into the arrays of ``folder``.

    Workers write into the memory-mapped files themselves, so only ``(i, has_mask row)``
    goes back through their pipe (a few bytes, written atomically).
    """
    i, job = item
    img, msk, box, spur, known = payload(job)
    for name, value in (("images", img), ("masks", msk), ("boxes", box), ("spurious", spur)):
        _target(os.path.join(folder, f"{name}.npy"))[i] = value
    return i, known


def _cache_render(
    paths: tuple[str, str | None], payload: Any, item: tuple[int, tuple[Any, ...]]
) -> int:
    """Decode render row ``i`` (and its mask) and write it into the render's arrays."""
    i, job = item
    image, mask = payload(job)
    _target(paths[0])[i] = image
    if paths[1] is not None:
        _target(paths[1])[i] = mask
    return i


def _map(
    func: Any,
    items: Iterable[Any],
    pool: _WorkerPool | None,
    *,
    total: int,
    desc: str,
    progress: bool,
) -> Iterator[Any]:
    """``func`` over ``items`` (in the pool's workers when there is one), results unordered."""
    bar = progress_bar(total=total, desc=desc, unit="img", disable=not progress)
    try:
        results = (
            (func(item) for item in items) if pool is None else pool.imap_unordered(func, items)
        )
        for result in results:
            yield result
            bar.update()
    finally:
        bar.close()


class WorkerError(CxrSpuriousError):
    """A cache worker process failed outside the job itself.

    It died, or its error could not be sent.
    """


def _worker_context() -> Any:
    """The fork server (its process preloads this module, so a worker starts in
    milliseconds without the parent's memory), or spawn where there is none."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _worker_loop(conn: Connection) -> None:
    """Run ``(func, chunk)`` messages until told to stop; SIGINT is left to the parent.

    One cv2 thread: the pool has a worker per core. The objects inherited from the fork
    server are frozen (``gc.freeze``), so that this worker's collections do not write to
    their pages and copy them."""
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cv2.setNumThreads(1)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        func, chunk = message
        try:
            reply: tuple[str, Any] = ("ok", [func(item) for item in chunk])
        except Exception as exc:  # sent to the parent, which raises it
            reply = ("error", (exc, traceback.format_exc()))
        try:
            conn.send(reply)
        except Exception:  # the error itself cannot be pickled
            conn.send(("error", (WorkerError(traceback.format_exc()), "")))
    _close_targets()


class _WorkerPool:
    """Worker processes that each talk to the parent over their own pipe.

    Unlike ``concurrent.futures.ProcessPoolExecutor`` there are no helper threads and no
    locks shared between workers, so ``stop()`` can end the workers at any moment (Ctrl-C,
    SIGTERM) without leaving a thread that blocks the interpreter's exit.

    The workers come from a fork server (``_worker_context``), not from this process: a
    worker forked from here would share the ground truth of every image with it, and each
    payload the parent then reads and pickles touches those objects' reference counts, so
    the parent copies the shared pages: memory that grows with the number of images.
    """

    def __init__(self, n_jobs: int, chunksize: int = 4, queued: int = 2) -> None:
        ctx = _worker_context()
        self._chunksize, self._queued = chunksize, queued
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        for _ in range(n_jobs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_loop, args=(child,), daemon=True, name="image-cache-worker"
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)

    def imap_unordered(self, func: Any, items: Iterable[Any]) -> Iterator[Any]:
        items = iter(items)
        in_flight = [0] * len(self._conns)

        def feed(w: int) -> None:
            chunk = list(itertools.islice(items, self._chunksize))
            if chunk:
                self._conns[w].send((func, chunk))
                in_flight[w] += 1

        for _ in range(self._queued):
            for w in range(len(self._conns)):
                feed(w)
        while any(in_flight):
            busy = [self._conns[w] for w in range(len(self._conns)) if in_flight[w]]
            ready = mp_connection.wait(busy + [p.sentinel for p in self._procs])
            for w, conn in enumerate(self._conns):
                if conn not in ready:
                    continue
                try:
                    status, payload = conn.recv()
                except (EOFError, OSError) as exc:  # the worker ended and closed its pipe
                    self._procs[w].join(1.0)
                    raise self._died(self._procs[w]) from exc
                in_flight[w] -= 1
                if status == "error":
                    error, remote = payload
                    raise error from (WorkerError(remote) if remote else None)
                yield from payload
                feed(w)
            for proc in self._procs:
                if proc.sentinel in ready and not proc.is_alive():
                    raise self._died(proc)

    @staticmethod
    def _died(proc: Any) -> WorkerError:
        code = "still running" if proc.exitcode is None else f"exit code {proc.exitcode}"
        return WorkerError(
            f"image-cache worker {proc.pid} died ({code}) while building the cache (out of memory?)"
        )

    def close(self) -> None:
        """Let the workers finish and exit (after a complete build)."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(10)
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (then kill) every worker that still runs and reap it."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        for conn in self._conns:
            conn.close()


@contextlib.contextmanager
def _worker_pool(n_jobs: int) -> Iterator[_WorkerPool | None]:
    """A ``_WorkerPool`` (None for ``n_jobs <= 1``) whose workers are stopped on any exception."""
    if n_jobs <= 1:
        yield None
        return
    pool = _WorkerPool(n_jobs)
    try:
        yield pool
    except BaseException:
        pool.stop()
        raise
    pool.close()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a build runs, SIGTERM raises ``SystemExit(143)`` so that cleanup code runs.

    Only in the main thread and only when SIGTERM still has its default action (a handler
    installed by someone else is left alone). Repeated SIGTERMs during cleanup are ignored.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ----------------------------------------------------------------------------- stale builds


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, Linux) or None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    return True


def _owner_record() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "start": _process_start(pid),
        "host": socket.gethostname(),
        "created": time.time(),
    }


def _latest_mtime(path: Path) -> float:
    stamps = [path.stat().st_mtime]
    for child in path.rglob("*"):
        with contextlib.suppress(OSError):
            stamps.append(child.stat().st_mtime)
    return max(stamps)


def _stale_reason(path: Path, now: float) -> str | None:
    """Why a leftover build folder next to the cache is stale, or None if it may be in use."""
    name = path.name
    if ".old." in name:  # ``atomic_dir``'s ``.<cache>.old.<pid>.<random>`` mid-swap
        return stale_old_reason(path)
    try:
        owner = json.loads((path / _OWNER_FILE).read_text())
        pid = int(owner["pid"])
    except FileNotFoundError:
        owner = None
    except (OSError, ValueError, KeyError, TypeError):
        return "its owner record is unreadable"
    if owner is None:
        age = now - _latest_mtime(path)
        return f"no owner record and unchanged for {age:.0f} s" if age > _UNOWNED_GRACE_S else None
    if owner.get("host") != socket.gethostname():
        age = now - _latest_mtime(path)
        return (
            f"written on host {owner.get('host')!r}, unchanged for {age:.0f} s"
            if age > _FOREIGN_GRACE_S
            else None
        )
    if not _pid_running(pid):
        return f"its process {pid} no longer runs"
    start = _process_start(pid)
    if owner.get("start") is not None and start is not None and start != owner["start"]:
        return f"its process {pid} ended (the pid now belongs to another process)"
    return None


def remove_stale_builds(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary folders that interrupted builds of ``folder`` left next to it.

    A ``.<name>.tmp.*`` folder is stale when the process recorded in its owner record no
    longer runs (a concurrent build's folder is kept); one without a record (an older
    version's) when nothing in it changed for two minutes.

    Returns:
        The folders removed.
    """
    folder = destination(folder)  # a build of a linked folder runs next to its target
    if not folder.parent.is_dir():
        return []
    now = time.time()
    removed = []
    for pattern in (f".{folder.name}.tmp.*", f".{folder.name}.old.*"):
        for path in sorted(folder.parent.glob(pattern)):
            try:
                reason = _stale_reason(path, now) if path.is_dir() else None
            except OSError:
                continue  # vanished meanwhile (its build finished or cleaned up)
            if reason is None:
                continue
            shutil.rmtree(path, ignore_errors=True)
            logger.warning(
                "Removed %s, left by an interrupted image-cache build (%s)", path, reason
            )
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- disk space


def estimate_cache_bytes(spec: CacheSpec) -> int:
    """Bytes the arrays of ``spec``'s cache take on disk (headers and index not included)."""
    n, t, k, s = len(spec.image_ids), len(spec.tasks), len(spec.objects), spec.size
    renders = sum(len(mapping) for mapping in spec.renders.values())
    masks = sum(len(ids) for name, ids in spec.renders.items() if name in spec.render_masks)
    return n * s * s * (1 + 2 * t + k) + n * t + (renders + masks) * s * s


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_disk_space(spec: CacheSpec, folder: str | os.PathLike[str]) -> None:
    """Refuse a build the disk holding ``folder`` has no room for.

    Raises:
        ParameterError: (``ingestion.cache.size``) with the needed and free bytes and the folder.
    """
    folder = destination(folder).absolute()  # the build is written next to a link's target
    probe = folder.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = estimate_cache_bytes(spec) + _DISK_HEADROOM
    if need > free:
        n, t, k, s = len(spec.image_ids), len(spec.tasks), len(spec.objects), spec.size
        raise ParameterError(
            "ingestion.cache.size",
            f"the image cache {folder} needs about {_format_bytes(need)} "
            f"({need} bytes: {n} images x {s}x{s} px"
            f" x (1 image + 2 x {t} task masks + {k} object masks) + renders and their masks)"
            " but the disk has only"
            f" {_format_bytes(free)} ({free} bytes) free; "
            f"lower ingestion.cache.size (now {s}) or free space",
        )


# ----------------------------------------------------------------------------- file checks


def _render_files(name: str) -> tuple[str, str]:
    """The files of render ``name``: its images and its mask (when it has one)."""
    return f"renders/{name}.npy", f"renders/{name}.mask.npy"


def _array_files(render_ids: Iterable[str], masked: Iterable[str] = ()) -> list[str]:
    with_mask = set(masked)
    files = list(_ARRAY_FILES)
    for name in sorted(render_ids):
        image_file, mask_file = _render_files(name)
        files += [image_file, mask_file] if name in with_mask else [image_file]
    return files


def sampled_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's size and of 34 blocks of 4 KiB spread over it (all of a small file)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= _SAMPLE_BLOCK * (_SAMPLE_BLOCKS + 2):
            h.update(fh.read())
        else:
            last = size - _SAMPLE_BLOCK
            for j in range(_SAMPLE_BLOCKS + 2):
                fh.seek(last * j // (_SAMPLE_BLOCKS + 1))
                h.update(fh.read(_SAMPLE_BLOCK))
    return h.hexdigest()[:32]


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sampled_sha256": sampled_hash(path)}


def _npy_expected_bytes(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and total size in bytes that a ``.npy`` file's header promises."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except FileNotFoundError as exc:
        raise DataFormatError(path, f"is missing; {REBUILD_HINT}") from exc
    except (OSError, ValueError) as exc:
        raise DataFormatError(path, f"has no readable .npy header ({exc}); {REBUILD_HINT}") from exc
    return shape, dtype, offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _open_array(path: Path, mmap_mode: str | None) -> np.ndarray:
    """``np.load`` after checking that the file is as long as its header says."""
    shape, dtype, expected = _npy_expected_bytes(path)
    actual = path.stat().st_size
    if actual != expected:
        raise DataFormatError(
            path,
            f"is {actual} bytes but its header (shape {list(shape)}, {dtype}) needs {expected}: "
            f"truncated or damaged; {REBUILD_HINT}",
        )
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (OSError, ValueError) as exc:
        raise DataFormatError(path, f"cannot be read ({exc}); {REBUILD_HINT}") from exc


def verify_cache_files(
    folder: str | os.PathLike[str], index: Mapping[str, Any] | None = None
) -> list[str]:
    """Check every array file of a cache against its header and the record in ``index.json``.

    Args:
        folder: The cache folder.
        index: Its ``index.json`` (read from ``folder`` when None).

    Returns:
        One line per problem, each naming the file (empty when the cache is intact).
    """
    folder = Path(folder)
    index = read_cache_index(folder) if index is None else index
    if index is None:
        return [f"{folder / 'index.json'}: missing or unreadable"]
    records = index.get("files")
    if not isinstance(records, Mapping):
        return [
            f"{folder / 'index.json'}: records no file sizes and hashes (an older cache format)"
        ]
    problems = []
    if index.get("format_version") != CACHE_FORMAT_VERSION:
        return [f"{folder / 'index.json'}: {_old_format(index)}"]
    for name in _array_files(index.get("render_ids", {}), index.get("render_masks", [])):
        path = folder / name
        record = records.get(name)
        try:
            _, _, expected = _npy_expected_bytes(path)
            actual = path.stat().st_size
        except (DataFormatError, OSError) as exc:
            problems.append(f"{path}: missing or unreadable ({getattr(exc, 'problem', exc)})")
            continue
        if not isinstance(record, Mapping):
            problems.append(f"{path}: not recorded in index.json")
        elif actual != expected or actual != record.get("bytes"):
            problems.append(f"{path}: {actual} bytes, expected {expected} (truncated or damaged)")
        elif sampled_hash(path) != record.get("sampled_sha256"):
            problems.append(f"{path}: content differs from the hash recorded when it was built")
    return problems


def read_cache_index(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The cache's ``index.json`` or None if there is no complete cache in ``folder``."""
    path = Path(folder) / "index.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _old_format(index: Mapping[str, Any]) -> str:
    """Why a cache of another format version cannot be read (and how to rebuild it)."""
    return (
        f"written in image-cache format {index.get('format_version', 'unknown')}, this version"
        f" reads format {CACHE_FORMAT_VERSION} (counterfactual renders moved from variants/ to"
        f" renders/, with masks); {REBUILD_HINT}"
    )


def load_cache(folder: str | os.PathLike[str], *, mmap: bool = True) -> ImageCache:
    """Open a cache folder (arrays memory-mapped read-only by default).

    Raises:
        DataFormatError: no cache in ``folder``, a cache of another format version, or an
            array file that is missing, shorter or longer than its header says (naming the
            file and how to rebuild it).
    """
    folder = Path(folder)
    index = read_cache_index(folder)
    if index is None:
        raise DataFormatError(
            folder,
            "no image cache here (index.json missing or unreadable); run the ingestion pipeline",
        )
    if index.get("format_version") != CACHE_FORMAT_VERSION:
        raise DataFormatError(folder / "index.json", _old_format(index))
    mode = "r" if mmap else None
    renders = {n: _open_array(folder / _render_files(n)[0], mode) for n in index["render_ids"]}
    render_masks = {
        n: _open_array(folder / _render_files(n)[1], mode) for n in index["render_masks"]
    }
    return ImageCache(
        image_ids=list(index["image_ids"]),
        tasks=list(index["tasks"]),
        objects=list(index["objects"]),
        size=int(index["size"]),
        images=_open_array(folder / "images.npy", mode),
        masks=_open_array(folder / "masks.npy", mode),
        boxes=_open_array(folder / "boxes.npy", mode),
        spurious=_open_array(folder / "spurious.npy", mode),
        has_mask=_open_array(folder / "has_mask.npy", None),
        renders=renders,
        render_ids={k: list(v) for k, v in index["render_ids"].items()},
        render_masks=render_masks,
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
    renders: Mapping[str, Mapping[str, str]] | None = None,
    render_masks: Mapping[str, Mapping[str, Any]] | None = None,
    n_jobs: int = 1,
) -> CacheSpec:
    """Build a ``CacheSpec`` from a manifest and the ground truth dicts.

    Args:
        renders: ``{render: {image_id: path}}`` counterfactual renders.
        render_masks: ``{render: {image_id: rle}}`` masks of renders that have them; a
            render with masks needs one for each of its images.

    Raises:
        ParameterError: a bad size or ``n_jobs``.
        ContractError: masks of an unknown render, or a masked render missing an image's mask.
    """
    renders = {k: dict(v) for k, v in (renders or {}).items()}
    render_masks = {k: dict(v) for k, v in (render_masks or {}).items()}
    for name, masks in render_masks.items():
        if name not in renders:
            raise ContractError(
                f"render_masks name render '{name}', which has no images;"
                f" renders: {sorted(renders)}"
            )
        missing = sorted(set(renders[name]) - set(masks))
        if missing:
            raise ContractError(
                f"render '{name}' has no mask for {len(missing)} of its image(s),"
                f" e.g. {missing[:3]}"
            )
    size = check_integer(size, "ingestion.cache.size", low=8)
    n_jobs = check_integer(n_jobs, "ingestion.n_jobs", low=1)
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
        renders=renders,
        render_masks={
            name: {i: masks[i] for i in renders[name]} for name, masks in render_masks.items()
        },
        n_jobs=n_jobs,
    )
