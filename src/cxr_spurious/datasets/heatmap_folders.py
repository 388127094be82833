"""Kedro datasets for saliency maps.

* ``HeatmapSetDataset``: one ``HeatmapSet`` in a folder: ``maps.npy`` (n, h, w) float16 and
  ``index.parquet``.
* ``HeatmapCollectionDataset``: ``dict[name, HeatmapSet]``, one such folder per name
  (``<folder>/<name>/``); names are heatmap namespaces such as ``erm.gradcam``. The saved
  names are recorded in ``<folder>/collection.json``; loading requires every recorded set
  (a missing or damaged one is an error naming its folder, not a silently absent set) and
  ignores, with a warning, folders the record does not list. A local collection without the
  record (saved by an older version) loads every set folder found; a remote one is refused,
  since a remote save writes the record last and no record means an interrupted save.
* ``ChexlocalizeExportDataset``: saves ``dict[name, ChexlocalizeExport]`` as CheXlocalize
  heatmap-pickle folders (``<folder>/<name>/{cxr_id}_{task}_map.pkl``) and loads them back
  as ``dict[name, HeatmapSet]`` through the restricted unpickler.

Local folders are written atomically (a complete temporary folder replaces the old one)
and loaded with memory-mapped maps; other fsspec protocols (``s3://``...) are read and
written through fsspec without memory mapping (not atomically: a collection's record and old
folder are removed, then the new sets and last the record are written; a set's old index is
removed, then its maps and last its index are written, so an interrupted save is refused on
load, never read as complete), with the filesystem options of ``credentials`` (a Kedro
credentials entry) and ``fs_args``. ``ChexlocalizeExportDataset`` is local only.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from kedro.io import AbstractDataset
from kedro.io.core import DatasetError, get_protocol_and_path

from cxr_spurious.errors import ContractError, DataFormatError
from cxr_spurious.heatmaps import INDEX_COLUMNS, HeatmapSet
from cxr_spurious.io.atomic import atomic_dir

logger = logging.getLogger(__name__)

MAPS_FILE = "maps.npy"
INDEX_FILE = "index.parquet"
COLLECTION_FILE = "collection.json"  #: names of the sets a collection was saved with


def _write_set(heatmaps: HeatmapSet, folder: Path) -> None:
    """Write one set into an existing local folder (float16 maps + parquet index)."""
    if not isinstance(heatmaps, HeatmapSet):
        raise ContractError(
            f"expected a HeatmapSet to save in {folder}, got {type(heatmaps).__name__}"
        )
    np.save(folder / MAPS_FILE, np.asarray(heatmaps.maps, dtype=np.float16))
    heatmaps.index.reset_index(drop=True).to_parquet(folder / INDEX_FILE, index=False)


def _read_set_local(folder: Path, *, mmap: bool) -> HeatmapSet:
    """Read one local set folder."""
    for name in (MAPS_FILE, INDEX_FILE):
        if not (folder / name).is_file():
            raise DataFormatError(
                folder / name, "missing; a heatmap set folder holds maps.npy and index.parquet"
            )
    maps = np.load(folder / MAPS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
    index = pd.read_parquet(folder / INDEX_FILE)
    return _checked(HeatmapSet, index, maps, folder)


def _checked(
    cls: type[HeatmapSet], index: pd.DataFrame, maps: np.ndarray, where: object
) -> HeatmapSet:
    try:
        return cls(index=index, maps=maps)
    except ContractError as exc:
        raise DataFormatError(where, str(exc)) from exc


class _FolderDataset:
    """Shared construction and path handling (local vs fsspec)."""

    def __init__(
        self,
        *,
        path: str,
        mmap: bool = True,
        fs_args: dict[str, Any] | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create the dataset.

        Args:
            path: Folder of the set, or of the collection (local path or fsspec URL).
            mmap: Memory-map the maps on load (local folders only).
            fs_args: Extra fsspec filesystem arguments.
            credentials: fsspec filesystem arguments from a Kedro credentials entry (e.g.
                ``key``, ``secret``, ``client_kwargs: {endpoint_url: ...}`` for s3fs);
                ``fs_args`` wins on a key given in both.
            metadata: Kedro metadata (kedro-viz layer).
        """
        self._init_path(path, {**(credentials or {}), **(fs_args or {})})
        self._mmap = mmap
        self.metadata = metadata

    def _init_path(self, path: str, fs_args: dict[str, Any] | None) -> None:
        protocol, bare = get_protocol_and_path(str(path))
        self._protocol = protocol
        self._path = PurePosixPath(bare)
        self._fs = fsspec.filesystem(protocol, **(fs_args or {}))

    @property
    def _local(self) -> bool:
        return self._protocol == "file"

    def _full(self, *parts: str) -> str:
        path = str(self._path.joinpath(*parts))
        return path if self._local else f"{self._protocol}://{path}"

    def _write_remote_set(self, heatmaps: HeatmapSet, *parts: str) -> None:
        """Write a set through fsspec: the old index goes first and the new one is written
        last, so an interrupted save leaves no index beside the new maps (and does not load
        as complete: ``_read_remote_set``)."""
        index_path = self._full(*parts, INDEX_FILE)
        if self._fs.exists(index_path):
            self._fs.rm(index_path)
        buf = io.BytesIO()
        np.save(buf, np.asarray(heatmaps.maps, dtype=np.float16))
        with self._fs.open(self._full(*parts, MAPS_FILE), "wb") as fh:
            fh.write(buf.getvalue())
        with self._fs.open(index_path, "wb") as fh:
            heatmaps.index.reset_index(drop=True).to_parquet(fh, index=False)

    def _read_remote_set(self, *parts: str) -> HeatmapSet:
        if not self._fs.exists(self._full(*parts, INDEX_FILE)):
            raise DataFormatError(
                self._full(*parts, INDEX_FILE),
                f"missing: this remote heatmap set is incomplete (its save did not finish; "
                f"{INDEX_FILE} is written last); rerun `kedro run --pipeline saliency`",
            )
        with self._fs.open(self._full(*parts, MAPS_FILE), "rb") as fh:
            maps = np.load(io.BytesIO(fh.read()), allow_pickle=False)
        with self._fs.open(self._full(*parts, INDEX_FILE), "rb") as fh:
            index = pd.read_parquet(fh)
        return _checked(HeatmapSet, index, maps, self._full(*parts))


