"""The phantom source: a folder written by ``cxr_spurious.phantom.generate_phantom``.

The generator writes the CheXpert / CheXlocalize on-disk formats (plus ``attributes.csv``,
``spurious_segmentations.json``, the simulated human benchmark and counterfactual renders),
so reading it is the CheXlocalize reader with the phantom's task list.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxr_spurious.data.adapters.base import IngestedSource
from cxr_spurious.data.adapters.chexlocalize import read_chexlocalize
from cxr_spurious.tasks import PHANTOM_TASKS


def read_phantom(root: Path, params: Mapping[str, Any]) -> IngestedSource:
    """Read a generated phantom folder.

    Args:
        root: The generator's output folder.
        params: The ``ingestion`` parameters; ``tasks`` defaults to all phantom pathologies.

    Returns:
        The manifest and ground truth, ``source = "phantom"``.
    """
    merged = {**params, "source": "phantom", "tasks": params.get("tasks") or list(PHANTOM_TASKS)}
    return read_chexlocalize(Path(root), merged)
