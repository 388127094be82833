"""Reading and writing the CheXlocalize file formats (DATASET_FORMATS.md section 3).

* heatmap pickles ``<cxr_id>_<task>_map.pkl`` (dict: map, prob, task, gt, cxr_img, cxr_dims
  = (w, h)), loaded with the project's restricted unpickler;
* segmentation JSONs ``{cxr_id: {task: rle}}`` and annotation JSONs (polygons, img_size
  [h, w]); salient points; tuning CSVs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_spurious.errors import DataFormatError, unknown_name_error
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.masks import decode_rle, encode_rle, rasterize_polygons
from cxr_spurious.io.safe_pickle import (
    _load_storage_from_bytes,
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


class _Deferred:
    """A storage or tensor recorded by the unpickler but not built (e.g. ``cxr_img``)."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def build(self) -> Any:
        return self.func(*[a.build() if isinstance(a, _Deferred) else a for a in self.args])


SKIP_PAYLOAD_BYTES = 1 << 16  # byte strings at least this long are seeked over, read on demand


class _SkippingReader:
    """A read-only file view for the unpickler that seeks over large byte strings.

    The C unpickler fills a large ``BINBYTES`` payload through ``readinto``; this view
    zero-fills it and seeks past its bytes instead, recording where they live, so a
    payload that is never built (the 1.2 MB ``cxr_img`` of a CheXlocalize pickle, or the
    map itself when only the index fields are needed) is never read from disk.
    """

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.last_skipped: tuple[int, int] | None = None

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
        self.last_skipped = (start, n)
        return n

    def payload(self, region: tuple[int, int]) -> bytes:
        """The bytes of a skipped region, read now (keeps the current position)."""
        here = self._fh.tell()
        self._fh.seek(region[0])
        data = self._fh.read(region[1])
        self._fh.seek(here)
        if len(data) != region[1]:
            raise EOFError(f"truncated payload: {len(data)} of {region[1]} bytes at offset {region[0]}")
        return data


class _MapOnlyUnpickler(_TorchPickleUnpickler):
    """The project's restricted tensor unpickler, with tensor rebuilding deferred.

    The allow-list is unchanged (everything else still goes through the parent's
    ``find_class``); storages and tensors become inert ``_Deferred`` records so that only
    the values asked for (``map``, a tensor ``prob``) are ever built, and the 1.2 MB
    ``cxr_img`` never is. Reading through ``_SkippingReader``, a large storage's bytes
    are only read from disk when that storage is built.
    """

    def __init__(self, reader: _SkippingReader, source: str) -> None:
        super().__init__(reader, source)  # type: ignore[arg-type]
        self._reader = reader

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self._deferred_storage
        func = super().find_class(module, name)
        if module == "torch._utils" and name.startswith("_rebuild_tensor"):
            return lambda *args: _Deferred(func, args)
        return func

    def _deferred_storage(self, data: bytes) -> _Deferred:
        region = self._reader.last_skipped
        self._reader.last_skipped = None
        if region is not None and region[1] == len(data):
            return _Deferred(lambda r: _load_storage_from_bytes(self._reader.payload(r)), (region,))
        return _Deferred(_load_storage_from_bytes, (data,))


def load_heatmap_pickle(path: str | Path, keys: tuple[str, ...] = ("map", "prob", "gt")) -> Any:
    """Safely load a heatmap pickle, building only the tensors under ``keys``.

    Large tensor payloads outside ``keys`` are seeked over, never read. Zip files written
    by ``torch.save`` go through ``load_torch_pickle`` unchanged.

    Raises:
        DataFormatError: not a pickle, or it references anything but tensors and plain values.
    """
    path = Path(path)
    with path.open("rb") as fh:
        if fh.read(2) == b"PK":
            return load_torch_pickle(path)
        fh.seek(0)
        try:
            info = _MapOnlyUnpickler(_SkippingReader(fh), str(path)).load()
            if isinstance(info, Mapping):
                return {k: (v.build() if isinstance(v, _Deferred) and k in keys else v) for k, v in info.items()}
            return info.build() if isinstance(info, _Deferred) else info
        except DataFormatError:
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, RuntimeError) as exc:
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
    if not with_map and isinstance(raw, _Deferred) and len(raw.args) > 2 and isinstance(raw.args[2], tuple | list | torch.Size):
        arr = np.empty(_map_shape(raw.args[2], path), dtype=np.float32)  # shape from the tensor record, bytes unread
    else:
        if isinstance(raw, _Deferred):
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
    gt = np.nan if gt is None or isinstance(gt, _Deferred) else gt
    return MapRecord(cxr_id, task, arr, width, height, _probability(info["prob"], task, path), float(gt))


