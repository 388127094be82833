"""Threshold tuning from the per-map counts of one streaming pass (no re-reading of maps)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import ParameterError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.chexlocalize import PickleFolderSet
from cxr_spurious.localization.evaluate import (
    build_file_jobs,
    build_jobs,
    count_thresholds_file_job,
    count_thresholds_job,
)
from cxr_spurious.localization.metrics import rle_area
from cxr_spurious.parallel import ordered_map
from cxr_spurious.tasks import CHEXLOCALIZE_TASKS

logger = logging.getLogger(__name__)


def threshold_grid(start: float, stop: float, step: float) -> list[float]:
    """``np.arange(start, stop, step)`` like the reference, float steps included.

    For 0.2, 0.8, 0.1 that is 0.2..0.8 (seven thresholds: the accumulated steps overshoot,
    so np.arange also yields 0.8000000000000003), the grid the reference's
    ``tune_heatmap_threshold`` tunes; 0, 0.9, 0.1 gives the cutoffs 0..0.8.
    """
    if step <= 0 or stop <= start:
        raise ParameterError(
            "localization.tuning_grid",
            f"need start < stop and step > 0, got {start}, {stop}, {step}",
        )
    return [float(v) for v in np.arange(start, stop, step)]


def grid_value(value: float) -> float:
    """A grid value as the tuning tables write it: the float steps' rounding error removed
    (0.30000000000000004 -> 0.3), and nothing else. The reference rounds to one decimal,
    which is the same on its 0.1 grids but merges the values of a finer grid (0.35 -> 0.3)."""
    return round(float(value), 10)


def tuning_counts(
    heatmaps: HeatmapSet,
    gt_segmentations: Mapping[str, Mapping[str, Any]],
    grid: Sequence[float],
    *,
    workers: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Per-map pixel counts for threshold tuning, in one streaming pass over the positive maps.

    Only (CXR, task) pairs with a non-empty ground truth are read: the true-positive IoU
    the reference tunes on is NaN for every other map. Each map is upsampled once for all
    thresholds (the reference re-reads and re-upsamples it for every threshold).

    Args:
        heatmaps: Maps with their index; a ``PickleFolderSet`` whose index is pending is
            not indexed: only its positive pickles are read, each once.
        gt_segmentations: CheXlocalize gt JSON.
        grid: Fixed thresholds (``threshold_grid``).
        workers: CPU worker processes (``None`` = one per core).
        progress: Show a progress bar.

    Returns:
        One row per positive map: index columns, ``in_gt``, ``gt_area`` and
        ``tune_area_<t>`` / ``tune_inter_<t>``; the input of ``tune_thresholds``.
    """
    pairs = heatmaps.pairs
    keep = np.array(
        [
            rle_area(gt_segmentations.get(str(c), {}).get(str(t))) > 0
            for c, t in zip(pairs["image_id"], pairs["task"])
        ],
        dtype=bool,
    )
    options: dict[str, Any] = {
        "configs": {},
        "tuning_grid": grid,
        "extra_metrics": False,
        "top_k": 0,
        "spurious_segmentations": {},
    }
    run = {"n_items": int(keep.sum()), "workers": workers, "desc": "tuning counts"}
    if isinstance(heatmaps, PickleFolderSet) and heatmaps.index_pending:
        # only the positive maps' pickles are read, each once (index fields and map)
        jobs = build_file_jobs(heatmaps, gt_segmentations, rows=np.flatnonzero(keep), **options)
        done = list(ordered_map(count_thresholds_file_job, jobs, progress=progress, **run))
        index = heatmaps.index_frame([row for row, _ in done])
        counts = [c for _, c in done]
    else:
        subset = heatmaps.select(keep)
        jobs = build_jobs(subset, gt_segmentations, **options)
        counts = list(ordered_map(count_thresholds_job, jobs, progress=progress, **run))
        index = subset.index.reset_index(drop=True)
    table = pd.concat([index, pd.DataFrame(counts, index=range(len(counts)))], axis=1)
    table.insert(len(index.columns), "in_gt", True)
    return table


