"""Localization metrics on RLEs and full-resolution maps.

The reference semantics are noted per function.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from cxr_spurious.errors import DataFormatError, check_integer
from cxr_spurious.io.masks import _compressed_counts, decode_rle
from cxr_spurious.stats.metrics import auroc_ranked
from cxr_spurious.tasks import CHEXLOCALIZE_TASKS

logger = logging.getLogger(__name__)


def _coco(rle: Mapping[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def rle_area(rle: Mapping[str, Any] | None) -> int:
    """Foreground pixels of an RLE without decoding it (0 for ``None``)."""
    return 0 if rle is None else int(mask_utils.area(_coco(rle)))


def rle_bbox(rle: Mapping[str, Any]) -> list[float]:
    """pycocotools bounding box [x, y, w, h] of an RLE, without decoding it."""
    return [float(v) for v in mask_utils.toBbox(_coco(rle))]


def rle_decode_t(rle: Mapping[str, Any]) -> np.ndarray:
    """Decoded mask, transposed: a C-contiguous (w, h) uint8 view, without the copy to C order.

    pycocotools decodes column-major, so ``decode(rle).T`` is already contiguous; this is
    the orientation of the fast kernels (``localization.kernels``).
    """
    return mask_utils.decode(_coco(rle)).T


def rle_runs(
    rle: Mapping[str, Any], *, source: object = "<rle>", key: str | None = None
) -> np.ndarray:
    """Column-major run lengths (zeros first) of an RLE, without decoding the mask.

    Raises:
        DataFormatError: a counts string that is not pycocotools' code (naming ``source``
            and ``key``).
    """
    counts = rle["counts"]
    if isinstance(counts, str | bytes):
        return _compressed_counts(counts, source, key)
    return np.asarray(counts, dtype=np.int64)


def rle_counts(pred: Mapping[str, Any], gt: Mapping[str, Any]) -> tuple[int, int, int]:
    """(pred area, gt area, intersection) of two RLEs, without decoding them."""
    p, g = _coco(pred), _coco(gt)
    inter = int(mask_utils.area(mask_utils.merge([p, g], intersect=True)))
    return int(mask_utils.area(p)), int(mask_utils.area(g)), inter


def iou_from_counts(pred_area: int, gt_area: int, inter: int, *, true_pos_only: bool) -> float:
    """Reference IoU.

    True-positive mode is NaN when either mask is empty; full mode when the union is.
    """
    union = pred_area + gt_area - inter
    if true_pos_only and (pred_area == 0 or gt_area == 0):
        return float("nan")
    if union == 0:
        return float("nan")
    return inter / union


def rle_pixel(rle: Mapping[str, Any], row: int, col: int) -> int:
    """Value (0/1) of an RLE mask at (row, col), via a one-pixel RLE intersection."""
    h, w = int(rle["size"][0]), int(rle["size"][1])
    idx = int(col) * h + int(row)
    point = mask_utils.frPyObjects({"size": [h, w], "counts": [idx, 1, h * w - idx - 1]}, h, w)
    return int(mask_utils.area(mask_utils.merge([_coco(rle), point], intersect=True)))


def salient_point_hit(gt_mask: np.ndarray, points: Sequence[Sequence[float]] | None) -> float:
    """Human-benchmark hit: NaN for an empty gt; 1 if any point (x, y) is inside, else 0."""
    if not gt_mask.any():
        return float("nan")
    if not points:
        return 0.0
    h, w = gt_mask.shape
    for x, y in ((float(p[0]), float(p[1])) for p in points):
        r, c = int(y), int(x)
        if 0 <= r < h and 0 <= c < w and gt_mask[r, c]:
            return 1.0
    return 0.0


def segmentation_table(
    pred: Mapping[str, Mapping[str, Any]],
    gt: Mapping[str, Mapping[str, Any]],
    *,
    source: str = "prediction",
    tasks: Sequence[str] = CHEXLOCALIZE_TASKS,
) -> pd.DataFrame:
    """Per (cxr, task) pixel counts and IoUs of a segmentation JSON against the ground truth.

    Covers every gt CXR (a missing prediction is an empty mask, marked ``pred_missing``
    and counted in one log line) and, for the full mode, predicted CXRs outside the gt (gt
    taken as empty), like the reference eval.

    Returns:
        Columns image_id, task, in_gt, pred_missing, pred_area, gt_area, intersection,
        n_pixels, iou_tp, iou_full.
    """
    rows = []
    missing: list[str] = []
    for cxr_id in sorted(set(gt) | set(pred)):
        for task in tasks:
            p_rle = pred.get(cxr_id, {}).get(task)
            g_rle = gt.get(cxr_id, {}).get(task)
            ref = g_rle if g_rle is not None else p_rle
            if ref is None:
                continue
            h, w = int(ref["size"][0]), int(ref["size"][1])
            if p_rle is None:
                missing.append(f"{cxr_id} / {task}")
                pa, ga, inter = 0, int(mask_utils.area(_coco(g_rle))), 0
            elif g_rle is None:
                pa, ga, inter = int(mask_utils.area(_coco(p_rle))), 0, 0
            else:
                if [int(s) for s in p_rle["size"]] != [h, w]:
                    raise DataFormatError(
                        source,
                        f"mask size {p_rle['size']} differs from the ground truth {[h, w]}",
                        where=f"{cxr_id}/{task}",
                    )
                pa, ga, inter = rle_counts(p_rle, g_rle)
            rows.append(
                {
                    "image_id": cxr_id,
                    "task": task,
                    "in_gt": cxr_id in gt,
                    "pred_missing": p_rle is None,
                    "pred_area": pa,
                    "gt_area": ga,
                    "intersection": inter,
                    "n_pixels": h * w,
                    "iou_tp": iou_from_counts(pa, ga, inter, true_pos_only=True)
                    if cxr_id in gt
                    else np.nan,
                    "iou_full": iou_from_counts(pa, ga, inter, true_pos_only=False),
                }
            )
    if missing:  # one line, not one per pair (a simulated reader skips thousands)
        logger.info(
            "%s has no segmentation for %d (image, task) pair(s) with a ground truth "
            "(first: %s): scored as empty masks, marked in column pred_missing",
            source,
            len(missing),
            missing[0],
        )
    return pd.DataFrame(rows)


def human_hit_table(
    gt: Mapping[str, Mapping[str, Any]],
    salient_points: Mapping[str, Mapping[str, Any]],
    tasks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Human-benchmark hit/miss per (gt cxr, task) from salient points (reference semantics).

    ``tasks`` defaults to the tasks present in each CXR's ground truth (the 10 CheXlocalize
    tasks on CheXlocalize data, the phantom's pathologies on the phantom).
    """
    rows = []
    for cxr_id in sorted(gt):
        for task in tasks if tasks is not None else list(gt[cxr_id]):
            mask = decode_rle(gt[cxr_id][task], source="gt_segmentations", key=f"{cxr_id}/{task}")
            rows.append(
                {
                    "image_id": cxr_id,
                    "task": task,
                    "hit": salient_point_hit(mask, salient_points.get(cxr_id, {}).get(task)),
                }
            )
    return pd.DataFrame(rows)


