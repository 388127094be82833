"""Per-image saliency table of one sweep model: localisation of the lesion and attribution
to the artefact, for every method's ``HeatmapSet``.

Each map is taken as ``|map|`` (signed attributions such as integrated gradients count
their magnitude) and brought to the cache resolution ``S`` of the masks (bilinear). Per
image and method:

* ``iou``: the map's segmentation (CheXlocalize's Otsu threshold,
  ``localization.segmentation.heatmap_to_segmentation``) against the lesion mask, on
  positives (NaN on negatives);
* ``hit``: whether the map's maximum lies in the lesion mask (the pointing game), on
  positives (NaN on negatives);
* ``artefact_mass``, ``artefact_auroc``, ``artefact_area``: ``metrics.artefact_attribution``
  against the artefact mask (empty where the image does not carry the artefact; the lesion
  is left out of the pixel AUROC). The mass is taken on the min-max normalised map
  (``localization.metrics.relevance_mass``), as the study's tube mass.

The table is what ``metrics.model_metrics`` reads as ``saliency``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.localization.segmentation import heatmap_to_segmentation, upsample
from cxr_spurious.sweep.metrics import artefact_attribution

SALIENCY_TABLE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "method",
    "iou",
    "hit",
    "artefact_mass",
    "artefact_auroc",
    "artefact_area",
)


def map_iou(segmentation: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union of two binary masks (NaN when both are empty)."""
    seg, gt = np.asarray(segmentation, dtype=bool), np.asarray(mask, dtype=bool)
    union = int((seg | gt).sum())
    return float((seg & gt).sum() / union) if union else float("nan")


def pointing_hit(map2d: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the map's maximum (the first, in row-major order) lies in ``mask``, else 0.0."""
    flat = int(np.argmax(np.asarray(map2d)))
    return float(np.asarray(mask, dtype=bool).reshape(-1)[flat])


def saliency_table(
    heatmaps: Mapping[str, HeatmapSet],
    image_ids: Sequence[str],
    lesion_masks: np.ndarray,
    artefact_masks: np.ndarray,
    *,
    task: str,
) -> pd.DataFrame:
    """One row per (image, method) of ``task``'s maps (``SALIENCY_TABLE_COLUMNS``).

    Args:
        heatmaps: ``{set name: HeatmapSet}`` of one model (one method per set).
        image_ids: Ids of the rows of ``lesion_masks`` / ``artefact_masks``.
        lesion_masks: (n, S, S) lesion masks of ``task``.
        artefact_masks: (n, S, S) artefact masks (empty where an image has no artefact).
        task: The task whose maps are read.

    Raises:
        ContractError: masks of different shapes, or a map of an image not in ``image_ids``.
    """
    ids = [str(i) for i in image_ids]
    lesions, artefacts = np.asarray(lesion_masks, bool), np.asarray(artefact_masks, bool)
    if lesions.shape != artefacts.shape or lesions.ndim != 3 or lesions.shape[0] != len(ids):
        raise ContractError(
            f"lesion masks {lesions.shape} and artefact masks {artefacts.shape} "
            f"must both be (n, S, S) with n = {len(ids)} image ids"
        )
    size = lesions.shape[1:]
    position = {image_id: k for k, image_id in enumerate(ids)}
    frames = []
    for name, hset in sorted(heatmaps.items()):
        rows = np.flatnonzero(hset.index["task"].astype(str).to_numpy() == task)
        if rows.size == 0:
            continue
        index = hset.index.iloc[rows]
        unknown = sorted(set(index["image_id"].astype(str)) - set(position))
        if unknown:
            raise ContractError(
                f"heatmap set '{name}' has maps of images without masks, e.g. {unknown[:3]}"
            )
        at = np.array([position[str(i)] for i in index["image_id"]], dtype=np.int64)
        maps = np.stack(
            [upsample(np.abs(hset.maps[r].astype(np.float32)), *size).numpy() for r in rows]
        )
        positive = index["gt"].to_numpy(dtype=float) == 1
        iou = [
            map_iou(heatmap_to_segmentation(m, *size), lesions[k]) if pos else np.nan
            for m, k, pos in zip(maps, at, positive)
        ]
        hit = [
            pointing_hit(m, lesions[k]) if pos else np.nan for m, k, pos in zip(maps, at, positive)
        ]
        attribution = artefact_attribution(maps, artefacts[at], lesions[at])
        frames.append(
            pd.DataFrame(
                {
                    "image_id": index["image_id"].astype(str).to_numpy(),
                    "method": index["method"].astype(str).to_numpy(),
                    "iou": np.asarray(iou, dtype=float),
                    "hit": np.asarray(hit, dtype=float),
                    **{c: attribution[c].to_numpy() for c in attribution.columns},
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=list(SALIENCY_TABLE_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(SALIENCY_TABLE_COLUMNS)]
