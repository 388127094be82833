"""Kedro datasets for a folder in the CheXlocalize layout (read-only inputs)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from kedro.io import AbstractDataset, DatasetError

from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.chexlocalize import (
    load_json,
    parse_json,
    read_heatmap_folder,
    validate_segmentation_json,
)
from cxr_spurious.tasks import CHEXLOCALIZE_TASKS, SPURIOUS_OBJECTS
from cxr_spurious.variants import heatmap_set_name


class CheXlocalizeHeatmapFolderDataset(AbstractDataset[None, dict[str, HeatmapSet]]):
    """``<path>/<map_dir>/*_map.pkl`` as ``{"<model>.<method>": HeatmapSet}`` (lazy maps).

    Maps stay on disk: the set's ``maps`` loads one pickle per access, so evaluation
    streams with bounded memory. Pickles go through the restricted unpickler.
    """

    def __init__(
        self,
        path: str,
        map_dir: str = "gradcam_maps_val",
        model: str = "chexlocalize",
        method: str = "gradcam",
        skip_unparsable: bool | str = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path = Path(path)
        self._map_dir = map_dir
        self._model = model
        self._method = method
        self._skip_unparsable = _flag(skip_unparsable, "skip_unparsable")
        self.metadata = metadata

    def load(self) -> dict[str, HeatmapSet]:
        """The folder as a ``PickleFolderSet`` (index read when first used)."""
        folder = self._path / self._map_dir
        if not folder.is_dir():
            raise DatasetError(
                f"CheXlocalize heatmap folder not found: {folder} "
                "(set --params chexlocalize_dir=... and localization map_dir)"
            )
        return {
            heatmap_set_name(self._model, self._method): read_heatmap_folder(
                folder,
                model=self._model,
                method=self._method,
                skip_unparsable=self._skip_unparsable,
                lazy=True,  # the localization pass reads each pickle once, index included
            )
        }

    def save(self, data: None) -> None:
        """Read-only."""
        raise DatasetError("CheXlocalizeHeatmapFolderDataset is read-only")

    def _exists(self) -> bool:
        return (self._path / self._map_dir).is_dir()

    def _describe(self) -> dict[str, Any]:
        return {
            "path": str(self._path),
            "map_dir": self._map_dir,
            "model": self._model,
            "method": self._method,
            "skip_unparsable": self._skip_unparsable,
        }


def _flag(value: bool | str, key: str) -> bool:
    """A boolean dataset option; runtime params arrive as strings ("true" / "false")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in {"true", "false"}:
        raise DatasetError(f"{key}: expected true or false, got {value!r}")
    return text == "true"


# ``kind`` of a segmentation JSON -> the names its entries may use.
SEGMENTATION_KINDS: dict[str, tuple[str, ...]] = {
    "segmentations": CHEXLOCALIZE_TASKS,
    "spurious_segmentations": SPURIOUS_OBJECTS,
}


class CheXlocalizeJSONDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """A CheXlocalize JSON (segmentations, annotations, salient points) via fsspec.

    With ``optional: true`` a missing file loads as ``{}`` (e.g. no human benchmark).
    With ``kind: segmentations`` (CheXlocalize tasks) or ``kind: spurious_segmentations``
    (spurious objects) every RLE is validated on load (``validate_segmentation_json``), so a
    malformed one stops the run with the file, CXR and task named instead of reaching
    pycocotools, whose loops can run without end on a garbage counts string.
    """

    def __init__(
        self,
        filepath: str,
        optional: bool = False,
        kind: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if kind is not None and kind not in SEGMENTATION_KINDS:
            raise DatasetError(
                "CheXlocalizeJSONDataset kind: expected one of "
                f"{sorted(SEGMENTATION_KINDS)} or null, got {kind!r}"
            )
        self._kind = kind
        protocol, path = fsspec.core.split_protocol(filepath)
        self._protocol = protocol or "file"
        self._filepath = PurePosixPath(path)
        self._fs = fsspec.filesystem(self._protocol)
        self._optional = optional
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        """Read the JSON ({} when optional and missing).

        Its RLEs are validated when ``kind`` is set.
        """
        if not self._fs.exists(str(self._filepath)):
            if self._optional:
                return {}
            raise DatasetError(f"CheXlocalize JSON not found: {self._filepath}")
        if self._protocol == "file":
            data = load_json(str(self._filepath))
        else:
            with self._fs.open(str(self._filepath), "r") as fh:
                data = parse_json(fh.read(), source=self._filepath)
        if self._kind is not None:
            validate_segmentation_json(
                data, source=self._filepath, tasks=SEGMENTATION_KINDS[self._kind]
            )
        return data

    def save(self, data: dict[str, Any]) -> None:
        """Write the JSON atomically (local files) or through fsspec."""
        import json

        text = json.dumps(data)
        if self._protocol == "file":
            from cxr_spurious.io.atomic import write_text_atomic

            write_text_atomic(str(self._filepath), text)
        else:
            with self._fs.open(str(self._filepath), "w") as fh:
                fh.write(text)

    def _exists(self) -> bool:
        return bool(self._fs.exists(str(self._filepath)))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "optional": self._optional, "kind": self._kind}