def _index_row(path: Path) -> tuple[dict[str, Any], tuple[int, int]]:
    """Index fields and map shape of one pickle (runs in a worker; map bytes not read)."""
    rec = read_heatmap_pickle(path, with_map=False)
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


def read_heatmap_folder(folder: str | Path, *, model: str = "chexlocalize", method: str = "gradcam", workers: int | None = None) -> HeatmapSet:
    """Index a CheXlocalize map folder as a lazy ``HeatmapSet`` (maps load on access).

    Every pickle's header is read once (in parallel) to fill the index (prob, gt,
    cxr_dims, map shape); tensor payloads are seeked over, and each map's values are read
    and checked when it is evaluated.

    Args:
        folder: Folder searched recursively for ``*_map.pkl``.
        model: Model name for the index.
        method: Saliency method name for the index.
        workers: Processes (``None`` = one per core, 1 = in this process).

    Raises:
        DataFormatError: the folder has no ``*_map.pkl`` file, or a file is malformed.
    """
    root = Path(folder)
    paths = sorted(p for p in root.rglob(f"*{MAP_SUFFIX}"))
    if not paths:
        raise DataFormatError(root, f"no '*{MAP_SUFFIX}' heatmap files found")
    rows, shapes = [], set()
    for row, shape in ordered_map(_index_row, paths, n_items=len(paths), workers=workers, chunksize=16, desc="index heatmaps"):
        rows.append({**row, "model": model, "method": method})
        shapes.add(shape)
    index = pd.DataFrame(rows)
    return HeatmapSet(index, PickleMapStack(paths, next(iter(sorted(shapes)))))  # type: ignore[arg-type]


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a CheXlocalize JSON file (dict at top level)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(path, f"not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a JSON object keyed by cxr id, got {type(data).__name__}")
    return data


def annotations_to_segmentations(annotations: Mapping[str, Mapping[str, Any]], tasks: Sequence[str] = CHEXLOCALIZE_TASKS, *, source: object = "gt_annotations") -> dict[str, dict[str, dict[str, Any]]]:
    """Rasterise annotation polygons (outline included) into an RLE JSON with every task.

    Raises:
        DataFormatError: a CXR lacks ``img_size`` or names an unknown task.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cxr_id in sorted(annotations):
        entry = annotations[cxr_id]
        if "img_size" not in entry:
            raise DataFormatError(source, "annotation lacks 'img_size' [h, w]", where=cxr_id)
        h, w = (int(entry["img_size"][0]), int(entry["img_size"][1]))
        for task in entry:
            if task != "img_size":
                check_task(task, source=source, key=cxr_id)
        out[cxr_id] = {task: encode_rle(rasterize_polygons(entry.get(task, []), h, w)) for task in tasks}
    return out


def validate_segmentation_json(data: Mapping[str, Any], *, source: object, tasks: Sequence[str] = CHEXLOCALIZE_TASKS, decode: bool = False) -> None:
    """Check task names and RLE structure of a segmentation JSON (optionally decode each).

    Raises:
        DataFormatError: unknown task, malformed RLE, or (with ``decode``) undecodable counts.
    """
    for cxr_id, entry in data.items():
        if not isinstance(entry, Mapping):
            raise DataFormatError(source, "expected {task: rle}", where=cxr_id)
        for task, rle in entry.items():
            check_task(task, source=source, key=cxr_id)
            if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
                raise DataFormatError(source, "expected an RLE dict with 'size' and 'counts'", where=f"{cxr_id}/{task}")
            if decode:
                decode_rle(rle, source=source, key=f"{cxr_id}/{task}")


def read_threshold_table(table: pd.DataFrame, *, source: object = "tuning_results.csv") -> dict[str, float]:
    """``threshold,task`` CSV -> {task: threshold}."""
    if not {"threshold", "task"} <= set(table.columns):
        raise DataFormatError(source, f"expected columns 'threshold,task', got {list(table.columns)}")
    for task in table["task"]:
        check_task(str(task), source=source)
    return {str(t): float(v) for t, v in zip(table["task"], table["threshold"])}


def read_probability_cutoffs(table: pd.DataFrame, *, source: object = "probability_tuning_results.csv") -> dict[str, float]:
    """``prob_threshold,mIoU,task`` CSV -> {task: cutoff with the highest mIoU} (first on ties)."""
    if not {"prob_threshold", "mIoU", "task"} <= set(table.columns):
        raise DataFormatError(source, f"expected columns 'prob_threshold,mIoU,task', got {list(table.columns)}")
    best = table.loc[table.groupby("task")["mIoU"].idxmax()]
    for task in best["task"]:
        check_task(str(task), source=source)
    return {str(t): float(v) for t, v in zip(best["task"], best["prob_threshold"])}
