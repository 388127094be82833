"""``SkippableDataset``: wrap any dataset so that saving the ``SKIPPED`` sentinel is a no-op.

Kedro pipelines are static, so a variant that ``training.only`` does not select still
runs its nodes; they return ``SKIPPED`` and the wrapped outputs keep their previous
artifacts untouched. Everything else is delegated::

    "{variant}.model":
      type: cxr_spurious.datasets.skippable.SkippableDataset
      dataset:
        type: cxr_spurious.datasets.torch_model.TorchModelDataset
        filepath: data/06_models/{variant}/model.pt

After ``save(SKIPPED)``, ``load()`` returns the previous artifact if there is one, else
``SKIPPED`` (so the skipped variant's downstream nodes, which skip too, can run without it).

Within one run, what was saved is also kept in memory and returned by ``load()``: this
spares re-reading large outputs and lets write-only datasets (figures) feed later nodes.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.io import AbstractDataset
from kedro.io.core import DatasetError

logger = logging.getLogger(__name__)


class _Skipped:
    """The ``SKIPPED`` singleton (survives copy, deepcopy and pickling)."""

    _instance: _Skipped | None = None

    def __new__(cls) -> _Skipped:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SKIPPED"

    def __copy__(self) -> _Skipped:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Skipped:
        return self

    def __reduce__(self) -> str:
        return "SKIPPED"

    def __bool__(self) -> bool:
        return False


SKIPPED = _Skipped()


def is_skipped(value: object) -> bool:
    """Whether ``value`` is the ``SKIPPED`` sentinel."""
    return value is SKIPPED


class SkippableDataset(AbstractDataset[Any, Any]):
    """Delegates to a wrapped dataset, except that ``save(SKIPPED)`` writes nothing."""

    def __init__(
        self, dataset: dict[str, Any] | AbstractDataset, metadata: dict[str, Any] | None = None
    ) -> None:
        """Wrap a dataset.

        Args:
            dataset: The wrapped dataset, or its catalog config (``type`` plus arguments).
            metadata: Free-form metadata (kedro-viz layer), ignored by Kedro.
        """
        if isinstance(dataset, AbstractDataset):
            self._dataset = dataset
        elif isinstance(dataset, dict) and "type" in dataset:
            self._dataset = AbstractDataset.from_config("skippable_inner", dict(dataset))
        else:
            raise DatasetError(
                "SkippableDataset: 'dataset' must be a dataset config with a 'type', "
                f"got {dataset!r}"
            )
        self.metadata = metadata
        self._skipped = False
        self._cache: Any = SKIPPED  # what this run saved (SKIPPED = nothing yet)

    @property
    def wrapped(self) -> AbstractDataset:
        """The wrapped dataset."""
        return self._dataset

    def load(self) -> Any:
        """The wrapped dataset's data; ``SKIPPED`` if this run skipped it and nothing exists."""
        if self._cache is not SKIPPED:
            return self._cache
        if self._skipped and not self._dataset.exists():
            return SKIPPED
        return self._dataset.load()

    def save(self, data: Any) -> None:
        """Delegate, unless ``data`` is ``SKIPPED`` (then log and keep the previous artifact)."""
        if data is SKIPPED:
            self._skipped = True
            logger.info(
                "Skipped saving %s (variant not selected by training.only); previous artifact kept",
                self._dataset,
            )
            return
        self._skipped = False
        self._dataset.save(data)
        self._cache = data

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": str(self._dataset)}
