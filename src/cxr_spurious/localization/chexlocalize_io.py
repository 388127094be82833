"""Reading and writing the CheXlocalize file formats (DATASET_FORMATS.md section 3).

* heatmap pickles ``<cxr_id>_<task>_map.pkl`` (dict: map, prob, task, gt, cxr_img, cxr_dims
  = (w, h)), loaded with the project's restricted unpickler;
* the layout's JSON files (``load_json``) and the check of a segmentation JSON
  ``{cxr_id: {task: rle}}`` (``validate_segmentation_json``); the pickle writer is
  ``saliency.chexlocalize_io``, the polygon rasteriser the ingestion adapter's
  ``rasterize_annotations``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_spurious.errors import DataFormatError, unknown_name_error
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.masks import MAX_MASK_SIDE, decode_rle, validate_rle
from cxr_spurious.io.safe_pickle import (
    _READ_ERRORS,
    _Context,
    _open_size,
    _Record,
    _scan_opcodes,
    _TorchPickleUnpickler,
    load_torch_pickle,
)
from cxr_spurious.localization.parallel import ordered_map
from cxr_spurious.tasks import CHEXLOCALIZE_PROB_ORDER, CHEXLOCALIZE_TASKS

logger = logging.getLogger(__name__)

PICKLE_KEYS: tuple[str, ...] = ("map", "prob", "cxr_dims")
MAP_SUFFIX = "_map.pkl"


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


def check_task(task: str, *, source: object, key: str | None = None) -> None:
    """Raise ``DataFormatError`` naming the file when ``task`` is not a CheXlocalize task."""
    if task not in CHEXLOCALIZE_TASKS:
        problem = str(unknown_name_error("task", task, CHEXLOCALIZE_TASKS))
        raise DataFormatError(source, problem, where=key)


def _probability(prob: Any, task: str, source: object) -> float:
    if isinstance(prob, torch.Tensor | np.ndarray):
        arr = np.asarray(prob, dtype=float).reshape(-1)
        if arr.size == 1:
            return float(arr[0])
        if arr.size == len(CHEXLOCALIZE_PROB_ORDER):
            return float(arr[CHEXLOCALIZE_PROB_ORDER.index(task)])
        raise DataFormatError(source, f"'prob' must be a float or a 14-vector, got {arr.size} values", where="prob")
    try:
        return float(prob)
    except (TypeError, ValueError) as exc:
        raise DataFormatError(source, f"'prob' must be a number, got {type(prob).__name__}", where="prob") from exc


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


_Deferred = _Record  # a storage, tensor or array recorded by the unpickler, not built yet

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
        view[:n] = bytes(n)
        marker = self._token + len(self._regions).to_bytes(8, "little")
        view[: min(n, len(marker))] = marker[:n]
        self._regions.append((start, n))
        return n

    def resolve(self, data: Any) -> Any:
        """``data`` itself, or the real bytes of a payload this reader seeked over."""
        if not isinstance(data, bytes | bytearray) or len(data) < SKIP_PAYLOAD_BYTES or data[:16] != self._token:
            return data
        region = self._regions[int.from_bytes(data[16:24], "little")]
        if region[1] != len(data):
            raise EOFError(f"truncated payload: {region[1]} of {len(data)} bytes at offset {region[0]}")
        payload = self.payload(region)
        return bytearray(payload) if isinstance(data, bytearray) else payload

    def payload(self, region: tuple[int, int]) -> bytes:
        """The bytes of a skipped region, read now (keeps the current position)."""
        here = self._fh.tell()
        self._fh.seek(region[0])
        data = self._fh.read(region[1])
        self._fh.seek(here)
        if len(data) != region[1]:
            raise EOFError(f"truncated payload: {len(data)} of {region[1]} bytes at offset {region[0]}")
        return data


class _SkippingContext(_Context):
    """A load through a ``_SkippingReader``: payloads are resolved to their real bytes."""

    def __init__(self, source: str, file_size: int, max_bytes: int | None, reader: _SkippingReader) -> None:
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


def load_heatmap_pickle(path: str | Path, keys: tuple[str, ...] = ("map", "prob", "gt"), *, max_bytes: int | None = None) -> Any:
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
        if fh.read(2) == b"PK":
            return load_torch_pickle(path, max_bytes=max_bytes)
        fh.seek(0)
        try:
            reader = _SkippingReader(fh)
            ctx = _SkippingContext(str(path), _open_size(fh), max_bytes, reader)
            _scan_opcodes(fh, ctx)
            info = _MapOnlyUnpickler(reader, ctx).load()
            if isinstance(info, Mapping):
                return {k: (v if isinstance(v, _Record) and k not in keys else ctx.materialize(v)) for k, v in info.items()}
            return ctx.finish(info)
        except DataFormatError:
            raise
        except _READ_ERRORS as exc:
            raise DataFormatError(path, f"not a readable heatmap pickle: {exc}") from exc


def _map_shape(shape: Sequence[int], path: str | Path) -> tuple[int, int]:
    """(h, w) of a map of shape (1, 1, h, w) or (h, w); a clear error otherwise."""
    dims = tuple(int(d) for d in shape)
    if len(dims) >= 2 and int(np.prod(dims[:-2])) == 1:
        dims = dims[-2:]
    if len(dims) != 2:
        raise DataFormatError(path, f"'map' must be (1, 1, h, w) or (h, w), got shape {dims}", where="map")
    return dims[0], dims[1]


def read_heatmap_pickle(path: str | Path, *, with_map: bool = True) -> MapRecord:
    """Load and validate one CheXlocalize heatmap pickle (restricted unpickler, map only).

    Args:
        path: The ``{cxr_id}_{task}_map.pkl`` file.
        with_map: Build and check the map (finite values). ``False`` (indexing): the map
            tensor's bytes are not read; ``MapRecord.map`` is an empty array of the map's
            shape, and the values are checked when the map is loaded for evaluation.

    Raises:
        DataFormatError: not a dict with ``map``/``prob``/``cxr_dims``, a malformed map or
            dims, NaN/inf values, or code-executing content.
    """
    cxr_id, task = parse_map_filename(path)
    info = load_heatmap_pickle(path, keys=("map", "prob", "gt") if with_map else ("prob", "gt"))
    if not isinstance(info, Mapping):
        raise DataFormatError(path, f"expected a dict with keys {list(PICKLE_KEYS)}, got {type(info).__name__}")
    missing = [k for k in PICKLE_KEYS if k not in info]
    if missing:
        raise DataFormatError(path, f"heatmap pickle lacks key(s) {missing}; expected {list(PICKLE_KEYS)}")
    raw = info["map"]
    if not with_map and isinstance(raw, _Record) and raw.shape is not None:
        arr = np.empty(_map_shape(raw.shape, path), dtype=np.float32)  # shape from the tensor/array record, bytes unread
    else:
        if isinstance(raw, _Record):
            raw = raw.build()
        try:
            arr = np.asarray(torch.as_tensor(raw).detach().cpu(), dtype=np.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataFormatError(path, f"'map' must be a tensor or array, got {type(info['map']).__name__}", where="map") from exc
        arr = arr.reshape(_map_shape(arr.shape, path))
        if not np.isfinite(arr).all():
            raise DataFormatError(path, "heatmap holds NaN or infinite values; expected finite floats", where="map")
    dims = info["cxr_dims"]
    try:
        width, height = (int(dims[0]), int(dims[1]))
    except (TypeError, IndexError, ValueError) as exc:
        raise DataFormatError(path, f"'cxr_dims' must be (w, h), got {dims!r}", where="cxr_dims") from exc
    if width <= 0 or height <= 0:
        raise DataFormatError(path, f"'cxr_dims' must be positive (w, h), got {dims!r}", where="cxr_dims")
    gt = info.get("gt", np.nan)
    gt = np.nan if gt is None or isinstance(gt, _Record) else gt
    return MapRecord(cxr_id, task, arr, width, height, _probability(info["prob"], task, path), float(gt))


def _index_row(path: Path) -> tuple[dict[str, Any], tuple[int, int]]:
    """Index fields and map shape of one pickle (runs in a worker; map bytes not read).

    Raises:
        DataFormatError: ``cxr_dims`` beyond ``MAX_MASK_SIDE`` (the upsampled map and its
            mask would be unboundedly large).
    """
    rec = read_heatmap_pickle(path, with_map=False)
    if rec.width > MAX_MASK_SIDE or rec.height > MAX_MASK_SIDE:
        raise DataFormatError(path, f"'cxr_dims' (w, h) = ({rec.width}, {rec.height}) exceed {MAX_MASK_SIDE} px; expected the original image size", where="cxr_dims")
    return {"image_id": rec.cxr_id, "task": rec.task, "prob": rec.prob, "gt": rec.gt, "cxr_w": rec.width, "cxr_h": rec.height}, tuple(rec.map.shape)


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
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    paths, skipped = [], []
    for path in files:
        try:
            parse_map_filename(path)
        except DataFormatError as exc:
            if not skip_unparsable:
                raise DataFormatError(path, f"{exc.problem}; its map would count as missing. Remove or rename the file, or pass skip_unparsable (runtime param skip_unparsable_maps=true) to skip such files with a warning") from exc
            skipped.append(path)
            continue
        paths.append(path)
    if skipped:
        logger.warning("%s: skipped %d file(s) whose name is not '<cxr_id>_<task>%s': %s", root, len(skipped), MAP_SUFFIX, ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return paths, skipped


def read_heatmap_folder(folder: str | Path, *, model: str = "chexlocalize", method: str = "gradcam", workers: int | None = None, skip_unparsable: bool = False) -> HeatmapSet:
    """Index a CheXlocalize map folder as a lazy ``HeatmapSet`` (maps load on access).

    Every pickle's header is read once (in parallel) to fill the index (prob, gt,
    cxr_dims, map shape); tensor payloads are seeked over, and each map's values are read
    and checked when it is evaluated.

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

    Raises:
        DataFormatError: the folder has no ``*_map.pkl`` file, a file name does not parse
            (without ``skip_unparsable``), or a file is malformed.
    """
    root = Path(folder)
    paths, skipped = _folder_files(root, skip_unparsable)
    if not paths:
        raise DataFormatError(root, f"no '*{MAP_SUFFIX}' heatmap files found")
    rows, shapes = [], set()
    for row, shape in ordered_map(_index_row, paths, n_items=len(paths), workers=workers, chunksize=16, desc="index heatmaps"):
        rows.append({**row, "model": model, "method": method})
        shapes.add(shape)
    index = pd.DataFrame(rows)
    index.attrs["skipped_files"] = [str(p) for p in skipped]
    return HeatmapSet(index, PickleMapStack(paths, next(iter(sorted(shapes)))))  # type: ignore[arg-type]


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a CheXlocalize JSON file (an object keyed by cxr id at top level).

    The one JSON reader of the CheXlocalize layout: ingestion's adapter and the Kedro
    datasets both use it.

    Raises:
        DataFormatError: the file cannot be read, is not valid JSON (the line is named) or
            is not a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFormatError(path, f"not a readable JSON file: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"invalid JSON: {exc.msg}", where=f"line {exc.lineno}") from exc
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a JSON object keyed by cxr id, got {type(data).__name__}")
    return data


def validate_segmentation_json(data: Mapping[str, Any], *, source: object, tasks: Sequence[str] = CHEXLOCALIZE_TASKS, decode: bool = False, sizes: Mapping[str, tuple[int, int]] | None = None) -> None:
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
            raise DataFormatError(source, f"expected {{task: rle}}, got {type(entry).__name__}", where=str(cxr_id))
        for task, rle in entry.items():
            if task not in allowed:
                raise DataFormatError(source, str(unknown_name_error("task", str(task), allowed)), where=str(cxr_id))
            key = f"{cxr_id}/{task}"
            validate_rle(rle, source=source, key=key, size=None if sizes is None else sizes.get(str(cxr_id)))
            if decode:
                decode_rle(rle, source=source, key=key)
