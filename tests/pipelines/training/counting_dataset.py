"""``CountingDataset``: a catalog dataset that logs every save (which rank, which name).

The DDP integration test wraps the variant's outputs with it to prove that each one is
written once, by rank 0 (``RANK`` is set by torchrun).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset


class CountingDataset(AbstractDataset[Any, Any]):
    """Delegates to the wrapped dataset; ``save`` also appends ``"<rank> <name>"`` to ``log``."""

    def __init__(self, dataset: dict[str, Any], log: str, name: str) -> None:
        self._dataset = AbstractDataset.from_config(f"counted_{name}", dict(dataset))
        self._log = Path(log)
        self._name = name

    def load(self) -> Any:
        return self._dataset.load()

    def save(self, data: Any) -> None:
        self._dataset.save(data)
        with self._log.open("a") as fh:
            fh.write(f"{os.environ.get('RANK', '-')} {self._name}\n")

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name, "log": str(self._log)}
