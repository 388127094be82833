"""Heatmap sets <-> CheXlocalize heatmap pickles (``{cxr_id}_{task}_map.pkl``).

Each pickle (protocol 3, plain ``pickle.dump`` of a dict, as in the CheXlocalize release)
holds ``map`` tensor (1, 1, h, w) float32, ``prob`` float, ``task`` str, ``gt`` int,
``cxr_img`` tensor (3, h, w) float32 in [0, 1] (the model input, gray replicated to three
channels) and ``cxr_dims`` (w, h) of the original image. CheXlocalize's evaluation
upsamples ``map`` to ``cxr_dims`` itself.

Unknown labels (``gt`` NaN in a ``HeatmapSet``) are written as ``gt = -1`` and read back
as NaN. Reading goes through the localization pipeline's CheXlocalize reader
(``cxr_spurious.localization.chexlocalize_io``, restricted unpickler), so the project has
one parser of these files; this module owns the writer.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cxr_spurious.errors import ContractError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.atomic import atomic_dir
from cxr_spurious.localization.chexlocalize_io import MAP_SUFFIX, read_heatmap_folder

logger = logging.getLogger(__name__)

PICKLE_PROTOCOL = 3
UNKNOWN_GT = -1


def pickle_name(image_id: str, task: str) -> str:
    """CheXlocalize file name of one map, e.g. ``patient1_study1_view1_frontal_Edema_map.pkl``."""
    return f"{image_id}_{task}{MAP_SUFFIX}"


def heatmap_payload(row: Mapping[str, Any], heatmap: np.ndarray, image: np.ndarray) -> dict[str, Any]:
    """The CheXlocalize dict of one map.

    Args:
        row: One ``HeatmapSet.index`` row.
        heatmap: (h, w) map.
        image: (h', w') uint8 (or [0, 1] float) model-input image.

    Returns:
        The dict to pickle.
    """
    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    gt = row["gt"]
    return {
        "map": torch.from_numpy(np.asarray(heatmap, dtype=np.float32).copy())[None, None],
        "prob": float(row["prob"]),
        "task": str(row["task"]),
        "gt": UNKNOWN_GT if not np.isfinite(float(gt)) else int(gt),
        "cxr_img": torch.from_numpy(np.repeat(img[None], 3, axis=0).copy()),
        "cxr_dims": (int(row["cxr_w"]), int(row["cxr_h"])),
    }


def iter_payloads(heatmaps: HeatmapSet, images: Mapping[str, np.ndarray]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file name, payload)`` for every row of ``heatmaps``.

    Raises:
        ContractError: an image of the set is missing from ``images``.
    """
    for i, row in enumerate(heatmaps.index.to_dict("records")):
        image_id = str(row["image_id"])
        if image_id not in images:
            raise ContractError(f"no image for heatmap row {i} (image_id {image_id!r})")
        yield pickle_name(image_id, str(row["task"])), heatmap_payload(row, heatmaps.maps[i], images[image_id])


def write_chexlocalize_folder(heatmaps: HeatmapSet, images: Mapping[str, np.ndarray], folder: str | Path,
                              *, progress: bool = True) -> int:
    """Write a heatmap set as a CheXlocalize pickle folder, atomically (all files or none).

    Args:
        heatmaps: The set.
        images: Model-input image per ``image_id``.
        folder: Destination folder; an existing one is replaced when the new one is complete.
        progress: Show a progress bar.

    Returns:
        The number of files written.
    """
    count = 0
    with atomic_dir(folder) as tmp:
        payloads = iter_payloads(heatmaps, images)
        for name, payload in tqdm(payloads, total=len(heatmaps), desc=f"export {Path(folder).name}",
                                  leave=False, disable=not progress):
            with (tmp / name).open("wb") as fh:
                pickle.dump(payload, fh, protocol=PICKLE_PROTOCOL)
            count += 1
    logger.info("wrote %d CheXlocalize heatmap pickles to %s", count, folder)
    return count


def read_chexlocalize_folder(folder: str | Path, *, model: str = "chexlocalize", method: str = "gradcam",
                             materialise: bool = True) -> HeatmapSet:
    """Read a CheXlocalize heatmap pickle folder into a ``HeatmapSet`` (rows sorted by file name).

    Reuses the localization pipeline's reader (``localization.chexlocalize_io``: restricted
    unpickler, file-name and content checks) and adds this module's convention for unknown
    labels (``gt == -1`` -> NaN).

    Args:
        folder: Folder of ``{cxr_id}_{task}_map.pkl`` files.
        model: Value of the ``model`` column.
        method: Value of the ``method`` column.
        materialise: Load every map into one float32 array (default); ``False`` keeps the
            reader's lazy stack that loads a pickle per access.

    Returns:
        The set, maps at the pickles' own resolution.

    Raises:
        DataFormatError: no pickles, a malformed or unsafe file.
    """
    lazy = read_heatmap_folder(folder, model=model, method=method)
    index = lazy.index.copy()
    index["gt"] = index["gt"].astype(float).mask(index["gt"] == UNKNOWN_GT)
    if not materialise:
        return HeatmapSet(index=index, maps=lazy.maps)
    maps = np.stack([np.asarray(lazy.maps[i], dtype=np.float32) for i in range(len(lazy))]) if len(lazy) else np.zeros((0, 1, 1), np.float32)
    return HeatmapSet(index=index, maps=maps)
