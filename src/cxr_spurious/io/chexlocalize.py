"""The CheXlocalize file formats (DATASET_FORMATS.md section 3): every reader and writer.

* JSON files of the layout, objects keyed by cxr id (``load_json``):

  - polygon annotations ``{cxr_id: {"img_size": [h, w], task: [[[x, y], ...], ...]}}``
    (``check_annotations``; ``rasterize_annotations`` turns them into RLE the way the
    CheXlocalize reference code does);
  - segmentations ``{cxr_id: {task: {"size": [h, w], "counts": str}}}``
    (``validate_segmentation_json``, ``check_segmentations`` with the image sizes).

* Heatmap pickles ``<cxr_id>_<task>_map.pkl``: a protocol-3 ``pickle.dump`` of a dict with
  ``map`` tensor (1, 1, h, w) float32, ``prob`` float, ``task`` str, ``gt`` int,
  ``cxr_img`` tensor (3, h, w) float32 in [0, 1] (the model input, gray replicated to three
  channels) and ``cxr_dims`` (w, h) of the original image; CheXlocalize's evaluation
  upsamples ``map`` to ``cxr_dims`` itself. Reading goes through the project's restricted
  unpickler (``io.safe_pickle``) and builds only the values asked for
  (``read_heatmap_pickle``, ``read_heatmap_folder``: a lazy ``HeatmapSet``); writing is
  ``write_chexlocalize_folder``, and ``read_chexlocalize_folder`` reads such an export back
  (an unknown label, ``gt`` NaN in a ``HeatmapSet``, is written as ``gt = -1``).

The ingestion adapter (``data/adapters/chexlocalize.py``), the Kedro datasets, the saliency
export and the localization evaluation all use this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import numbers
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_spurious.errors import ContractError, DataFormatError, unknown_name_error
from cxr_spurious.heatmaps import INDEX_COLUMNS, HeatmapSet
from cxr_spurious.io.atomic import atomic_dir
from cxr_spurious.io.masks import (
    MAX_MASK_SIDE,
    decode_rle,
    encode_rle,
    rasterize_polygons,
    validate_rle,
)
from cxr_spurious.io.safe_pickle import (
    _READ_ERRORS,
    _Context,
    _open_size,
    _Record,
    _scan_opcodes,
    _TorchPickleUnpickler,
    load_torch_pickle,
    short_repr,
)
from cxr_spurious.parallel import ordered_map
from cxr_spurious.progress import progress_bar
from cxr_spurious.tasks import (
    CHEXLOCALIZE_PROB_ORDER,
    CHEXLOCALIZE_TASKS,
    CHEXPERT_OBSERVATIONS,
    PHANTOM_TASKS,
    task_column,
)

logger = logging.getLogger(__name__)

MAP_SUFFIX = "_map.pkl"
PICKLE_KEYS: tuple[str, ...] = ("map", "prob", "cxr_dims")
PICKLE_PROTOCOL = 3
UNKNOWN_GT = -1
# The task names a polygon annotation or a ground-truth segmentation may use.
ANNOTATION_TASKS: frozenset[str] = (
    frozenset(CHEXLOCALIZE_TASKS)
    | frozenset(PHANTOM_TASKS)
    | frozenset(task_column(o) for o in CHEXPERT_OBSERVATIONS)
)

# ----------------------------------------------------------------------------- names


def parse_map_filename(path: str | Path) -> tuple[str, str]:
    """``<cxr_id>_<task>_map.pkl`` -> (cxr_id, task); the task may contain spaces.

    Raises:
        DataFormatError: the name does not follow the pattern or the task is unknown.
    """
    name = Path(path).name
    if not name.endswith(MAP_SUFFIX) or name.count("_") < 2:
        raise DataFormatError(path, f"heatmap file name must be '<cxr_id>_<task>{MAP_SUFFIX}'")
    cxr_id, task = name[: -len(MAP_SUFFIX)].rsplit("_", 1)
    check_task(task, source=path)
    return cxr_id, task


def pickle_name(image_id: str, task: str) -> str:
    """File name of one map, e.g. ``patient1_study1_view1_frontal_Edema_map.pkl``."""
    return f"{image_id}_{task}{MAP_SUFFIX}"


def check_task(task: str, *, source: object, key: str | None = None) -> None:
    """Raise ``DataFormatError`` naming the file when ``task`` is not a CheXlocalize task."""
    if task not in CHEXLOCALIZE_TASKS:
        problem = str(unknown_name_error("task", task, CHEXLOCALIZE_TASKS))
        raise DataFormatError(source, problem, where=key)


# ----------------------------------------------------------------------------- JSON


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a local CheXlocalize JSON file (an object keyed by cxr id at top level).

    Raises:
        DataFormatError: the file cannot be read, is not valid JSON (the line is named) or
            is not a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFormatError(path, f"not a readable JSON file: {exc}") from exc
    return parse_json(text, source=path)


def parse_json(text: str, *, source: object) -> dict[str, Any]:
    """Parse the text of a CheXlocalize JSON file (``source`` names it in errors).

    Raises:
        DataFormatError: not valid JSON (the line is named) or not a JSON object.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}"
        raise DataFormatError(source, f"invalid JSON: {exc.msg}", where=where) from exc
    if not isinstance(data, dict):
        problem = f"expected a JSON object keyed by cxr id, got {type(data).__name__}"
        raise DataFormatError(source, problem)
    return data


