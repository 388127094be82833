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

``load()`` returns the wrapped dataset's data, or ``None`` when it does not exist. The
wrapper only reads: ``save`` is refused (the file belongs to the pipeline that writes it).
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset
from kedro.io.core import DatasetError


class OptionalDataset(AbstractDataset[None, Any]):
    """Loads the wrapped dataset when it exists, else ``None``; never saves."""

    def __init__(
        self,
        dataset: str | dict[str, Any] | AbstractDataset,
        metadata: dict[str, Any] | None = None,
        **dataset_args: Any,
    ) -> None:
        """Wrap a dataset.

        Args:
            dataset: The wrapped dataset, its catalog config (``type`` plus arguments), or
                its type name (its arguments then in ``dataset_args``).
            metadata: Free-form metadata (kedro-viz layer), ignored by Kedro.
            dataset_args: The wrapped dataset's arguments when ``dataset`` is a type name.

        Raises:
            DatasetError: ``dataset`` is none of these, or arguments are given twice.
        """
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
        """The wrapped dataset's data, or ``None`` when it does not exist."""
        return self._dataset.load() if self._dataset.exists() else None

    def save(self, data: None) -> None:
        """Refused: the file is written by the pipeline that owns it."""
        raise DatasetError(
            f"OptionalDataset is read-only: {self._dataset} is written by its own pipeline"
        )

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe()}