def precision_recall_specificity(table: pd.DataFrame) -> pd.DataFrame:
    """Pixel-wise precision, recall/sensitivity and specificity per task, pooled over gt CXRs.

    Args:
        table: Output of ``segmentation_table`` (or the per-map table) with pixel counts.

    Returns:
        Columns pathology, precision, recall/sensitivity, specificity (tasks sorted).
    """
    t = table[table["in_gt"]].copy()
    t["tp"] = t["intersection"]
    t["fp"] = t["pred_area"] - t["intersection"]
    t["fn"] = t["gt_area"] - t["intersection"]
    t["tn"] = t["n_pixels"] - t["pred_area"] - t["gt_area"] + t["intersection"]
    s = t.groupby("task")[["tp", "fp", "fn", "tn"]].sum().sort_index()
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame(
            {
                "pathology": s.index,
                "precision": (s.tp / (s.tp + s.fp)).to_numpy(),
                "recall/sensitivity": (s.tp / (s.tp + s.fn)).to_numpy(),
                "specificity": (s.tn / (s.tn + s.fp)).to_numpy(),
            }
        )


def count_segmentations(
    segmentations: Mapping[str, Mapping[str, Any]], tasks: Sequence[str] = CHEXLOCALIZE_TASKS
) -> pd.Series:
    """Number of CXRs with a non-empty segmentation per task.

    Sorted tasks; the reference's ``n_segs``.
    """
    counts = {
        t: sum(
            int(mask_utils.area(_coco(seg[t]))) > 0 for seg in segmentations.values() if t in seg
        )
        for t in sorted(tasks)
    }
    return pd.Series(counts, dtype="int64")


class RankedScore:
    """One descending sort of a map's pixel scores, shared by its rank-based metrics.

    ``mass_rank_metrics`` (relevance rank, top-k, pixel AUROC) and ``spurious_auroc`` (one
    per object) each sorted the full-resolution map again; with a ``RankedScore`` the map
    is sorted once per map. The AUROCs are ``stats.metrics.auroc_ranked`` (the
    Mann-Whitney statistic with average ranks for ties, as ``stats.metrics.auroc`` and
    scikit-learn compute it).

    Args:
        score: The map (any shape, finite values).
    """

    def __init__(self, score: np.ndarray) -> None:
        self.values = np.asarray(score, dtype=np.float64).reshape(-1)
        # descending, ties in pixel order: the top-k convention of the relevance metrics
        self.order = np.argsort(-self.values, kind="stable")
        self.sorted = self.values[self.order]
        self.constant = bool(self.values.size == 0 or self.sorted[0] == self.sorted[-1])

    def auroc(self, mask: np.ndarray, exclude: np.ndarray | None = None) -> float:
        """P(score of a ``mask`` pixel > score of another pixel), ties counted half.

        Pixels of ``exclude`` are left out of both classes. NaN when a class is empty.
        """
        positive = np.asarray(mask, dtype=bool).reshape(-1)[self.order]
        if exclude is None:
            return auroc_ranked(positive, self.sorted)
        keep = ~np.asarray(exclude, dtype=bool).reshape(-1)[self.order]
        return auroc_ranked(positive[keep], self.sorted[keep])