def validate_segmentation_json(
    data: Mapping[str, Any],
    *,
    source: object,
    tasks: Sequence[str] = CHEXLOCALIZE_TASKS,
    decode: bool = False,
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """Check the names and every RLE of a segmentation JSON ``{cxr_id: {task: rle}}``.

    Every RLE goes through ``io.masks.validate_rle`` (pycocotools alphabet, complete
    counts, runs >= 0 summing to h x w, size within bounds and, with ``sizes``, equal to
    the image's) before any pycocotools call can see it: a malformed counts string makes
    pycocotools' ``merge`` loop without end. Linear in the JSON's size.

    Args:
        data: The JSON.
        source: The file, for error messages.
        tasks: The names an entry may use (CheXlocalize tasks by default).
        decode: Also decode each mask.
        sizes: ``{cxr_id: (h, w)}`` of the images, when known.

    Raises:
        DataFormatError: naming the file, the CXR and the task: unknown task or malformed RLE.
    """
    allowed = tuple(tasks)
    for cxr_id, entry in data.items():
        if not isinstance(entry, Mapping):
            problem = f"expected {{task: rle}}, got {type(entry).__name__}"
            raise DataFormatError(source, problem, where=str(cxr_id))
        for task, rle in entry.items():
            if task not in allowed:
                problem = str(unknown_name_error("task", str(task), allowed))
                raise DataFormatError(source, problem, where=str(cxr_id))
            key = f"{cxr_id}/{task}"
            size = None if sizes is None else sizes.get(str(cxr_id))
            validate_rle(rle, source=source, key=key, size=size)
            if decode:
                decode_rle(rle, source=source, key=key)


def check_segmentations(
    segmentations: Mapping[str, Any],
    source: Path | str,
    sizes: Mapping[str, tuple[int, int]],
    names: frozenset[str] | None = None,
) -> None:
    """Validate RLE segmentations: known names, decodable RLE of the image's size.

    Args:
        segmentations: ``{cxr_id: {name: rle}}``.
        source: The file, for error messages.
        sizes: ``{cxr_id: (h, w)}`` of the images.
        names: The names an entry may use (``ANNOTATION_TASKS`` by default).

    Raises:
        DataFormatError: naming the file, the CXR and the name: an RLE size that is not the
            image's, an unknown name or a malformed RLE.
    """
    for cxr_id, entry in segmentations.items():
        if cxr_id not in sizes:
            continue
        expected = list(sizes[cxr_id])
        for name, rle in entry.items() if isinstance(entry, Mapping) else ():
            size = rle.get("size") if isinstance(rle, Mapping) else None
            if isinstance(size, list | tuple) and list(size) != expected:
                problem = f"RLE size {list(size)} disagrees with the image's [h, w] {expected}"
                raise DataFormatError(source, problem, where=f"{cxr_id}/{name}")
    allowed = tuple(sorted(names if names is not None else ANNOTATION_TASKS))
    validate_segmentation_json(segmentations, source=source, tasks=allowed, decode=True)


def check_annotations(
    annotations: Mapping[str, Any], source: Path | str, sizes: Mapping[str, tuple[int, int]]
) -> None:
    """Validate CheXlocalize polygon annotations.

    Checks every task name (``ANNOTATION_TASKS``), every task's value (a list of
    polygons), every polygon (>= 3 points of 2 finite numbers) and ``img_size`` (two
    integers in 1..``MAX_MASK_SIDE``, the image's size).

    Args:
        annotations: ``{cxr_id: {"img_size": [h, w], task: polygons}}``.
        source: The file, for error messages.
        sizes: ``{cxr_id: (h, w)}`` of the images.

    Raises:
        DataFormatError: naming the file, the cxr id and task.
    """
    for cxr_id, entry in annotations.items():
        if not isinstance(entry, Mapping):
            problem = f"expected an object of tasks, got {type(entry).__name__}"
            raise DataFormatError(source, problem, where=cxr_id)
        if "img_size" not in entry:
            raise DataFormatError(source, "missing 'img_size' [h, w]", where=cxr_id)
        size = _image_size(entry["img_size"], source=source, where=cxr_id)
        if cxr_id in sizes and size != tuple(sizes[cxr_id]):
            expected = list(sizes[cxr_id])
            problem = f"img_size {list(size)} disagrees with the image's [h, w] {expected}"
            raise DataFormatError(source, problem, where=cxr_id)
        for task, polygons in entry.items():
            if task == "img_size":
                continue
            if task not in ANNOTATION_TASKS:
                problem = f"unknown task name '{task}'; expected one of {sorted(ANNOTATION_TASKS)}"
                raise DataFormatError(source, problem, where=cxr_id)
            where = f"{cxr_id}/{task}"
            if not _is_list(polygons):
                problem = f"expected a list of polygons, got {short_repr(polygons)}"
                raise DataFormatError(source, problem, where=where)
            for k, polygon in enumerate(polygons):
                _check_polygon(polygon, k, source=source, where=where)


def _is_list(value: Any) -> bool:
    """Whether ``value`` is a list-like (a JSON array), not a string or an object."""
    if isinstance(value, np.ndarray):
        return value.ndim >= 1
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (``True``/``False`` are not)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond float range (JSON allows any length)
        return False


def _image_size(size: Any, *, source: Path | str, where: str) -> tuple[int, int]:
    """``img_size`` as (h, w): two integers in 1..``MAX_MASK_SIDE``."""
    if not (
        _is_list(size)
        and len(size) == 2
        and all(_is_number(v) and float(v).is_integer() for v in size)
        and all(0 < v <= MAX_MASK_SIDE for v in size)
    ):
        problem = (
            f"'img_size' must be two integers [h, w] in 1..{MAX_MASK_SIDE}, got {short_repr(size)}"
        )
        raise DataFormatError(source, problem, where=where)
    return int(size[0]), int(size[1])


def _check_polygon(polygon: Any, k: int, *, source: Path | str, where: str) -> None:
    """Polygon ``k`` must be a list of at least three ``[x, y]`` points (finite numbers)."""
    if not _is_list(polygon) or not all(
        _is_list(point) and len(point) == 2 and _is_number(point[0]) and _is_number(point[1])
        for point in polygon
    ):
        problem = (
            f"polygon {k} must be a list of [x, y] points of finite numbers, "
            f"got {short_repr(polygon)}"
        )
        raise DataFormatError(source, problem, where=where)
    if len(polygon) < 3:
        problem = f"polygon {k} has {len(polygon)} point(s); a polygon needs at least 3"
        raise DataFormatError(source, problem, where=where)


def rasterize_annotations(
    annotations: Mapping[str, Any], tasks: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """CheXlocalize reference rasterisation: polygons -> RLE for every task of every CXR.

    The annotations must have passed ``check_annotations``.
    """
    out: dict[str, dict[str, Any]] = {}
    for cxr_id, entry in annotations.items():
        h, w = (int(v) for v in entry["img_size"])
        out[cxr_id] = {t: encode_rle(rasterize_polygons(entry.get(t, []), h, w)) for t in tasks}
    return out


# ----------------------------------------------------------------------------- pickles: reading


def _probability(prob: Any, task: str, source: object) -> float:
    """``prob`` as a float: a number, a one-element array, or the task's entry of a 14-vector."""
    if isinstance(prob, torch.Tensor | np.ndarray):
        arr = np.asarray(prob, dtype=float).reshape(-1)
        if arr.size == 1:
            return float(arr[0])
        if arr.size == len(CHEXLOCALIZE_PROB_ORDER):
            return float(arr[CHEXLOCALIZE_PROB_ORDER.index(task)])
        problem = f"'prob' must be a float or a 14-vector, got {arr.size} values"
        raise DataFormatError(source, problem, where="prob")
    try:
        return float(prob)
    except (TypeError, ValueError) as exc:
        problem = f"'prob' must be a number, got {type(prob).__name__}"
        raise DataFormatError(source, problem, where="prob") from exc


@dataclass(frozen=True)
class MapRecord:
    """One heatmap pickle, parsed: map at native resolution, (w, h), probability, label."""

    cxr_id: str
    task: str
    map: np.ndarray
    width: int
    height: int
    prob: float
    gt: float


INDEX_BAR_MIN_FILES = 100
"""Folders with fewer pickles are indexed without a progress bar (a few ms of work: an
overlay's sampled maps would print an empty bar)."""

SKIP_PAYLOAD_BYTES = 1 << 16  # byte strings at least this long are seeked over, read on demand


class _SkippingReader:
    """A read-only file view for the unpickler that seeks over large byte strings.

    The C unpickler fills a large ``BINBYTES``/``BYTEARRAY8`` payload through ``readinto``;
    this view seeks past its bytes instead and leaves a marker in the buffer (a random
    per-file token and the region's number), so a payload that is never built (the 1.2 MB
    ``cxr_img`` of a CheXlocalize pickle, or the map itself when only the index fields
    are needed) is never read from disk. Whoever uses a payload, a torch storage, a numpy
    array or any other value, gets its real bytes through ``resolve``: a marked buffer is
    never taken for data.
    """

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._token = os.urandom(16)
        self._regions: list[tuple[int, int]] = []

    def read(self, n: int = -1) -> bytes:
        return self._fh.read(n)

    def readline(self) -> bytes:
        return self._fh.readline()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if len(view) < SKIP_PAYLOAD_BYTES:
            return self._fh.readinto(view)
        start = self._fh.tell()
        end = self._fh.seek(0, os.SEEK_END)
        n = min(len(view), end - start)
        self._fh.seek(start + n)
        np.frombuffer(view, np.uint8, count=n)[:] = 0  # in place (no n-byte temporary)
        marker = self._token + len(self._regions).to_bytes(8, "little")
        view[: min(n, len(marker))] = marker[:n]
        self._regions.append((start, n))
        return n

    def resolve(self, data: Any) -> Any:
        """``data`` itself, or the real bytes of a payload this reader seeked over."""
        if (
            not isinstance(data, bytes | bytearray)
            or len(data) < SKIP_PAYLOAD_BYTES
            or data[:16] != self._token
        ):
            return data
        region = self._regions[int.from_bytes(data[16:24], "little")]
        if region[1] != len(data):
            raise EOFError(
                f"truncated payload: {region[1]} of {len(data)} bytes at offset {region[0]}"
            )
        payload = self.payload(region)
        return bytearray(payload) if isinstance(data, bytearray) else payload

    def payload(self, region: tuple[int, int]) -> bytes:
        """The bytes of a skipped region, read now (keeps the current position)."""
        here = self._fh.tell()
        self._fh.seek(region[0])
        data = self._fh.read(region[1])
        self._fh.seek(here)
        if len(data) != region[1]:
            raise EOFError(
                f"truncated payload: {len(data)} of {region[1]} bytes at offset {region[0]}"
            )
        return data


class _SkippingContext(_Context):
    """A load through a ``_SkippingReader``: payloads are resolved to their real bytes."""

    def __init__(
        self, source: str, file_size: int, max_bytes: int | None, reader: _SkippingReader
    ) -> None:
        super().__init__(source, file_size, max_bytes)
        self._reader = reader

    def payload(self, data: Any) -> Any:
        return self._reader.resolve(data)

    def skipped(self) -> bool:
        return bool(self._reader._regions)


class _MapOnlyUnpickler(_TorchPickleUnpickler):
    """The project's restricted tensor unpickler, reading through a ``_SkippingReader``.

    The allow-list and the size checks are those of ``io.safe_pickle``; storages, tensors
    and numpy arrays are records (``_Record``) built after loading, so only the values
    asked for (``map``, ``prob``, ``gt``) are ever built, and the 1.2 MB ``cxr_img``
    never is. A large payload's bytes are only read from disk when its value is built.
    """

    def __init__(self, reader: _SkippingReader, ctx: _SkippingContext) -> None:
        super().__init__(reader, ctx)
        self._reader = reader


def _no_readahead(fh: Any) -> None:
    """Read only the bytes asked for (``posix_fadvise`` ``RANDOM`` on this open file).

    The payloads a ``_SkippingReader`` seeks over (the 1.2 MB ``cxr_img``) would otherwise
    be read from disk by the kernel's readahead of the map's read: on a disk with an
    8 MiB readahead window, the whole 1.6 MB file. Only a hint; nothing changes where the
    call is not available.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    with contextlib.suppress(OSError, AttributeError, io.UnsupportedOperation):
        advise(fh.fileno(), 0, 0, os.POSIX_FADV_RANDOM)


def load_heatmap_pickle(
    path: str | Path,
    keys: tuple[str, ...] = ("map", "prob", "gt"),
    *,
    max_bytes: int | None = None,
) -> Any:
    """Safely load a heatmap pickle, building only the values under ``keys``.

    Large payloads outside ``keys`` are seeked over, never read; their values stay
    unbuilt records (``_Record``). Tensors and numpy arrays (protocols 2 to 5, in-band)
    give the same values as ``load_torch_pickle``. Zip files written by ``torch.save`` go
    through ``load_torch_pickle`` unchanged.

    Args:
        path: The pickle.
        keys: The dict values to build.
        max_bytes: Largest allocation the file may ask for (``io.safe_pickle``
            ``DEFAULT_MAX_BYTES`` by default); allocations are also bounded by the file size.

    Raises:
        DataFormatError: not a pickle, it references anything but tensors, arrays and
            plain values, or it asks for more memory than its size or ``max_bytes``.
    """
    path = Path(path)
    with path.open("rb") as fh:
        _no_readahead(fh)
        if fh.read(2) == b"PK":
            return load_torch_pickle(path, max_bytes=max_bytes)
        fh.seek(0)
        try:
            reader = _SkippingReader(fh)
            ctx = _SkippingContext(str(path), _open_size(fh), max_bytes, reader)
            _scan_opcodes(fh, ctx)
            info = _MapOnlyUnpickler(reader, ctx).load()
            if isinstance(info, Mapping):
                return {
                    k: v if isinstance(v, _Record) and k not in keys else ctx.materialize(v)
                    for k, v in info.items()
                }
            return ctx.finish(info)
        except DataFormatError:
            raise
        except _READ_ERRORS as exc:
            raise DataFormatError(path, f"not a readable heatmap pickle: {exc}") from exc


def _map_shape(shape: Sequence[int], path: str | Path) -> tuple[int, int]:
    """(h, w) of a map of shape (1, 1, h, w) or (h, w), each side in 1..``MAX_MASK_SIDE``;
    a clear error otherwise."""
    dims = tuple(int(d) for d in shape)
    if len(dims) >= 2 and math.prod(dims[:-2]) == 1:
        dims = dims[-2:]
    if len(dims) != 2:
        problem = f"'map' must be (1, 1, h, w) or (h, w), got shape {dims}"
        raise DataFormatError(path, problem, where="map")
    if not all(0 < d <= MAX_MASK_SIDE for d in dims):
        problem = f"'map' (h, w) = {dims}; expected each side in 1..{MAX_MASK_SIDE} px"
        raise DataFormatError(path, problem, where="map")
    return dims[0], dims[1]


def _map_values(raw: Any, path: str | Path) -> np.ndarray:
    """The (h, w) float32 map of a pickle's ``map`` value, checked to be finite."""
    original = raw
    if isinstance(raw, _Record):
        raw = raw.build()
    try:
        arr = np.asarray(torch.as_tensor(raw).detach().cpu(), dtype=np.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        problem = f"'map' must be a tensor or array, got {type(original).__name__}"
        raise DataFormatError(path, problem, where="map") from exc
    arr = arr.reshape(_map_shape(arr.shape, path))
    if not np.isfinite(arr).all():
        problem = "heatmap holds NaN or infinite values; expected finite floats"
        raise DataFormatError(path, problem, where="map")
    return arr


def _cxr_dims(dims: Any, path: str | Path) -> tuple[int, int]:
    """(w, h) of the original image from ``cxr_dims``, both positive."""
    try:
        width, height = (int(dims[0]), int(dims[1]))
    except (TypeError, IndexError, ValueError) as exc:
        problem = f"'cxr_dims' must be (w, h), got {short_repr(dims)}"
        raise DataFormatError(path, problem, where="cxr_dims") from exc
    if width <= 0 or height <= 0:
        problem = f"'cxr_dims' must be positive (w, h), got {short_repr(dims)}"
        raise DataFormatError(path, problem, where="cxr_dims")
    return width, height


def read_heatmap_pickle(path: str | Path, *, with_map: bool = True) -> MapRecord:
    """Load and validate one CheXlocalize heatmap pickle (restricted unpickler, map only).

    Args:
        path: The ``{cxr_id}_{task}_map.pkl`` file.
        with_map: Build and check the map (finite values). ``False`` (indexing): the map
            tensor's bytes are not read; ``MapRecord.map`` is a read-only array of zeros of
            the map's shape (nothing allocated), and the values are checked when the map
            is loaded for evaluation.

    Raises:
        DataFormatError: not a dict with ``map``/``prob``/``cxr_dims``, a malformed map or
            dims, a map side beyond ``MAX_MASK_SIDE``, NaN/inf values, or code-executing
            content.
    """
    cxr_id, task = parse_map_filename(path)
    info = load_heatmap_pickle(path, keys=("map", "prob", "gt") if with_map else ("prob", "gt"))
    if not isinstance(info, Mapping):
        problem = f"expected a dict with keys {list(PICKLE_KEYS)}, got {type(info).__name__}"
        raise DataFormatError(path, problem)
    missing = [k for k in PICKLE_KEYS if k not in info]
    if missing:
        problem = f"heatmap pickle lacks key(s) {missing}; expected {list(PICKLE_KEYS)}"
        raise DataFormatError(path, problem)
    raw = info["map"]
    if not with_map and isinstance(raw, _Record) and raw.shape is not None:
        # shape from the tensor/array record, bytes unread: a read-only zero placeholder of
        # that shape that allocates nothing (the record's shape is only checked, not trusted)
        arr = np.broadcast_to(np.float32(0), _map_shape(raw.shape, path))
    else:
        arr = _map_values(raw, path)
    width, height = _cxr_dims(info["cxr_dims"], path)
    gt = info.get("gt", np.nan)
    gt = np.nan if gt is None or isinstance(gt, _Record) else gt
    prob = _probability(info["prob"], task, path)
    return MapRecord(cxr_id, task, arr, width, height, prob, float(gt))


def map_bytes(map_shape: Sequence[int]) -> int:
    """Bytes at the start of a heatmap pickle that hold its map (float32 values plus
    the pickle and storage headers, with a margin): the ``map`` entry comes first."""
    return 4 * int(np.prod(map_shape)) + (64 << 10)


# Bytes at the end of a heatmap pickle prefetched with its map: the pickle's last opcodes
# (``cxr_dims`` and STOP, about 30 bytes after the 1.2 MB ``cxr_img``) lie in its last page.
PREFETCH_TAIL_BYTES = 4096


def prefetch_heatmap(path: str | Path, nbytes: int) -> None:
    """Ask the OS to read the first ``nbytes`` of ``path`` and its last
    ``PREFETCH_TAIL_BYTES`` into the page cache in the background (``posix_fadvise``
    ``WILLNEED``), so that a later read does not wait on disk.

    The tail matters as much as the map: the opcode scan and the unpickler read the
    pickle's closing opcodes after seeking over ``cxr_img``, and that one-page read waited
    behind the next map's prefetch on the disk queue (the evaluation pass from a cold
    cache took 4.57 s without it, 4.09 s with it; ``PREFETCH_TAIL_BYTES``).

    Only a hint: nothing is read here, nothing is validated, and where the call is not
    available or the file cannot be opened nothing happens (the later read reports it).
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None or nbytes <= 0:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        advise(fd, 0, int(nbytes), os.POSIX_FADV_WILLNEED)
        size = os.fstat(fd).st_size
        if size > nbytes:
            tail = max(size - PREFETCH_TAIL_BYTES, int(nbytes))
            advise(fd, tail, size - tail, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def index_pickle(path: str | Path, *, with_map: bool = False) -> tuple[dict[str, Any], MapRecord]:
    """One pickle's ``HeatmapSet`` index fields and its parsed record.

    The one reader of a folder's files, for the index pass (``with_map=False``: the map's
    bytes are not read) and for the evaluation passes that index and evaluate each map in
    one read (``PickleFolderSet``).

    Returns:
        ``{image_id, task, prob, gt, cxr_w, cxr_h}`` and the ``MapRecord``.

    Raises:
        DataFormatError: as ``read_heatmap_pickle``, or ``cxr_dims`` beyond
            ``MAX_MASK_SIDE`` (the upsampled map and its mask would be unboundedly large).
    """
    rec = read_heatmap_pickle(path, with_map=with_map)
    if rec.width > MAX_MASK_SIDE or rec.height > MAX_MASK_SIDE:
        problem = (
            f"'cxr_dims' (w, h) = ({rec.width}, {rec.height}) exceed {MAX_MASK_SIDE} px; "
            "expected the original image size"
        )
        raise DataFormatError(path, problem, where="cxr_dims")
    row = {
        "image_id": rec.cxr_id,
        "task": rec.task,
        "prob": rec.prob,
        "gt": rec.gt,
        "cxr_w": rec.width,
        "cxr_h": rec.height,
    }
    return row, rec


def _index_row(path: Path) -> tuple[dict[str, Any], tuple[int, int]]:
    """Index fields and map shape of one pickle (runs in a worker; map bytes not read)."""
    row, rec = index_pickle(path)
    return row, tuple(rec.map.shape)


@dataclass
class PickleMapStack:
    """Lazy (n, h, w) stack of heatmap pickles: ``stack[i]`` loads file ``i`` when asked.

    Quacks like the ``maps`` array of a ``HeatmapSet`` (``ndim``, ``shape``, integer and
    boolean indexing), so a CheXlocalize folder streams through the same nodes without
    holding all maps in memory.
    """

    paths: list[Path]
    map_shape: tuple[int, int]
    ndim: int = field(default=3, init=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n, h, w) at native map resolution."""
        return (len(self.paths), *self.map_shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, int | np.integer):
            return read_heatmap_pickle(self.paths[int(item)]).map
        mask = np.asarray(item)
        idx = np.flatnonzero(mask) if mask.dtype == bool else mask.astype(int)
        return PickleMapStack([self.paths[i] for i in idx], self.map_shape)


def _folder_files(root: Path, skip_unparsable: bool) -> tuple[list[Path], list[Path]]:
    """(heatmap pickles, skipped files) of a map folder; every non-hidden file must parse.

    Raises:
        DataFormatError: naming the first file whose name is not ``<cxr_id>_<task>_map.pkl``
            with a CheXlocalize task (unless ``skip_unparsable``).
    """
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    paths, skipped = [], []
    for path in files:
        try:
            parse_map_filename(path)
        except DataFormatError as exc:
            if not skip_unparsable:
                problem = (
                    f"{exc.problem}; its map would count as missing. Remove or rename the file, "
                    "or pass skip_unparsable (runtime param skip_unparsable_maps=true) to skip "
                    "such files with a warning"
                )
                raise DataFormatError(path, problem) from exc
            skipped.append(path)
            continue
        paths.append(path)
    if skipped:
        names = ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        logger.warning(
            "%s: skipped %d file(s) whose name is not '<cxr_id>_<task>%s': %s",
            root,
            len(skipped),
            MAP_SUFFIX,
            names,
        )
    return paths, skipped


class PickleFolderSet(HeatmapSet):
    """A CheXlocalize pickle folder as a ``HeatmapSet`` whose index is read when first used.

    The (image, task) pairs come from the file names (``pairs``). The index (prob, gt,
    ``cxr_dims`` of every pickle) is read on the first access of ``index``, in parallel, as
    ``read_heatmap_folder`` does, unless a pass that reads every map anyway supplies it
    first: the localization evaluation reads each pickle once, takes its index fields
    from the same read (``index_pickle``) and hands the rows over (``set_index``), so the
    folder is not read twice. While ``index_pending``, such passes read the files
    themselves (``paths``).

    Args:
        paths: The pickles, sorted (the index's row order).
        model: Value of the ``model`` column.
        method: Value of the ``method`` column.
        workers: Processes of the index pass (``None`` = one per core).
        skipped: Files skipped because their names do not parse (``index.attrs``).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        model: str,
        method: str,
        workers: int | None = None,
        skipped: Sequence[Path] = (),
    ) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ContractError("PickleFolderSet needs at least one pickle")
        self.model, self.method = model, method
        self._workers = workers
        self._skipped = [str(p) for p in skipped]
        # the map shape of the first file sizes the read-ahead; the index pass refines it
        _, first = index_pickle(self.paths[0])
        self.maps = PickleMapStack(self.paths, tuple(first.map.shape))  # type: ignore[arg-type]
        self._index: pd.DataFrame | None = None
        self._pairs = pd.DataFrame(
            [parse_map_filename(p) for p in self.paths], columns=["image_id", "task"]
        )

    @property
    def index(self) -> pd.DataFrame:  # type: ignore[override]
        """The index (read from every pickle's header on first use, unless supplied)."""
        if self._index is None:
            rows, shapes = [], set()
            indexed = ordered_map(
                _index_row,
                self.paths,
                n_items=len(self.paths),
                workers=self._workers,
                chunksize=16,
                desc="index heatmaps",
                progress=len(self.paths) >= INDEX_BAR_MIN_FILES,
            )
            for row, shape in indexed:
                rows.append(row)
                shapes.add(shape)
            self.set_index(rows)
            self.maps.map_shape = next(iter(sorted(shapes)))
        return self._index  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def index_pending(self) -> bool:
        """True until the index has been read or supplied."""
        return self._index is None

    @property
    def pairs(self) -> pd.DataFrame:
        """(image_id, task) of each row, from the file names (nothing read)."""
        return self._pairs.copy()

    def select(self, mask: np.ndarray | pd.Series) -> PickleFolderSet:
        """Rows where ``mask`` is true, as a folder set of those pickles (index pending
        unless this set's is known: a few rows of a large folder read only their files)."""
        keep = np.flatnonzero(np.asarray(mask, dtype=bool))
        subset = PickleFolderSet(
            [self.paths[i] for i in keep],
            model=self.model,
            method=self.method,
            workers=self._workers,
            skipped=self._skipped,
        )
        if self._index is not None:
            subset.set_index(self._index.iloc[keep].to_dict("records"))
        return subset

    def index_frame(self, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """Index rows (``index_pickle``'s fields) as an index frame with model and method."""
        frame = pd.DataFrame(
            [{**row, "model": self.model, "method": self.method} for row in rows],
            columns=list(INDEX_COLUMNS),
        )
        frame.attrs["skipped_files"] = list(self._skipped)
        return frame

    def set_index(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Supply the index: one row of ``index_pickle`` fields per pickle, in ``paths`` order.

        Raises:
            ContractError: not one row per pickle, or a row that is not its file's pair.
        """
        frame = self.index_frame(rows)
        if (
            len(frame) != len(self.paths)
            or not (
                frame[["image_id", "task"]].astype(str).to_numpy() == self._pairs.to_numpy()
            ).all()
        ):
            raise ContractError(
                f"PickleFolderSet.set_index needs one row per pickle in file order "
                f"({len(self.paths)}), got {len(frame)} rows"
            )
        self._index = frame
        HeatmapSet.__post_init__(self)

    def __repr__(self) -> str:
        state = "pending" if self.index_pending else "read"
        return (
            f"PickleFolderSet({len(self.paths)} pickles, {self.model}/{self.method}, index {state})"
        )


def read_heatmap_folder(
    folder: str | Path,
    *,
    model: str = "chexlocalize",
    method: str = "gradcam",
    workers: int | None = None,
    skip_unparsable: bool = False,
    lazy: bool = False,
) -> HeatmapSet:
    """Index a CheXlocalize map folder as a ``HeatmapSet`` whose maps load on access.

    Every pickle's header is read once (in parallel) to fill the index (prob, gt,
    cxr_dims, map shape); tensor payloads are seeked over, and each map's values are read
    and checked when it is evaluated. With ``lazy`` the index is read when first used
    (``PickleFolderSet``), and the localization evaluation takes it from its own read of
    each map instead, so the folder is read once.

    Every non-hidden file of the folder (searched recursively) must be named
    ``<cxr_id>_<task>_map.pkl``: a file that is not would silently be a missing map.
    With ``skip_unparsable`` such files are skipped with a warning, and their paths are
    kept in ``index.attrs["skipped_files"]`` (the localization pipeline writes their
    count in its outputs).

    Args:
        folder: Folder searched recursively for ``*_map.pkl``.
        model: Model name for the index.
        method: Saliency method name for the index.
        workers: Processes (``None`` = one per core, 1 = in this process).
        skip_unparsable: Skip (with a warning) files whose name does not parse instead of
            stopping.
        lazy: Defer the index (see above); only the first file is read now.

    Raises:
        DataFormatError: the folder has no ``*_map.pkl`` file, a file name does not parse
            (without ``skip_unparsable``), or a file is malformed (with ``lazy``: when
            the file is read).
    """
    root = Path(folder)
    paths, skipped = _folder_files(root, skip_unparsable)
    if not paths:
        raise DataFormatError(root, f"no '*{MAP_SUFFIX}' heatmap files found")
    folder_set = PickleFolderSet(
        paths, model=model, method=method, workers=workers, skipped=skipped
    )
    if not lazy:
        folder_set.index  # noqa: B018 - reads the index now
    return folder_set


def read_chexlocalize_folder(
    folder: str | Path,
    *,
    model: str = "chexlocalize",
    method: str = "gradcam",
    materialise: bool = True,
) -> HeatmapSet:
    """Read a folder written by ``write_chexlocalize_folder`` (rows sorted by file name).

    ``read_heatmap_folder`` (restricted unpickler, file-name and content checks) plus the
    writer's convention for unknown labels (``gt == -1`` -> NaN).

    Args:
        folder: Folder of ``{cxr_id}_{task}_map.pkl`` files.
        model: Value of the ``model`` column.
        method: Value of the ``method`` column.
        materialise: Load every map into one float32 array (default); ``False`` keeps the
            reader's lazy stack that loads a pickle per access.

    Returns:
        The set, maps at the pickles' own resolution.

    Raises:
        DataFormatError: no pickles, a malformed or unsafe file.
    """
    lazy = read_heatmap_folder(folder, model=model, method=method)
    index = lazy.index.copy()
    index["gt"] = index["gt"].astype(float).mask(index["gt"] == UNKNOWN_GT)
    if not materialise:
        return HeatmapSet(index=index, maps=lazy.maps)
    if len(lazy):
        maps = np.stack([np.asarray(lazy.maps[i], dtype=np.float32) for i in range(len(lazy))])
    else:
        maps = np.zeros((0, 1, 1), np.float32)
    return HeatmapSet(index=index, maps=maps)


# ----------------------------------------------------------------------------- pickles: writing


def heatmap_payload(
    row: Mapping[str, Any], heatmap: np.ndarray, image: np.ndarray
) -> dict[str, Any]:
    """The CheXlocalize dict of one map.

    Args:
        row: One ``HeatmapSet.index`` row.
        heatmap: (h, w) map.
        image: (h', w') uint8 (or [0, 1] float) model-input image.

    Returns:
        The dict to pickle.
    """
    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    gt = row["gt"]
    return {
        "map": torch.from_numpy(np.asarray(heatmap, dtype=np.float32).copy())[None, None],
        "prob": float(row["prob"]),
        "task": str(row["task"]),
        "gt": UNKNOWN_GT if not np.isfinite(float(gt)) else int(gt),
        "cxr_img": torch.from_numpy(np.repeat(img[None], 3, axis=0).copy()),
        "cxr_dims": (int(row["cxr_w"]), int(row["cxr_h"])),
    }


def iter_payloads(
    heatmaps: HeatmapSet, images: Mapping[str, np.ndarray]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file name, payload)`` for every row of ``heatmaps``.

    Raises:
        ContractError: an image of the set is missing from ``images``.
    """
    for i, row in enumerate(heatmaps.index.to_dict("records")):
        image_id = str(row["image_id"])
        if image_id not in images:
            raise ContractError(f"no image for heatmap row {i} (image_id {image_id!r})")
        name = pickle_name(image_id, str(row["task"]))
        yield name, heatmap_payload(row, heatmaps.maps[i], images[image_id])


def write_chexlocalize_folder(
    heatmaps: HeatmapSet,
    images: Mapping[str, np.ndarray],
    folder: str | Path,
    *,
    progress: bool = True,
) -> int:
    """Write a heatmap set as a CheXlocalize pickle folder, atomically (all files or none).

    Args:
        heatmaps: The set.
        images: Model-input image per ``image_id``.
        folder: Destination folder; an existing one is replaced when the new one is complete.
        progress: Show a progress bar.

    Returns:
        The number of files written.
    """
    count = 0
    with atomic_dir(folder) as tmp:
        payloads = progress_bar(
            iter_payloads(heatmaps, images),
            total=len(heatmaps),
            desc=f"export {Path(folder).name}",
            disable=not progress,
        )
        for name, payload in payloads:
            with (tmp / name).open("wb") as fh:
                pickle.dump(payload, fh, protocol=PICKLE_PROTOCOL)
            count += 1
    logger.info("wrote %d CheXlocalize heatmap pickles to %s", count, folder)
    return count
