"""Stream a ``HeatmapSet`` once: segmentation, IoU, hit/miss, tuning counts, extra metrics.

Each map is upsampled once (torch; on CUDA when available), segmented, RLE-encoded, and
scored against the ground-truth RLE without decoding it (pycocotools RLE arithmetic).
Only positive (non-empty gt) pairs decode their mask, for the threshold-tuning counts and
the optional mass/rank metrics. Memory is bounded by one full-size map at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from cxr_spurious.errors import DataFormatError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.masks import decode_rle, encode_rle
from cxr_spurious.localization.chexlocalize_io import check_task
from cxr_spurious.localization.metrics import (
    iou_from_counts,
    mass_rank_metrics,
    mass_share,
    rle_counts,
    rle_pixel,
)
from cxr_spurious.localization.segmentation import (
    SegmentationConfig,
    check_finite,
    is_constant,
    normalise,
    pick_device,
    segment,
    upsample,
)

logger = logging.getLogger(__name__)


def _encode_fast(mask: np.ndarray) -> dict[str, Any]:
    # pycocotools wants column-major data: a blocked cv2 transpose beats np.asfortranarray.
    return encode_rle(cv2.transpose(mask).T)


def _gt_entry(gt: Mapping[str, Mapping[str, Any]], image_id: str, task: str, h: int, w: int) -> dict[str, Any] | None:
    entry = gt.get(image_id)
    if entry is None:
        return None
    rle = entry.get(task)
    if rle is None:
        raise DataFormatError("gt_segmentations", f"CXR has no mask for task '{task}'; ground-truth files list every task", where=image_id)
    size = [int(rle["size"][0]), int(rle["size"][1])]
    if size != [h, w]:
        raise DataFormatError("heatmap", f"cxr_dims (w, h) = ({w}, {h}) disagree with the ground-truth size [h, w] = {size}", where=f"{image_id}/{task}")
    return rle


def score_map(up: torch.Tensor, norm: torch.Tensor | None, mask: np.ndarray, gt_rle: dict[str, Any] | None, *, tuning_grid: Sequence[float], extra_metrics: bool, top_k: int, spurious: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score one segmented map; returns (record fields, predicted RLE)."""
    h, w = mask.shape
    pred = _encode_fast(mask)
    rec: dict[str, Any] = {"in_gt": gt_rle is not None, "n_pixels": h * w}
    if gt_rle is None:
        pa, ga, inter = int(mask.sum()), 0, 0
    else:
        pa, ga, inter = rle_counts(pred, gt_rle)
    rec.update(pred_area=pa, gt_area=ga, intersection=inter)
    rec["iou_tp"] = iou_from_counts(pa, ga, inter, true_pos_only=True) if gt_rle is not None else np.nan
    rec["iou_full"] = iou_from_counts(pa, ga, inter, true_pos_only=False)
    flat = int(torch.argmax(up).item())  # first maximal index, like np.argmax
    row, col = divmod(flat, w)
    rec.update(argmax_row=row, argmax_col=col)
    rec["hit"] = float(rle_pixel(gt_rle, row, col)) if gt_rle is not None and ga > 0 else np.nan
    score = norm if norm is not None else torch.zeros_like(up)
    if gt_rle is not None and ga > 0 and (tuning_grid or extra_metrics):
        gt_mask = torch.from_numpy(decode_rle(gt_rle, source="gt_segmentations")).to(score.device).bool()
        inside = score[gt_mask]
        for t in tuning_grid:
            rec[f"tune_area_{t:g}"] = int((score > float(t)).sum().item())
            rec[f"tune_inter_{t:g}"] = int((inside > float(t)).sum().item())
        if extra_metrics:
            rec.update(mass_rank_metrics(score.cpu().numpy(), gt_mask.cpu().numpy(), top_k=top_k))
    for name, rle in spurious.items():
        rec[f"shortcut_{name}"] = mass_share(score.cpu().numpy(), decode_rle(rle, source="spurious_segmentations", key=name))
    return rec, pred


