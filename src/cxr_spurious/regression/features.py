"""Geometric features of ground-truth masks (reference: cheXlocalize compute_pathology_features)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import pandas as pd

from cxr_spurious.io.masks import decode_rle

logger = logging.getLogger(__name__)


def mask_features(mask: np.ndarray) -> dict[str, float]:
    """Area ratio, elongation and irrectangularity of a binary mask.

    As the reference's ``get_geometric_features``: every contour, holes included
    (``cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)``, the reference's
    ``findContours(segm, 1, 1)``), and of those the one with the most points (the first on a
    tie), which can be a hole's. Elongation = long / short side of that contour's
    minimum-area rectangle; irrectangularity = 1 - contour area / rectangle area (the
    reference's ``1 - rec_area_ratio``). Elongation and irrectangularity are NaN for an
    empty mask, and for a mask one pixel wide (a straight line of pixels, in any direction,
    or a single pixel): the contour through the pixel centres then has a minimum-area
    rectangle with a short side of 0 (the reference divides by that zero).
    ``geometric_features`` counts such masks in a warning, since their lesions leave the
    elongation and irrectangularity regressions.
    """
    h, w = mask.shape
    area = float(mask.sum())
    out = {"area_ratio": area / (h * w), "elongation": np.nan, "irrectangularity": np.nan}
    if area == 0:
        return out
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE
    )
    longest = contours[int(np.argmax([len(c) for c in contours]))]
    (_, _), (rw, rh), _ = cv2.minAreaRect(longest)
    long_side, short_side = max(rw, rh), min(rw, rh)
    rect_area = rw * rh
    out["elongation"] = float(long_side / short_side) if short_side > 0 else np.nan
    out["irrectangularity"] = (
        float(1 - cv2.contourArea(longest) / rect_area) if rect_area > 0 else np.nan
    )
    return out


def geometric_features(
    gt_segmentations: Mapping[str, Mapping[str, Any]],
    gt_annotations: Mapping[str, Mapping[str, Any]],
) -> pd.DataFrame:
    """Shape features per (CXR, task) with a non-empty gt.

    Columns n_instances, area_ratio, elongation, irrectangularity. ``n_instances`` is the
    number of annotated polygons of that task (as the reference, which counts annotations
    because overlapping instances merge in the mask), 0 where the annotations have none for a
    non-empty mask (the reference's value too); those pairs are counted in one warning, since
    a mask without annotated instances usually means mismatched files, and the regressions
    leave them out, as the reference does (``models.annotated_lesions``). Masks one pixel
    wide (``mask_features``: NaN elongation and irrectangularity) are counted in a warning
    too, since their lesions leave those two regressions (``n`` differs between features).
    """
    rows = []
    unannotated: list[str] = []
    degenerate: list[str] = []
    for cxr_id in sorted(gt_segmentations):
        for task, rle in sorted(gt_segmentations[cxr_id].items()):
            mask = decode_rle(rle, source="gt_segmentations", key=f"{cxr_id}/{task}")
            if not mask.any():
                continue
            n_inst = len(gt_annotations.get(cxr_id, {}).get(task, []))
            if n_inst == 0:
                unannotated.append(f"{cxr_id}/{task}")
            shape = mask_features(mask)
            if np.isnan(shape["elongation"]) or np.isnan(shape["irrectangularity"]):
                degenerate.append(f"{cxr_id}/{task}")
            rows.append({"image_id": cxr_id, "task": task, "n_instances": n_inst, **shape})
    if unannotated:
        logger.warning(
            "%d non-empty ground-truth mask(s) have no annotated instance in gt_annotations "
            "(n_instances = 0, as the CheXlocalize reference counts them; the regressions "
            "leave them out, as the reference does), e.g. %s: check that the segmentations "
            "and annotations files are of the same split",
            len(unannotated),
            ", ".join(unannotated[:3]),
        )
    if degenerate:
        logger.warning(
            "%d non-empty ground-truth mask(s) are one pixel wide (a line or a single pixel): "
            "their minimum-area rectangle has a side of 0, so elongation and "
            "irrectangularity are NaN and those lesions are left out of the elongation and "
            "irrectangularity regressions (n differs between features), e.g. %s",
            len(degenerate),
            ", ".join(degenerate[:3]),
        )
    return pd.DataFrame(rows)