def _with_map(per_map: pd.DataFrame) -> pd.Series:
    """Rows that are maps: a gt pair without one (``missing_maps``) has no
    ``tune_otsu_area`` in a table evaluated with a tuning grid."""
    if "tune_otsu_area" in per_map.columns:
        return per_map["tune_otsu_area"].notna()
    return pd.Series(True, index=per_map.index)


def _positive(per_map: pd.DataFrame) -> pd.Series:
    """Rows of a (CXR, task) with a non-empty ground truth, the only maps that get
    ``tune_area_<t>`` counts (``evaluate.score_fast_map``)."""
    gt_area = per_map["gt_area"] if "gt_area" in per_map.columns else 0
    return per_map["in_gt"].astype(bool) & (pd.to_numeric(gt_area) > 0)


def tune_thresholds(
    per_map: pd.DataFrame,
    grid: Sequence[float],
    *,
    label: str = "",
    split: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per task, the fixed threshold maximising true-positive mIoU over the gt CXRs.

    The counts ``tune_area_<t>`` / ``tune_inter_<t>`` exist only for maps of a (CXR, task)
    with a non-empty ground truth. A table without a single such map (e.g. maps of another
    split than the ground truth's) has none to tune on: its mIoUs are NaN, with a warning
    naming ``label`` (the set) and that cause, not a grid error; a task without a positive
    map gets NaN mIoUs too. A task whose mIoUs are all NaN gets a NaN (empty) threshold in
    the results table, with a warning: CheXlocalize's ``np.argmax`` over NaNs picks the
    grid's first threshold, which read as a tuned value (and could be copied into
    ``localization.fixed_thresholds``, which refuses NaN).

    Args:
        per_map: ``localization_per_map`` rows of one set, or ``tuning_counts``.
        grid: The fixed thresholds.
        label: The set, named in the warning.
        split: The split the maps were made on (``saliency.split``), named in the warning.

    Returns:
        (``tuning_results.csv`` layout: threshold, task; and the full grid: task, threshold, mIoU).

    Raises:
        ParameterError: ``localization.tuning_grid``: the table has positive maps but no
            counts for a threshold of ``grid`` (evaluated with another grid, or none).
    """
    rows, best = [], []
    scored = per_map[per_map["in_gt"].astype(bool)]
    lacking = [t for t in grid if f"tune_area_{t:g}" not in per_map.columns]
    maps = _with_map(per_map)
    no_positive = bool(lacking) and not (maps & _positive(per_map)).any()
    if no_positive:
        where = f", made on the {split} split (saliency.split)," if split is not None else ""
        logger.warning(
            "%s: none of its %d map(s)%s is of a CXR and task with a non-empty ground truth "
            "(%d of them of CXRs in the ground truth): the fixed-threshold tuning has no "
            "positive map to tune on, its mIoUs are NaN. Are the maps of another split than "
            "the ground truth's?",
            label or "the heatmap set",
            int(maps.sum()),
            where,
            int((maps & per_map["in_gt"].astype(bool)).sum()),
        )
    elif lacking:
        raise ParameterError(
            "localization.tuning_grid",
            f"per-map table lacks counts for threshold {lacking[0]:g}; evaluate with the same grid",
        )
    for task, group in scored.groupby("task", sort=True):
        mious = []
        for t in grid:
            if no_positive:
                rows.append({"task": task, "threshold": grid_value(t), "mIoU": np.nan})
                mious.append(np.nan)
                continue
            area = group[f"tune_area_{t:g}"].to_numpy(float)
            inter = group[f"tune_inter_{t:g}"].to_numpy(float)
            gt_area = group["gt_area"].to_numpy(float)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.where((area > 0) & (gt_area > 0), inter / (area + gt_area - inter), np.nan)
            miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else np.nan
            mious.append(miou)
            rows.append({"task": task, "threshold": grid_value(t), "mIoU": miou})
        finite = [m if np.isfinite(m) else -np.inf for m in mious]
        if np.isfinite(mious).any():
            chosen = grid_value(grid[int(np.argmax(finite))])
        else:
            chosen = float("nan")
            if not no_positive:  # that case is warned about once above
                logger.warning(
                    "%s: task %s has no finite mIoU at any threshold of the grid (no map of "
                    "a CXR with a non-empty ground truth for it): its tuned threshold is left "
                    "empty, not set to the grid's first value",
                    label or "the heatmap set",
                    task,
                )
        best.append({"threshold": chosen, "task": task})
    return pd.DataFrame(best), pd.DataFrame(rows)


#: Per-map counts of the probability-cutoff tuning (``evaluate.score_fast_map``).
PROB_TUNING_COLUMNS: tuple[str, ...] = ("prob", "gt_area", "tune_otsu_area", "tune_otsu_inter")


def tune_probability_cutoffs(
    per_map: pd.DataFrame,
    cutoffs: Sequence[float],
    by_task: Mapping[str, Sequence[float]] | None = None,
) -> pd.DataFrame:
    """Full-dataset mIoU per task when only maps with ``prob > cutoff`` keep their mask.

    The reference's ``tune_probability_threshold.compute_miou``: every map of the task is
    scored, a CXR outside the ground truth against an empty mask (IoU 0 for a non-empty
    prediction, NaN when both are empty); the mask is plain Otsu (``cam_to_segmentation``
    with no threshold, smoothing or cutoff: ``tune_otsu_area`` / ``tune_otsu_inter``),
    whatever the evaluation was configured with; it is kept when ``prob > cutoff``
    (strictly), else empty. Ground-truth pairs without a map (rows with no
    ``tune_otsu_area``) are left out: the reference iterates over the map files.

    ``by_task`` replaces ``cutoffs`` for the tasks it names: the reference tunes Lung
    Lesion from 0.1, not 0 (on CheXpert's val set a cutoff of 0 wins by an mIoU of 0.001
    from its one Lung Lesion segmentation, and leaves 668 false-positive segmentations).

    Raises:
        ParameterError: the per-map table lacks the counts (evaluated without a tuning grid),
            or ``by_task`` names a task that is not a CheXlocalize task (a misspelt task
            would silently get ``cutoffs``).

    Returns:
        ``probability_tuning_results.csv`` layout: prob_threshold, mIoU (3 decimals), task.
    """
    unknown = sorted(str(t) for t in (by_task or {}) if str(t) not in CHEXLOCALIZE_TASKS)
    if unknown:
        raise ParameterError(
            "localization.prob_cutoffs_grid_by_task",
            f"unknown task(s) {unknown}; valid names are: {', '.join(sorted(CHEXLOCALIZE_TASKS))}",
        )
    missing = [c for c in PROB_TUNING_COLUMNS if c not in per_map.columns]
    if missing:
        raise ParameterError(
            "localization.tuning_grid",
            f"per-map table lacks {missing} for the probability-cutoff tuning; "
            "evaluate with a non-empty tuning grid",
        )
    rows = []
    with_map = per_map[per_map["tune_otsu_area"].notna()]
    for task, group in with_map.groupby("task", sort=True):
        prob = group["prob"].to_numpy(float)
        pa, ga, inter = (
            group[c].to_numpy(float) for c in ("tune_otsu_area", "gt_area", "tune_otsu_inter")
        )
        for c in (by_task or {}).get(str(task), cutoffs):
            with np.errstate(invalid="ignore"):
                off = ~(prob > c)  # the reference keeps the mask when prob > cutoff
            a, i = np.where(off, 0, pa), np.where(off, 0, inter)
            union = a + ga - i
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.where(union > 0, i / union, np.nan)
            miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else np.nan
            rows.append({"prob_threshold": grid_value(c), "mIoU": round(miou, 3), "task": task})
    return pd.DataFrame(rows)