class HeatmapSetDataset(_FolderDataset, AbstractDataset[HeatmapSet, HeatmapSet]):
    """One ``HeatmapSet`` stored as ``<path>/maps.npy`` (float16) + ``<path>/index.parquet``."""

    def load(self) -> HeatmapSet:
        """Load the set (maps memory-mapped when local)."""
        if self._local:
            return _read_set_local(Path(self._path), mmap=self._mmap)
        return self._read_remote_set()

    def save(self, data: HeatmapSet) -> None:
        """Save the set (atomically when local)."""
        if not isinstance(data, HeatmapSet):
            raise DatasetError(
                f"HeatmapSetDataset({self._path}) can only save a HeatmapSet, "
                f"got {type(data).__name__}"
            )
        if self._local:
            with atomic_dir(Path(self._path)) as tmp:
                _write_set(data, tmp)
        else:
            self._write_remote_set(data)

    def _exists(self) -> bool:
        return bool(
            self._fs.exists(self._full(MAPS_FILE)) and self._fs.exists(self._full(INDEX_FILE))
        )

    def _describe(self) -> dict[str, Any]:
        return {"path": self._full(), "mmap": self._mmap}


class HeatmapCollectionDataset(
    _FolderDataset, AbstractDataset[dict[str, HeatmapSet], dict[str, HeatmapSet]]
):
    """``dict[name, HeatmapSet]`` stored as one set folder per name under ``path``.

    Saving replaces the whole collection (sets absent from the dict disappear); loading
    returns every set folder found, sorted by name.
    """

    @staticmethod
    def _check_names(data: dict[str, HeatmapSet], where: object) -> None:
        if not isinstance(data, dict):
            raise DatasetError(
                f"{where}: expected dict[str, HeatmapSet], got {type(data).__name__}"
            )
        for name in data:
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise ContractError(
                    f"{where}: heatmap set name {name!r} must be a non-empty folder name "
                    "(no '/', no leading '.')"
                )

    def _names(self) -> list[str]:
        if self._local:
            root = Path(self._path)
            if not root.is_dir():
                return []
            return sorted(
                p.name
                for p in root.iterdir()
                if p.is_dir() and not p.name.startswith(".") and (p / MAPS_FILE).is_file()
            )
        if not self._fs.exists(self._full()):
            return []
        found = [PurePosixPath(p).parent.name for p in self._fs.glob(self._full("*", MAPS_FILE))]
        return sorted(set(found))

    def _recorded_names(self) -> list[str] | None:
        """The names in ``collection.json`` (None for a collection saved before the record)."""
        where = self._full(COLLECTION_FILE)
        try:
            if self._local:
                text = Path(where).read_text(encoding="utf-8")
            else:
                with self._fs.open(where, "r") as fh:
                    text = fh.read()
        except FileNotFoundError:
            return None
        try:
            names = json.loads(text)["sets"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataFormatError(where, f'expected {{"sets": [names]}}: {exc}') from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataFormatError(where, f"'sets' must be a list of set names, got {names!r}")
        return names

    def load(self) -> dict[str, HeatmapSet]:
        """Load every set of the collection (maps memory-mapped when local).

        Raises:
            DataFormatError: a set recorded in ``collection.json`` is missing or incomplete
                (naming its folder and the command that rewrites the collection).
        """
        found = self._names()
        recorded = self._recorded_names()
        if recorded is None and found and not self._local:
            # A remote save is not atomic: it removes the record first, writes the sets one
            # by one and the record last, so no record means an interrupted save.
            raise DataFormatError(
                self._full(COLLECTION_FILE),
                "missing: this remote heatmap collection is incomplete (its save did not "
                f"finish; {COLLECTION_FILE} is written last); "
                "rerun `kedro run --pipeline saliency` to rewrite the collection",
            )
        if recorded is None:  # a local collection saved before the record (saves are atomic)
            names = found
            if names:
                logger.warning(
                    "%s has no %s (written by an older version): loading every set folder found",
                    self._full(),
                    COLLECTION_FILE,
                )
        else:
            missing = [n for n in recorded if n not in found]
            if missing:
                raise DataFormatError(
                    self._full(missing[0]),
                    f"heatmap set(s) {missing} of this collection are missing or incomplete "
                    f"(recorded in {COLLECTION_FILE}); "
                    "rerun `kedro run --pipeline saliency` to rewrite the collection",
                )
            extra = sorted(set(found) - set(recorded))
            if extra:
                logger.warning(
                    "%s: ignoring set folder(s) %s not recorded in %s",
                    self._full(),
                    extra,
                    COLLECTION_FILE,
                )
            names = list(recorded)
        if not names:
            raise DatasetError(f"no heatmap sets found under {self._full()}")
        if self._local:
            return {n: _read_set_local(Path(self._path) / n, mmap=self._mmap) for n in names}
        return {n: self._read_remote_set(n) for n in names}

    def save(self, data: dict[str, HeatmapSet]) -> None:
        """Save the collection (atomically when local: all sets or none)."""
        self._check_names(data, self._full())
        record = json.dumps({"sets": sorted(data)}, indent=1) + "\n"
        if self._local:
            with atomic_dir(Path(self._path)) as tmp:
                for name, hset in data.items():
                    (tmp / name).mkdir()
                    _write_set(hset, tmp / name)
                (tmp / COLLECTION_FILE).write_text(record, encoding="utf-8")
        else:
            # Unmark the old collection first: an interrupted save must not load as complete.
            if self._fs.exists(self._full(COLLECTION_FILE)):
                self._fs.rm(self._full(COLLECTION_FILE))
            if self._fs.exists(self._full()):  # replace the collection, as locally
                self._fs.rm(self._full(), recursive=True)
            for name, hset in data.items():
                self._write_remote_set(hset, name)
            with self._fs.open(self._full(COLLECTION_FILE), "w") as fh:  # last: marks it complete
                fh.write(record)
        logger.info("saved %d heatmap set(s) to %s: %s", len(data), self._full(), sorted(data))

    def _exists(self) -> bool:
        if not self._local and not self._fs.exists(self._full(COLLECTION_FILE)):
            return False  # a remote collection without its record is an interrupted save
        return bool(self._names())

    def _describe(self) -> dict[str, Any]:
        return {"path": self._full(), "mmap": self._mmap}


def _method_from_namespace(part: str) -> str:
    """Registry method name from the method part of a heatmap namespace.

    For example ``gradcampp`` -> ``gradcam++``.
    """
    from cxr_spurious.saliency.registry import METHODS

    for name in METHODS:
        if name.replace("+", "p") == part:
            return name
    return part or "unknown"


@dataclass
class ChexlocalizeExport:
    """A heatmap set and the model-input image of each of its ``image_id`` values."""

    heatmaps: HeatmapSet
    images: dict[str, np.ndarray]


class ChexlocalizeExportDataset(
    AbstractDataset[dict[str, ChexlocalizeExport], dict[str, HeatmapSet]]
):
    """CheXlocalize heatmap-pickle folders, one per set name (local folders only).

    ``save`` writes ``<path>/<name>/{cxr_id}_{task}_map.pkl`` and replaces the whole export
    folder atomically, so folders of sets an earlier run exported are gone; an empty dict
    (export disabled, or no set chosen) empties an existing folder (and creates none), so an
    earlier run's export cannot pass for this run's. ``load`` reads every
    folder back into a ``HeatmapSet`` (model and method taken from the folder name
    ``<model>.<method>``).
    """

    def __init__(
        self, *, path: str, progress: bool = True, metadata: dict[str, Any] | None = None
    ) -> None:
        """Create the dataset.

        Args:
            path: Export root folder.
            progress: Show progress bars.
            metadata: Kedro metadata (kedro-viz layer).
        """
        protocol, _ = get_protocol_and_path(str(path))
        if protocol != "file":
            raise DatasetError(
                f"ChexlocalizeExportDataset: path {path!r} is a {protocol}:// URL, "
                "but CheXlocalize pickle folders are written and read on local disk only; "
                "give a local folder"
            )
        self._path = Path(path)
        self._progress = progress
        self.metadata = metadata

    def save(self, data: dict[str, ChexlocalizeExport]) -> None:
        """Write each set's pickle folder; together they replace the export folder."""
        from cxr_spurious.io.chexlocalize import write_chexlocalize_folder

        HeatmapCollectionDataset._check_names({k: v.heatmaps for k, v in data.items()}, self._path)
        if not data:
            if not self._path.exists():
                return  # nothing exported now or before: no folder
            earlier = self._set_folders()
            if earlier:
                logger.info(
                    "CheXlocalize export: no set exported by this run; the earlier export's "
                    "%d set folder(s) in %s (%s) are removed",
                    len(earlier),
                    self._path,
                    ", ".join(p.name for p in earlier[:3]),
                )
        with atomic_dir(self._path) as tmp:
            for name, export in data.items():
                write_chexlocalize_folder(
                    export.heatmaps, export.images, tmp / name, progress=self._progress
                )

    def load(self) -> dict[str, HeatmapSet]:
        """Read every exported folder (restricted unpickler)."""
        from cxr_spurious.io.chexlocalize import read_chexlocalize_folder

        if not self._path.is_dir():
            raise DatasetError(f"no CheXlocalize export at {self._path}")
        out = {}
        for folder in self._set_folders():
            model, _, part = folder.name.partition(".")
            out[folder.name] = read_chexlocalize_folder(
                folder, model=model, method=_method_from_namespace(part)
            )
        return out

    def _set_folders(self) -> list[Path]:
        """The exported set folders now under the export root (none when it is absent)."""
        if not self._path.is_dir():
            return []
        return sorted(p for p in self._path.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _exists(self) -> bool:
        return bool(self._set_folders())

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


__all__ = [
    "INDEX_COLUMNS",
    "ChexlocalizeExport",
    "ChexlocalizeExportDataset",
    "HeatmapCollectionDataset",
    "HeatmapSetDataset",
]