def check_top_k(top_k: object, key: str = "localization.top_k") -> int:
    """``top_k`` as an int >= 1 (a whole float such as 1000.0 is accepted).

    ``inside[:k]`` with k = 0 is empty (a NaN share) and with k = -1 drops the last pixel
    (a share of nearly the whole image), so neither may reach the metric.

    Raises:
        ParameterError: naming ``key``.
    """
    return check_integer(top_k, key, low=1)


def mass_rank_metrics(
    score: np.ndarray,
    gt_mask: np.ndarray,
    *,
    top_k: int = 1000,
    ranked: RankedScore | None = None,
) -> dict[str, float]:
    """Quantus-style localisation metrics of a non-negative map against a mask.

    Empty ground truth gives NaN for every metric (Quantus would count it as a hit). A
    constant map (no spatial information; the evaluation passes a constant map as zeros)
    gives NaN for the rank-based metrics (relevance rank, top-k, pixel AUROC), as
    ``spurious_auroc`` does: its descending sort would break the ties in pixel order, so
    these would score the mask's position in the image, not the map.

    Args:
        score: The map.
        gt_mask: The mask, same shape.
        top_k: k of the top-k intersection (an integer >= 1; ``check_top_k``).
        ranked: ``RankedScore(score)`` when the caller already has it (one sort per map).

    Returns:
        relevance_mass (share of map mass inside the mask, ``mass_share``; the evaluation
        passes the min-max normalised map, so this is ``relevance_mass``), relevance_rank
        (share of the top-|mask| pixels inside it), top_k_intersection (share of the top-k
        pixels inside it) and pixel_auroc (the map as a pixel score for the mask); the last
        three NaN for a constant map.
    """
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    g = np.asarray(gt_mask, dtype=bool).reshape(-1)
    n_gt = int(g.sum())
    if n_gt == 0:
        return {
            "relevance_mass": np.nan,
            "relevance_rank": np.nan,
            "top_k_intersection": np.nan,
            "pixel_auroc": np.nan,
        }
    mass = mass_share(s, g)
    ranked = RankedScore(s) if ranked is None else ranked
    if ranked.constant:
        return {
            "relevance_mass": mass,
            "relevance_rank": np.nan,
            "top_k_intersection": np.nan,
            "pixel_auroc": np.nan,
        }
    inside = g[ranked.order]
    rank = float(inside[:n_gt].mean())
    k = min(check_top_k(top_k), s.size)
    topk = float(inside[:k].mean())
    return {
        "relevance_mass": mass,
        "relevance_rank": rank,
        "top_k_intersection": topk,
        "pixel_auroc": ranked.auroc(g),
    }


def spurious_auroc(
    score: np.ndarray,
    mask: np.ndarray,
    exclude: np.ndarray | None = None,
    *,
    ranked: RankedScore | None = None,
) -> float:
    """The map as a pixel score for a spurious-object mask: P(object pixel > other pixel).

    Rank-based, so unlike the mass share it does not depend on how finely the map can
    resolve a thin object: a coarse map centred on the object still ranks its pixels high.
    Pixels of ``exclude`` (the true pathology) are left out of both classes, so a map on
    the lesion is neither credited nor charged for an object drawn inside it. NaN for a
    constant map (no spatial information) or when either class is empty. ``ranked``:
    ``RankedScore(score)`` when the caller already has it (one sort per map).
    """
    ranked = RankedScore(score) if ranked is None else ranked
    if ranked.constant:
        return float("nan")
    return ranked.auroc(mask, exclude)


def mass_share(score: np.ndarray, mask: np.ndarray) -> float:
    """Share of a non-negative map's mass on a mask (NaN for a zero map).

    The project's relevance mass is this share taken on the **min-max normalised** map
    (``relevance_mass``): callers that already hold the normalised map (the localization
    evaluation's score) call it directly.
    """
    s = np.asarray(score, dtype=np.float64)
    total = s.sum()
    return float(s[np.asarray(mask, dtype=bool)].sum() / total) if total > 0 else float("nan")


def relevance_mass(map2d: np.ndarray, mask: np.ndarray) -> float:
    """Share of a map's relevance on a mask: ``mass_share`` of the min-max normalised map.

    This is the one definition of relevance mass in the project: the localization
    evaluation's lesion mass and ``shortcut_<object>`` (tube) mass, and the sweep's
    ``<method>_artefact_mass``. Normalising first removes the map's floor, so a constant
    offset (a probability map's background, about 0.1-0.3 in the phantom study) does not
    pull the share towards the mask's area share. The arithmetic is the evaluation's
    (float32 ``(map - min) / (max - min)``, as ``segmentation.normalise``); NaN for a
    constant map, which carries no spatial information.
    """
    m = np.asarray(map2d, dtype=np.float32)
    lo, hi = np.min(m), np.max(m)
    span = np.float32(hi - lo)
    if not span > 0:
        return float("nan")
    norm = np.divide(np.subtract(m, lo, dtype=np.float32), span, dtype=np.float32)
    return mass_share(norm, mask)