def evaluate_heatmap_set(
    heatmaps: HeatmapSet,
    gt_segmentations: Mapping[str, Mapping[str, Any]],
    *,
    configs: Mapping[str, SegmentationConfig] | None = None,
    tuning_grid: Sequence[float] = (),
    extra_metrics: bool = False,
    top_k: int = 1000,
    spurious_segmentations: Mapping[str, Mapping[str, Any]] | None = None,
    prefer_gpu: bool = True,
    progress: bool = True,
    desc: str = "localization",
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Evaluate every map of a set against the ground truth in one streaming pass.

    Args:
        heatmaps: Maps at native resolution with their index (see ``HeatmapSet``).
        gt_segmentations: CheXlocalize gt JSON ``{cxr_id: {task: rle}}``.
        configs: Per-task segmentation options (default Otsu for every task).
        tuning_grid: Fixed thresholds for which to count pixels on positive pairs.
        extra_metrics: Compute relevance mass/rank, top-k and pixel AUROC (full-res sorts).
        top_k: k of the top-k intersection.
        spurious_segmentations: ``{cxr_id: {object: rle}}`` for shortcut attribution.
        prefer_gpu: Upsample on CUDA when present.
        progress: Show a progress bar.
        desc: Progress-bar label.

    Returns:
        The per-map table (index columns + counts, IoUs, hit, tuning counts, extras) and the
        predicted segmentation JSON ``{cxr_id: {task: rle}}``.

    Raises:
        DataFormatError: unknown task, NaN/inf map, or dims that disagree with the gt.
    """
    device = pick_device(prefer_gpu)
    configs = configs or {}
    spurious_segmentations = spurious_segmentations or {}
    index = heatmaps.index.reset_index(drop=True)
    records, seg_json = [], {}
    for i in tqdm(range(len(index)), desc=desc, leave=False, disable=not progress):
        row = index.iloc[i]
        image_id, task = str(row["image_id"]), str(row["task"])
        check_task(task, source="heatmaps", key=image_id)
        h, w = int(row["cxr_h"]), int(row["cxr_w"])
        map2d = heatmaps.maps[i]
        check_finite(map2d, source="heatmaps", key=f"{image_id}/{task}")
        gt_rle = _gt_entry(gt_segmentations, image_id, task, h, w)
        with torch.inference_mode():
            up = upsample(map2d, h, w, device)
            norm = None if is_constant(map2d) else normalise(up)
            mask = segment(norm, (h, w), float(row["prob"]), configs.get(task, SegmentationConfig()))
            rec, pred = score_map(up, norm, mask, gt_rle, tuning_grid=tuning_grid, extra_metrics=extra_metrics, top_k=top_k, spurious=spurious_segmentations.get(image_id, {}))
        seg_json.setdefault(image_id, {})[task] = pred
        records.append({**row.to_dict(), **rec})
    table = pd.DataFrame(records)
    return _add_missing_predictions(table, gt_segmentations, index), seg_json


def _add_missing_predictions(table: pd.DataFrame, gt: Mapping[str, Mapping[str, Any]], index: pd.DataFrame) -> pd.DataFrame:
    """Gt (cxr, task) pairs without a map: an empty prediction (reference semantics), logged."""
    have = set(zip(index["image_id"].astype(str), index["task"].astype(str)))
    extra = []
    model = index["model"].iloc[0] if len(index) else ""
    method = index["method"].iloc[0] if len(index) else ""
    for cxr_id, entry in gt.items():
        for task, rle in entry.items():
            if (cxr_id, task) in have:
                continue
            logger.info("no heatmap for %s / %s: scored as an empty prediction", cxr_id, task)
            ga = int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]}))
            h, w = int(rle["size"][0]), int(rle["size"][1])
            extra.append({"image_id": cxr_id, "task": task, "prob": np.nan, "gt": float(ga > 0), "cxr_w": w, "cxr_h": h, "model": model, "method": method,
                          "in_gt": True, "n_pixels": h * w, "pred_area": 0, "gt_area": ga, "intersection": 0, "iou_tp": np.nan,
                          "iou_full": iou_from_counts(0, ga, 0, true_pos_only=False), "hit": 0.0 if ga > 0 else np.nan})
    return pd.concat([table, pd.DataFrame(extra)], ignore_index=True) if extra else table
