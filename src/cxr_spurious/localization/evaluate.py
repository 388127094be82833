"""Stream a ``HeatmapSet`` once: segmentation, IoU, hit/miss, tuning counts, extra metrics.

Each map is loaded and segmented by the fast kernels (``localization.kernels``: the exact
CPU kernel without building the full-size map, one worker process per core; torch on CUDA
only when opted into with ``prefer_gpu``, see ``segmentation.pick_device``) straight to an
RLE, and scored against the ground-truth RLE without decoding it (pycocotools RLE
arithmetic). Only positive (non-empty gt) pairs decode their mask, for the threshold-tuning
counts and the optional mass/rank metrics. Memory is bounded by one full-size map per worker
(only built for tuning counts and mass metrics); results are merged in input order, so they
do not depend on the number of workers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pycocotools import mask as mask_utils

from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.heatmaps import INDEX_COLUMNS, HeatmapSet
from cxr_spurious.io.chexlocalize import (
    PickleFolderSet,
    PickleMapStack,
    check_task,
    index_pickle,
    map_bytes,
    prefetch_heatmap,
    read_heatmap_pickle,
)
from cxr_spurious.io.masks import MAX_MASK_SIDE, decode_rle, validate_rle
from cxr_spurious.localization.bilinear import BilinearMap
from cxr_spurious.localization.kernels import (
    FastMap,
    segment_map_cpu,
    segment_map_torch,
    threshold_counts,
)
from cxr_spurious.localization.metrics import (
    RankedScore,
    iou_from_counts,
    mass_rank_metrics,
    mass_share,
    rle_area,
    rle_counts,
    rle_pixel,
    spurious_auroc,
)
from cxr_spurious.localization.segmentation import SegmentationConfig, pick_device
from cxr_spurious.parallel import ordered_map

logger = logging.getLogger(__name__)


MISSING_MODES: tuple[str, ...] = ("all", "evaluated")

#: The segmentation probability-cutoff tuning scores: the reference's
#: ``tune_probability_threshold.compute_miou`` segments every map with plain
#: ``cam_to_segmentation`` (Otsu, filled contours, no smoothing, no cutoff), whatever
#: thresholds or cutoffs the evaluation itself is configured with.
TUNING_OTSU = SegmentationConfig()


@dataclass(frozen=True)
class MapJob:
    """Everything needed to evaluate one map, picklable for a worker process.

    Attributes:
        image_id: CXR id.
        task: Pathology.
        source: The map (2-D array) or the path of its pickle (loaded in the worker).
        height: Original image height.
        width: Original image width.
        prob: Model probability.
        config: Segmentation options.
        gt_rle: Ground-truth RLE, or ``None`` when the CXR is not in the ground truth.
        tuning_grid: Fixed thresholds to count pixels for (positive pairs only); when not
            empty, every map also gets the plain-Otsu counts of the probability tuning.
        extra_metrics: Compute relevance mass/rank, top-k and pixel AUROC.
        top_k: k of the top-k intersection.
        spurious: ``{object: rle}`` of the CXR for shortcut attribution.
        prefetch: ``(path, nbytes)`` of the next job's pickle: its map is read into the page
            cache in the background while this job computes (``prefetch_heatmap``).
        from_file: ``source`` is a pickle whose index fields are not known yet (a
            ``PickleFolderSet`` with its index pending): ``height``, ``width`` and ``prob``
            (0, 0, NaN until then) are read from the pickle together with the map
            (``evaluate_file_job``, ``count_thresholds_file_job``).
    """

    image_id: str
    task: str
    source: Any
    height: int
    width: int
    prob: float
    config: SegmentationConfig = SegmentationConfig()
    gt_rle: dict[str, Any] | None = None
    tuning_grid: tuple[float, ...] = ()
    extra_metrics: bool = False
    top_k: int = 1000
    spurious: Mapping[str, Any] = field(default_factory=dict)
    prefetch: tuple[str, int] | None = None
    from_file: bool = False


def validate_segmentations(segmentations: Mapping[str, Any], *, source: str) -> None:
    """Validate every RLE of ``{cxr_id: {name: rle}}`` before pycocotools sees any of them.

    pycocotools' ``merge`` and ``area`` trust the counts string: a malformed one (e.g.
    ``"%%%not-rle%%%"``) made the evaluation loop for minutes. Linear in the input's size.

    Raises:
        DataFormatError: naming ``source``, the CXR and the task / object.
    """
    for cxr_id, entry in segmentations.items():
        if not isinstance(entry, Mapping):
            raise DataFormatError(
                source, f"expected {{task: rle}}, got {type(entry).__name__}", where=str(cxr_id)
            )
        for name, rle in entry.items():
            validate_rle(rle, source=source, key=f"{cxr_id}/{name}")


def _gt_rle(gt: Mapping[str, Mapping[str, Any]], image_id: str, task: str) -> dict[str, Any] | None:
    """The ground-truth RLE of (CXR, task); ``None`` when the CXR is not in the ground truth."""
    entry = gt.get(image_id)
    if entry is None:
        return None
    rle = entry.get(task)
    if rle is None:
        raise DataFormatError(
            "gt_segmentations",
            f"CXR has no mask for task '{task}'; ground-truth files list every task",
            where=image_id,
        )
    return rle


def _check_gt_size(rle: Mapping[str, Any], image_id: str, task: str, h: int, w: int) -> None:
    """The map's image size must be the ground truth's."""
    size = [int(rle["size"][0]), int(rle["size"][1])]
    if size != [h, w]:
        raise DataFormatError(
            "heatmap",
            f"cxr_dims (w, h) = ({w}, {h}) disagree with the ground-truth size [h, w] = {size}",
            where=f"{image_id}/{task}",
        )


def _gt_entry(
    gt: Mapping[str, Mapping[str, Any]], image_id: str, task: str, h: int, w: int
) -> dict[str, Any] | None:
    rle = _gt_rle(gt, image_id, task)
    if rle is not None:
        _check_gt_size(rle, image_id, task, h, w)
    return rle


def _load_map(job: MapJob) -> np.ndarray:
    """The job's 2-D float32 map (read from its pickle when given a path), checked finite."""
    if isinstance(job.source, str | Path):
        return read_heatmap_pickle(job.source).map
    arr = np.asarray(job.source, dtype=np.float32)
    arr = arr.reshape(arr.shape[-2:]) if arr.ndim > 2 else arr
    if not np.isfinite(arr).all():  # numpy, not torch: workers stay out of torch's thread pool
        raise DataFormatError(
            "heatmaps",
            "heatmap holds NaN or infinite values; expected finite floats",
            where=f"{job.image_id}/{job.task}",
        )
    return arr


