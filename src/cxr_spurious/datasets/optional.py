"""``OptionalDataset``: read a file another pipeline may not have written; ``None`` if absent.

The study report shows the comparison and sweep tables when they exist; those pipelines
run on request, so the report reads their files through this wrapper instead of depending
on their nodes::

    report_headline_table:
      type: cxr_spurious.datasets.optional.OptionalDataset
      dataset:
        type: pandas.CSVDataset
        filepath: data/08_reporting/comparison/headline_table.csv

The wrapped dataset may also be given as a type name with its arguments beside it (so an
environment can wrap a base entry, whose arguments a soft merge adds)::

    image_cache:
      type: cxr_spurious.datasets.optional.OptionalDataset
      dataset: cxr_spurious.datasets.image_cache.ImageCacheDataset
      path: data/05_model_input/image_cache

``load()`` returns the wrapped dataset's data, or ``None`` when it does not exist. A table
(anything with pandas' ``attrs``) comes back with ``attrs["written_utc"]``: when its file was
last modified (``written_utc()``: fsspec's ``modified``, else ``info``; a timezone-aware UTC
``datetime``, ``None`` when the file system does not tell), so the report can say how old a
table from another run is. With ``returns: written`` the entry loads only that time (the
file is not read)::

    report_study_findings_written:
      type: cxr_spurious.datasets.optional.OptionalDataset
      dataset: {type: pandas.CSVDataset, filepath: data/08_reporting/study_findings.csv}
      returns: written

The wrapper only reads: ``save`` is refused (the file belongs to the pipeline that writes it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kedro.io import AbstractDataset
from kedro.io.core import DatasetError, get_filepath_str

#: What ``load`` returns: the data, or only when its file was written.
RETURNS = ("data", "written")
#: The key of ``attrs`` that holds a loaded table's modification time.
WRITTEN_ATTR = "written_utc"


class OptionalDataset(AbstractDataset[None, Any]):
    """Loads the wrapped dataset when it exists, else ``None``; never saves."""

    def __init__(
        self,
        dataset: str | dict[str, Any] | AbstractDataset,
        metadata: dict[str, Any] | None = None,
        returns: str = "data",
        **dataset_args: Any,
    ) -> None:
        """Wrap a dataset.

        Args:
            dataset: The wrapped dataset, its catalog config (``type`` plus arguments), or
                its type name (its arguments then in ``dataset_args``).
            metadata: Free-form metadata (kedro-viz layer), ignored by Kedro.
            returns: ``data`` (the wrapped dataset's data) or ``written`` (only when its
                file was last modified, ``written_utc()``).
            dataset_args: The wrapped dataset's arguments when ``dataset`` is a type name.

        Raises:
            DatasetError: ``dataset`` is none of these, arguments are given twice, or
                ``returns`` is not one of ``RETURNS``.
        """
        if returns not in RETURNS:
            raise DatasetError(
                f"OptionalDataset: 'returns' must be one of {list(RETURNS)}, got {returns!r}"
            )
        self._returns = returns
        if dataset_args and not isinstance(dataset, str):
            raise DatasetError(
                f"OptionalDataset: arguments {sorted(dataset_args)} beside a dataset config; "
                "put them in the 'dataset' block"
            )
        if isinstance(dataset, str):
            dataset = {"type": dataset, **dataset_args}
        if isinstance(dataset, AbstractDataset):
            self._dataset = dataset
        elif isinstance(dataset, dict) and "type" in dataset:
            self._dataset = AbstractDataset.from_config("optional_inner", dict(dataset))
        else:
            raise DatasetError(
                f"OptionalDataset needs a dataset or a config with a 'type'; got {dataset!r}"
            )
        self.metadata = metadata

    def load(self) -> Any:
        """The wrapped dataset's data, or ``None`` when it does not exist; a table has its
        file's modification time in ``attrs["written_utc"]``. With ``returns: written``,
        only that time (``None`` when the file does not exist)."""
        if not self._dataset.exists():
            return None
        if self._returns == "written":
            return self.written_utc()
        data = self._dataset.load()
        if isinstance(getattr(data, "attrs", None), dict):
            data.attrs[WRITTEN_ATTR] = self.written_utc()
        return data

    def written_utc(self) -> datetime | None:
        """When the wrapped dataset's file was last modified (UTC), from its file system.

        ``None`` when the file does not exist, or the wrapped dataset (or the dataset it
        wraps, and so on) has no fsspec file system and file path, or the file system
        gives no modification time.
        """
        found = _file_of(self._dataset)
        if found is None:
            return None
        fs, path = found
        try:
            modified = fs.modified(path)
        except (NotImplementedError, FileNotFoundError):
            info = _info(fs, path)
            modified = info.get("mtime") or info.get("LastModified") or info.get("updated")
        if isinstance(modified, int | float):
            return datetime.fromtimestamp(modified, tz=UTC)
        if isinstance(modified, str):
            try:
                modified = datetime.fromisoformat(modified)
            except ValueError:
                return None
        if not isinstance(modified, datetime):
            return None
        return modified.replace(tzinfo=UTC) if modified.tzinfo is None else modified.astimezone(UTC)

    def save(self, data: None) -> None:
        """Refused: the file is written by the pipeline that owns it."""
        raise DatasetError(
            f"OptionalDataset is read-only: {self._dataset} is written by its own pipeline"
        )

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe(), "returns": self._returns}


def _file_of(dataset: Any) -> tuple[Any, str] | None:
    """The fsspec file system and path of ``dataset``'s file (through wrappers that keep
    the wrapped dataset in ``_dataset``), else ``None``."""
    for _ in range(8):  # wrappers of wrappers, never a cycle
        fs, filepath = getattr(dataset, "_fs", None), getattr(dataset, "_filepath", None)
        if fs is not None and filepath is not None:
            get_load_path = getattr(dataset, "_get_load_path", None)
            load_path = get_load_path() if callable(get_load_path) else filepath
            return fs, get_filepath_str(load_path, getattr(dataset, "_protocol", "file"))
        dataset = getattr(dataset, "_dataset", None)
        if dataset is None:
            return None
    return None


def _info(fs: Any, path: str) -> dict[str, Any]:
    try:
        return dict(fs.info(path))
    except FileNotFoundError:
        return {}
