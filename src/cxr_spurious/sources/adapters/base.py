"""The adapter interface: one small module per source, all returning ``IngestedSource``.

An adapter reads a dataset in its own on-disk layout and returns the project's contract:
the manifest (see ``cxr_spurious.sources.contract``) and the ground truth in CheXlocalize's
JSON formats, keyed by ``image_id``:

* ``annotations``: ``{image_id: {"img_size": [h, w], task: [[[x, y], ...], ...]}}``
  (polygons, only positive tasks; empty dict when the source has none);
* ``segmentations``: ``{image_id: {task: {"size": [h, w], "counts": str}}}`` at the
  original resolution (all tasks per image; only images with location labels);
* ``instance_segmentations``: ``{image_id: {task: [rle, ...]}}`` one RLE per instance when
  the source has instances (SIIM-ACR rows, phantom lesions); used for box supervision;
* ``spurious_segmentations``: same as ``segmentations`` for spurious objects
  ("Chest Tube", ...);
* ``human_benchmark``: optional ``{"annotations": ..., "segmentations": ...,
  "salient_points": ...}`` in the CheXlocalize ``hb_*`` formats;
* ``renders``: counterfactual renders ``{render_name: {image_id: path}}``, found under
  ``counterfactuals/<render_name>/`` mirroring the image paths;
* ``render_masks``: ``{render_name: {image_id: rle}}`` for renders that differ from the
  original only inside a known mask (the phantom's ``with_<kind>`` artefact renders, read
  from ``counterfactuals/<render_name>/masks.json``; ``RENDER_MASKS_FILE``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from cxr_spurious.errors import unknown_name_error

Json = dict[str, Any]
#: File beside a render's images holding each image's render mask ``{image_id: rle}``.
RENDER_MASKS_FILE = "masks.json"


@dataclass
class IngestedSource:
    """What every adapter returns."""

    manifest: pd.DataFrame
    tasks: list[str]
    annotations: Json = field(default_factory=dict)
    segmentations: Json = field(default_factory=dict)
    instance_segmentations: Json = field(default_factory=dict)
    spurious_segmentations: Json = field(default_factory=dict)
    human_benchmark: Json = field(default_factory=dict)
    renders: dict[str, dict[str, str]] = field(default_factory=dict)
    render_masks: dict[str, Json] = field(default_factory=dict)


class SourceAdapter(Protocol):
    """A function-like object that reads one source."""

    def __call__(
        self, root: Path, params: Mapping[str, Any]
    ) -> IngestedSource:  # pragma: no cover - protocol
        ...


# name -> "module:function"; modules are imported lazily so a missing optional
# dependency of one adapter never breaks the others.
ADAPTERS: dict[str, str] = {
    "phantom": "cxr_spurious.sources.adapters.phantom:read_phantom",
    "chexlocalize": "cxr_spurious.sources.adapters.chexlocalize:read_chexlocalize",
    "chexpert": "cxr_spurious.sources.adapters.chexpert:read_chexpert",
    "siim_acr": "cxr_spurious.sources.adapters.siim_acr:read_siim_acr",
    "nih_cxr14": "cxr_spurious.sources.adapters.nih_cxr14:read_nih_cxr14",
    "mimic_cxr": "cxr_spurious.sources.adapters.mimic_cxr:read_mimic_cxr",
    "mura": "cxr_spurious.sources.adapters.mura:read_mura",
}


def get_adapter(name: str) -> SourceAdapter:
    """Look up an adapter by its ``ingestion.source`` name.

    Raises:
        ParameterError: the name is unknown (the message lists the valid names).
    """
    if name not in ADAPTERS:
        raise unknown_name_error("source", name, ADAPTERS, key="ingestion.source")
    module_name, func_name = ADAPTERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise unknown_name_error(
                "source (not implemented yet)",
                name,
                [k for k in ADAPTERS if _importable(k)],
                key="ingestion.source",
            ) from exc
        raise
    return getattr(module, func_name)


def _importable(name: str) -> bool:
    module_name = ADAPTERS[name].split(":")[0]
    return importlib.util.find_spec(module_name) is not None