def _score(fast: FastMap, job: MapJob) -> np.ndarray | None:
    """Normalised (h, w) float32 map for the mass metrics (zeros for a constant map)."""
    up = np.asarray(fast.up_t.cpu() if isinstance(fast.up_t, torch.Tensor) else fast.up_t).T
    if fast.span <= 0:
        return np.zeros((job.height, job.width), np.float32)
    norm = np.subtract(up, np.float32(fast.lo), dtype=np.float32)
    return np.ascontiguousarray(np.divide(norm, np.float32(fast.span), dtype=np.float32))


def _is_tuning_otsu(job: MapJob) -> bool:
    """Whether the job's own mask is the plain Otsu mask the probability tuning scores."""
    cfg = job.config
    return (
        cfg.threshold is None
        and cfg.smoothing_k == 0
        and cfg.fill_contours == TUNING_OTSU.fill_contours
        and not job.prob < cfg.prob_cutoff
    )


def tuning_otsu_map(
    fast: FastMap, job: MapJob, map2d: np.ndarray | None = None, device: torch.device | None = None
) -> FastMap:
    """The map segmented as the probability-cutoff tuning needs it (``TUNING_OTSU``).

    ``fast`` itself when the job's mask already is that mask (default Otsu config, map not
    cut off); otherwise the map is segmented again with ``TUNING_OTSU`` (on ``device`` when
    CUDA, from ``map2d`` or, on the CPU, from ``fast.source``).

    Raises:
        ValueError: a second segmentation is needed but neither ``map2d`` nor
            ``fast.source`` holds the native map.
    """
    if _is_tuning_otsu(job):
        return fast
    if map2d is None:
        if fast.source is None:
            raise ValueError(
                f"{job.image_id}/{job.task}: the tuning mask needs the native map "
                "(pass map2d for a CUDA FastMap)"
            )
        map2d = fast.source.src
    if device is not None and device.type == "cuda":
        return segment_map_torch(map2d, job.height, job.width, 1.0, TUNING_OTSU, device)
    return segment_map_cpu(map2d, job.height, job.width, 1.0, TUNING_OTSU)


