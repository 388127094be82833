"""``RunnerMemoryDataset``: in-memory data between nodes, under any Kedro runner.

A catalog entry of ``type: MemoryDataset`` lives in one process: Kedro's ``ParallelRunner``
pickles it, empty, into each worker process, so a node in another process cannot load what
a node saved (only *unregistered* datasets become shared there), and
``cxr_spurious.runner.DaskRunner`` refuses ``copy_mode: assign`` entries that another node
reads. This dataset keeps a ``MemoryDataset``'s behaviour where nodes share a process and
crosses processes where they do not:

* ``SequentialRunner`` / ``ThreadRunner``: a ``MemoryDataset`` with ``copy_mode``
  (``assign``: loads return the saved object itself, no copy).
* ``ParallelRunner``: a ``kedro.io.SharedMemoryDataset``: the runner gives it its
  multiprocessing manager, which holds the data (pickled on the way in and out).
* ``DaskRunner``: an in-memory dataset that Dask moves between workers (pickled);
  ``copy_mode`` applies within a worker.

The data must pickle for the two multi-process runners. The data saved in one process
never travel with the dataset object itself (it pickles empty).

Example (``conf/base/catalog_sweep.yml``)::

    "sweep_{variant}.image_cache":
      type: cxr_spurious.datasets.shared_memory.RunnerMemoryDataset
      copy_mode: assign
"""

from __future__ import annotations

from typing import Any

from kedro.io import MemoryDataset
from kedro.io.core import DatasetError
from kedro.io.shared_memory_dataset import SharedMemoryDataset

_COPY_MODES = (None, "deepcopy", "copy", "assign")


class RunnerMemoryDataset(SharedMemoryDataset):
    """In memory in this process until a ``ParallelRunner`` hands it a manager."""

    def __init__(
        self, copy_mode: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        """Create the dataset.

        Args:
            copy_mode: How loads copy the data within a process (``MemoryDataset``'s
                ``deepcopy``, ``copy`` or ``assign``; None: chosen by the data's type).
            metadata: Free-form metadata (kedro-viz layer).

        Raises:
            DatasetError: an unknown ``copy_mode``.
        """
        if copy_mode not in _COPY_MODES:
            raise DatasetError(
                f"RunnerMemoryDataset: copy_mode must be one of {_COPY_MODES}, got {copy_mode!r}"
            )
        super().__init__(manager=None)
        self._copy_mode = copy_mode
        self._local = MemoryDataset(copy_mode=copy_mode)  # type: ignore[arg-type]
        self.metadata = metadata

    def _target(self) -> Any:
        shared = self.__dict__.get("shared_memory_dataset")
        return self._local if shared is None else shared

    def load(self) -> Any:
        """The saved data (a copy per ``copy_mode``, or the manager's pickled copy)."""
        return self._target().load()

    def save(self, data: Any) -> None:
        """Keep ``data`` in this process, or in the ``ParallelRunner``'s manager."""
        if self.__dict__.get("shared_memory_dataset") is None:
            self._local.save(data)
        else:
            super().save(data)

    def _exists(self) -> bool:
        return bool(self._target().exists())

    def _release(self) -> None:
        self._target().release()

    def _describe(self) -> dict[str, Any]:
        return {"copy_mode": self._copy_mode}

    def __getstate__(self) -> dict[str, Any]:
        """The dataset without this process's data (a manager proxy does travel)."""
        state = dict(self.__dict__)
        state["_local"] = MemoryDataset(copy_mode=self._copy_mode)  # type: ignore[arg-type]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