def score_fast_map(
    fast: FastMap, job: MapJob, tuning_map: FastMap | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score one segmented map against its ground truth; returns (record fields, predicted RLE).

    With a tuning grid, also ``tune_otsu_area`` / ``tune_otsu_inter``: the plain Otsu mask
    (``tuning_map``, else ``tuning_otsu_map``) against the ground truth (empty when the CXR
    is not in it), the counts of the probability-cutoff tuning.
    """
    h, w = job.height, job.width
    pred = fast.rle
    gt_rle = job.gt_rle
    rec: dict[str, Any] = {"in_gt": gt_rle is not None, "n_pixels": h * w}
    if gt_rle is None:
        pa, ga, inter = rle_area(pred), 0, 0
    else:
        pa, ga, inter = rle_counts(pred, gt_rle)
    rec.update(pred_area=pa, gt_area=ga, intersection=inter)
    rec["iou_tp"] = (
        iou_from_counts(pa, ga, inter, true_pos_only=True) if gt_rle is not None else np.nan
    )
    rec["iou_full"] = iou_from_counts(pa, ga, inter, true_pos_only=False)
    row, col = fast.argmax
    rec.update(argmax_row=row, argmax_col=col)
    rec["hit"] = float(rle_pixel(gt_rle, row, col)) if gt_rle is not None and ga > 0 else np.nan
    positive = gt_rle is not None and ga > 0
    gt_mask = (
        decode_rle(gt_rle, source="gt_segmentations", key=f"{job.image_id}/{job.task}")
        if positive and job.extra_metrics
        else None
    )
    if job.tuning_grid:
        otsu = tuning_map if tuning_map is not None else tuning_otsu_map(fast, job)
        if otsu is fast:
            rec["tune_otsu_area"], rec["tune_otsu_inter"] = pa, inter
        elif gt_rle is None:
            rec["tune_otsu_area"], rec["tune_otsu_inter"] = rle_area(otsu.rle), 0
        else:
            oa, _, oi = rle_counts(otsu.rle, gt_rle)
            rec["tune_otsu_area"], rec["tune_otsu_inter"] = oa, oi
    if positive and job.tuning_grid:
        areas, inters = threshold_counts(fast, job.tuning_grid, gt_rle)
        for t, a, i in zip(job.tuning_grid, areas, inters):
            rec[f"tune_area_{t:g}"], rec[f"tune_inter_{t:g}"] = a, i
    score = (
        _score(fast, job) if (gt_mask is not None and job.extra_metrics) or job.spurious else None
    )
    ranked = RankedScore(score) if score is not None else None  # one sort for every rank metric
    if gt_mask is not None and job.extra_metrics:
        rec.update(mass_rank_metrics(score, gt_mask, top_k=job.top_k, ranked=ranked))
    lesion = gt_mask  # the pathology, left out of the rank-based shortcut metric
    if lesion is None and positive and job.spurious:
        lesion = decode_rle(gt_rle, source="gt_segmentations", key=f"{job.image_id}/{job.task}")
    for name, rle in job.spurious.items():
        obj = decode_rle(rle, source="spurious_segmentations", key=name)
        rec[f"shortcut_{name}"] = mass_share(score, obj)
        rec[f"shortcut_auroc_{name}"] = spurious_auroc(score, obj, exclude=lesion, ranked=ranked)
    return rec, pred


def evaluate_job(
    job: MapJob, device: torch.device | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load, segment and score one map (the unit of work of a worker process).

    Args:
        job: The map and its context.
        device: A CUDA device for the torch kernel; ``None`` = the CPU kernel.

    Returns:
        (record fields, predicted RLE).
    """
    if job.prefetch is not None:
        prefetch_heatmap(*job.prefetch)
    map2d = _load_map(job)
    if device is not None and device.type == "cuda":
        with torch.inference_mode():
            fast = segment_map_torch(map2d, job.height, job.width, job.prob, job.config, device)
            otsu = tuning_otsu_map(fast, job, map2d, device) if job.tuning_grid else None
            return score_fast_map(fast, job, otsu)
    return score_fast_map(segment_map_cpu(map2d, job.height, job.width, job.prob, job.config), job)


def _read_file_job(job: MapJob) -> tuple[dict[str, Any], MapJob]:
    """A ``from_file`` job's pickle, read once: its index fields and the job completed with
    the map, the image size and the probability (checked against the ground truth)."""
    if job.prefetch is not None:
        prefetch_heatmap(*job.prefetch)
    row, rec = index_pickle(job.source, with_map=True)
    if job.gt_rle is not None:
        _check_gt_size(job.gt_rle, job.image_id, job.task, rec.height, rec.width)
    done = replace(
        job,
        source=rec.map,
        height=rec.height,
        width=rec.width,
        prob=rec.prob,
        prefetch=None,
        from_file=False,
    )
    return row, done


def evaluate_file_job(
    job: MapJob, device: torch.device | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``evaluate_job`` of a ``from_file`` job; returns (index fields, record fields, RLE)."""
    row, done = _read_file_job(job)
    rec, pred = evaluate_job(done, device)
    return row, rec, pred


def build_file_jobs(
    heatmaps: PickleFolderSet,
    gt_segmentations: Mapping[str, Mapping[str, Any]],
    *,
    configs: Mapping[str, SegmentationConfig],
    tuning_grid: Sequence[float],
    extra_metrics: bool,
    top_k: int,
    spurious_segmentations: Mapping[str, Mapping[str, Any]],
    rows: Sequence[int] | None = None,
) -> list[MapJob]:
    """One ``from_file`` job per pickle of a folder whose index is pending (or per ``rows``).

    Only the file names are used here (CXR and task); each job reads its pickle once, for
    its index fields and its map.

    Raises:
        DataFormatError: unknown task, or a CXR of the ground truth without the task.
    """
    pairs = heatmaps.pairs
    image_ids = [str(v) for v in pairs["image_id"].tolist()]  # not .at per row (0.15 ms each)
    tasks = [str(v) for v in pairs["task"].tolist()]
    selected = list(range(len(pairs))) if rows is None else [int(i) for i in rows]
    nbytes = map_bytes(heatmaps.maps.map_shape)
    grid = tuple(float(t) for t in tuning_grid)
    jobs = []
    for n, i in enumerate(selected):
        image_id, task = image_ids[i], tasks[i]
        check_task(task, source="heatmaps", key=image_id)
        following = selected[n + 1] if n + 1 < len(selected) else None
        jobs.append(
            MapJob(
                image_id,
                task,
                str(heatmaps.paths[i]),
                0,
                0,
                float("nan"),
                configs.get(task, SegmentationConfig()),
                _gt_rle(gt_segmentations, image_id, task),
                grid,
                extra_metrics,
                top_k,
                spurious_segmentations.get(image_id, {}),
                (str(heatmaps.paths[following]), nbytes) if following is not None else None,
                from_file=True,
            )
        )
    return jobs


def build_jobs(
    heatmaps: HeatmapSet,
    gt_segmentations: Mapping[str, Mapping[str, Any]],
    *,
    configs: Mapping[str, SegmentationConfig],
    tuning_grid: Sequence[float],
    extra_metrics: bool,
    top_k: int,
    spurious_segmentations: Mapping[str, Mapping[str, Any]],
) -> list[MapJob]:
    """One ``MapJob`` per index row (maps of a pickle folder travel as paths).

    Raises:
        DataFormatError: unknown task, dims out of bounds or that disagree with the ground truth.
    """
    index = heatmaps.index.reset_index(drop=True)
    paths = heatmaps.maps.paths if isinstance(heatmaps.maps, PickleMapStack) else None
    nbytes = map_bytes(heatmaps.maps.map_shape) if isinstance(heatmaps.maps, PickleMapStack) else 0
    grid = tuple(float(t) for t in tuning_grid)
    jobs = []
    for i, row in enumerate(
        index[["image_id", "task", "cxr_h", "cxr_w", "prob"]].itertuples(index=False)
    ):
        image_id, task = str(row.image_id), str(row.task)
        check_task(task, source="heatmaps", key=image_id)
        h, w = int(row.cxr_h), int(row.cxr_w)
        if not (0 < h <= MAX_MASK_SIDE and 0 < w <= MAX_MASK_SIDE):
            raise DataFormatError(
                "heatmaps",
                f"cxr_dims (w, h) = ({w}, {h}) must lie in 1..{MAX_MASK_SIDE} px "
                "(the original image size)",
                where=f"{image_id}/{task}",
            )
        gt_rle = _gt_entry(gt_segmentations, image_id, task, h, w)
        source = str(paths[i]) if paths is not None else heatmaps.maps[i]
        jobs.append(
            MapJob(
                image_id,
                task,
                source,
                h,
                w,
                float(row.prob),
                configs.get(task, SegmentationConfig()),
                gt_rle,
                grid,
                extra_metrics,
                top_k,
                spurious_segmentations.get(image_id, {}),
                (str(paths[i + 1]), nbytes) if paths is not None and i + 1 < len(paths) else None,
            )
        )
    return jobs


def evaluate_heatmap_set(
    heatmaps: HeatmapSet,
    gt_segmentations: Mapping[str, Mapping[str, Any]],
    *,
    configs: Mapping[str, SegmentationConfig] | None = None,
    tuning_grid: Sequence[float] = (),
    extra_metrics: bool = False,
    top_k: int = 1000,
    spurious_segmentations: Mapping[str, Mapping[str, Any]] | None = None,
    prefer_gpu: bool = False,
    progress: bool = True,
    desc: str = "localization",
    workers: int | None = None,
    missing: str = "all",
    validate: bool = True,
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Evaluate every map of a set against the ground truth in one streaming pass.

    Args:
        heatmaps: Maps at native resolution with their index (see ``HeatmapSet``).
        gt_segmentations: CheXlocalize gt JSON ``{cxr_id: {task: rle}}``.
        configs: Per-task segmentation options (default Otsu for every task).
        tuning_grid: Fixed thresholds for which to count pixels on positive pairs; when
            given, every map also gets the plain-Otsu counts of the probability-cutoff
            tuning (``tune_otsu_area`` / ``tune_otsu_inter``, see ``score_fast_map``).
        extra_metrics: Compute relevance mass/rank, top-k and pixel AUROC (full-res sorts).
        top_k: k of the top-k intersection.
        spurious_segmentations: ``{cxr_id: {object: rle}}`` for shortcut attribution.
        prefer_gpu: Run the kernels on CUDA when present (in this process). Off by default:
            the CUDA path is not the reference's arithmetic and its parity with the exact
            CPU kernel is not measured (a warning says so when it is used).
        progress: Show a progress bar.
        desc: Progress-bar label.
        workers: CPU worker processes (``None`` = one per core; 1 = in this process).
        missing: Ground-truth (CXR, task) pairs without a map, scored as empty predictions
            for IoU (their hit is NaN, as the reference leaves them out of the hit rate):
            ``all`` of them (the reference's semantics) or only those of the CXRs and tasks
            the set has maps for (``evaluated``: a set made on one split for some tasks is
            not charged with misses on the other splits and tasks).
        validate: Check every ground-truth and spurious RLE first
            (``validate_segmentations``); ``False`` only where the caller has checked these
            same mappings already (the pipeline node, once for all its sets).

    Returns:
        The per-map table (index columns + counts, IoUs, hit, tuning counts, extras) and the
        predicted segmentation JSON ``{cxr_id: {task: rle}}``.

    Raises:
        DataFormatError: a malformed ground-truth or spurious RLE (file, CXR and task
            named), unknown task, NaN/inf map, or dims out of bounds or that disagree with the gt.
        ParameterError: ``missing`` is not ``all`` or ``evaluated``.
    """
    if missing not in MISSING_MODES:
        raise ParameterError(
            "localization.missing_maps", f"expected one of {list(MISSING_MODES)}, got {missing!r}"
        )
    if validate:
        validate_segmentations(gt_segmentations, source="gt_segmentations")
        validate_segmentations(spurious_segmentations or {}, source="spurious_segmentations")
    device = pick_device(prefer_gpu)
    options = {
        "configs": configs or {},
        "tuning_grid": tuning_grid,
        "extra_metrics": extra_metrics,
        "top_k": top_k,
        "spurious_segmentations": spurious_segmentations or {},
    }
    # a folder not indexed yet is indexed by this pass: each pickle is read once
    from_files = isinstance(heatmaps, PickleFolderSet) and heatmaps.index_pending
    if from_files:
        jobs = build_file_jobs(heatmaps, gt_segmentations, **options)  # type: ignore[arg-type]
    else:
        jobs = build_jobs(heatmaps, gt_segmentations, **options)  # type: ignore[arg-type]
    on_cuda = device.type == "cuda"
    work = (
        _CudaJob(device, from_files)
        if on_cuda
        else (evaluate_file_job if from_files else evaluate_job)
    )
    results: Any = ordered_map(
        work,
        jobs,
        n_items=len(jobs),
        workers=1 if on_cuda else workers,
        desc=desc,
        progress=progress,
    )
    if from_files:
        done = list(results)
        heatmaps.set_index([row for row, _, _ in done])  # type: ignore[union-attr]
        results = [(rec, pred) for _, rec, pred in done]
    index = heatmaps.index.reset_index(drop=True)
    records, seg_json = [], {}
    # strict: one result per job and index row, and the map's generator run to its end
    for row, job, (rec, pred) in zip(index.to_dict("records"), jobs, results, strict=True):
        seg_json.setdefault(job.image_id, {})[job.task] = pred
        records.append({**row, **rec})
    table = pd.DataFrame(records)
    if missing == "evaluated":
        ids, tasks = set(index["image_id"].astype(str)), set(index["task"].astype(str))
        gt_scope = {
            cxr: {t: r for t, r in entry.items() if t in tasks}
            for cxr, entry in gt_segmentations.items()
            if cxr in ids
        }
    else:
        gt_scope = gt_segmentations
    return _add_missing_predictions(table, gt_scope, index), seg_json


def count_thresholds_job(job: MapJob) -> dict[str, Any]:
    """Threshold-tuning counts of one positive map, without segmenting it (a worker's unit).

    Loads and upsamples the map once and counts, for every threshold of
    ``job.tuning_grid``, the pixels of the normalised map above it over the image and
    inside the ground truth (the reference re-reads and re-upsamples per threshold).

    Returns:
        ``gt_area`` and ``tune_area_<t>`` / ``tune_inter_<t>`` for each threshold.
    """
    if job.gt_rle is None:
        raise ValueError(f"{job.image_id}/{job.task}: threshold counts need a ground truth")
    if job.prefetch is not None:
        prefetch_heatmap(*job.prefetch)
    map2d = _load_map(job)
    source = BilinearMap(map2d, job.height, job.width)
    lo, hi, argmax = source.extremes()
    span = 0.0 if map2d.max() == map2d.min() else float(np.float32(np.float32(hi) - np.float32(lo)))
    fast = FastMap({}, lo, span, argmax, source)
    areas, inters = threshold_counts(fast, job.tuning_grid, job.gt_rle)
    rec: dict[str, Any] = {"gt_area": rle_area(job.gt_rle)}
    for t, a, i in zip(job.tuning_grid, areas, inters):
        rec[f"tune_area_{t:g}"], rec[f"tune_inter_{t:g}"] = a, i
    return rec


def count_thresholds_file_job(job: MapJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """``count_thresholds_job`` of a ``from_file`` job; returns (index fields, counts)."""
    row, done = _read_file_job(job)
    return row, count_thresholds_job(done)


class _CudaJob:
    """``evaluate_job`` (``evaluate_file_job`` for ``from_file`` jobs) bound to a CUDA device
    (run in this process)."""

    def __init__(self, device: torch.device, from_files: bool = False) -> None:
        self.device = device
        self.from_files = from_files

    def __call__(self, job: MapJob) -> Any:
        if self.from_files:
            return evaluate_file_job(job, self.device)
        return evaluate_job(job, self.device)


def _add_missing_predictions(
    table: pd.DataFrame, gt: Mapping[str, Mapping[str, Any]], index: pd.DataFrame
) -> pd.DataFrame:
    """Gt (cxr, task) pairs without a map, logged: scored like the reference.

    IoU: an empty prediction (the reference's ``get_ious`` scores every gt pair, with a
    zero mask where the prediction JSON lacks the CXR). Hit: NaN, left out of the hit
    rate (the reference's ``get_hitrates`` only scores the map files it finds, so a pair
    without a map is neither a hit nor a miss).
    """
    have = set(zip(index["image_id"].astype(str), index["task"].astype(str)))
    extra = []
    model = index["model"].iloc[0] if len(index) else ""
    method = index["method"].iloc[0] if len(index) else ""
    # the set's other constant columns (the model's fingerprint) go on these rows too
    constant = {
        c: index[c].iloc[0]
        for c in index.columns
        if c not in INDEX_COLUMNS and len(index) and index[c].nunique(dropna=False) == 1
    }
    for cxr_id, entry in gt.items():
        for task, rle in entry.items():
            if (cxr_id, task) in have:
                continue
            logger.info("no heatmap for %s / %s: scored as an empty prediction", cxr_id, task)
            ga = int(
                mask_utils.area(
                    {
                        "size": rle["size"],
                        "counts": rle["counts"].encode("ascii")
                        if isinstance(rle["counts"], str)
                        else rle["counts"],
                    }
                )
            )
            h, w = int(rle["size"][0]), int(rle["size"][1])
            extra.append(
                {
                    "image_id": cxr_id,
                    "task": task,
                    "prob": np.nan,
                    "gt": float(ga > 0),
                    "cxr_w": w,
                    "cxr_h": h,
                    "model": model,
                    "method": method,
                    **constant,
                    "in_gt": True,
                    "n_pixels": h * w,
                    "pred_area": 0,
                    "gt_area": ga,
                    "intersection": 0,
                    "iou_tp": np.nan,
                    "iou_full": iou_from_counts(0, ga, 0, true_pos_only=False),
                    "hit": np.nan,  # no map, no pointing game (reference: left out)
                }
            )
    return pd.concat([table, pd.DataFrame(extra)], ignore_index=True) if extra else table
