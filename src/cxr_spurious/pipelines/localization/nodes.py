"""Thin nodes of the localization pipeline; the work lives in ``cxr_spurious.localization``."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from cxr_spurious.ci_marks import draw_intervals
from cxr_spurious.errors import (
    ContractError,
    DataFormatError,
    ParameterError,
    check_integer,
    check_number,
)
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.chexlocalize import check_task
from cxr_spurious.io.png_text import set_png_text
from cxr_spurious.localization import metrics, summary, tuning
from cxr_spurious.localization.evaluate import evaluate_heatmap_set, validate_segmentations
from cxr_spurious.localization.figures import plot_overlays, sample_overlay_rows
from cxr_spurious.localization.segmentation import SegmentationConfig
from cxr_spurious.overlays import images_of
from cxr_spurious.progress import progress_bar
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.stats.bootstrap import check_max_dropped_share, check_n_boot
from cxr_spurious.stats.multiplicity import adjust_column, family_note, read_settings
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.training.provenance import MODEL_FINGERPRINT_KEY

logger = logging.getLogger(__name__)

MAX_GRID_POINTS = (
    1000  # a threshold grid longer than this is a typo (e.g. a step of 1e-9), not a study
)
GRID_TOLERANCE = 1e-9  # np.arange's rounding at a grid's ends
SKIPPED_COLUMN = "skipped_map_files"  # files of a map folder skipped under skip_unparsable_maps
#: Columns of ``localization_comparisons`` that split a multiplicity family (``family:
#: metric``): one family per metric and task, over the pairs of heatmap sets compared.
COMPARISON_FAMILY: tuple[str, ...] = ("metric", "task")


def _grid(values: list[float], key: str) -> list[float]:
    """``tuning.threshold_grid`` of ``[start, stop, step]``, refusing grids that would not end."""
    if not isinstance(values, list | tuple) or len(values) != 3:
        raise ParameterError(key, f"expected [start, stop, step], got {values!r}")
    try:
        start, stop, step = (float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            key, f"expected three numbers [start, stop, step], got {values!r}"
        ) from exc
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise ParameterError(key, f"expected finite numbers, got {values!r}")
    if step > 0 and stop > start and (stop - start) / step > MAX_GRID_POINTS:
        raise ParameterError(
            key,
            f"[{start}, {stop}, {step}] makes {(stop - start) / step:.3g} thresholds; "
            f"at most {MAX_GRID_POINTS} allowed",
        )
    try:
        grid = tuning.threshold_grid(start, stop, step)
    except ParameterError as exc:
        raise ParameterError(key, exc.problem) from exc
    # thresholds of normalised maps and probability cutoffs lie in [0, 1] (np.arange's
    # accumulated steps may overshoot by a rounding error: 0.8000000000000003)
    outside = [v for v in grid if not -GRID_TOLERANCE <= v <= 1 + GRID_TOLERANCE]
    if outside:
        raise ParameterError(
            key, f"[{start}, {stop}, {step}] gives values outside [0, 1]: {outside[:3]}"
        )
    return grid


def _unit_value(value: object, key: str) -> float:
    """A threshold or cutoff on a [0, 1] scale (normalised map, model probability).

    A percentage (50 for 0.5) would empty every mask and give an IoU of 0 everywhere.

    Raises:
        ParameterError: not a number (a bool neither), not finite, or outside [0, 1].
    """
    try:
        return check_number(value, key, low=0, high=1)
    except ParameterError as exc:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and 1 < value <= 100:
            raise ParameterError(key, f"{exc.problem} (a fraction, not a percentage)") from None
        raise


def _per_task(table: object, key: str) -> dict[str, float]:
    """``{task: value}`` of ``fixed_thresholds`` / ``prob_cutoffs``, every entry checked."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ParameterError(key, f"must be a mapping {{task: value in [0, 1]}}, got {table!r}")
    out = {}
    for task, value in table.items():
        check_task(task, source=f"parameter {key}")
        out[str(task)] = _unit_value(value, f"{key}.{task}")
    return out


def _task_key(task: object, key: str) -> str:
    """A task named as a key of the map parameter ``key``: a CheXlocalize task.

    Raises:
        ParameterError: not a CheXlocalize task (the valid names listed), naming ``key``.
    """
    try:
        check_task(task, source=f"parameter {key}")  # type: ignore[arg-type]
    except DataFormatError as exc:
        raise ParameterError(key, exc.problem) from exc
    return str(task)


def _bootstrap_settings(
    n_boot: object, seed: object, max_dropped_share: object | None = None
) -> tuple[int, int, float | None]:
    """``localization.n_boot`` / ``seed`` / ``max_dropped_share``, checked and converted.

    Raises:
        ParameterError: naming the ``localization.*`` key of a bad value.
    """
    share = (
        None
        if max_dropped_share is None
        else check_max_dropped_share(max_dropped_share, "localization.max_dropped_share")
    )
    return (
        check_n_boot(n_boot, "localization.n_boot"),
        check_seed(seed, "localization.seed"),
        share,
    )


def _configs(
    fixed_thresholds: dict[str, float] | None,
    prob_cutoffs: dict[str, float] | None,
    smoothing_k: object,
) -> dict[str, SegmentationConfig]:
    fixed = _per_task(fixed_thresholds, "localization.fixed_thresholds")
    cut = _per_task(prob_cutoffs, "localization.prob_cutoffs")
    smoothing_k = check_integer(smoothing_k, "localization.smoothing_k", low=0)
    tasks = set(fixed) | set(cut)
    return {
        t: SegmentationConfig(
            threshold=fixed.get(t), smoothing_k=smoothing_k, prob_cutoff=float(cut.get(t, 0.0))
        )
        for t in tasks
    } | {"*": SegmentationConfig(smoothing_k=smoothing_k)}


def evaluate_heatmaps(
    heatmap_collection: dict[str, HeatmapSet],
    gt_segmentations: dict[str, Any],
    spurious_segmentations: dict[str, Any],
    fixed_thresholds: dict[str, float] | None,
    prob_cutoffs: dict[str, float] | None,
    smoothing_k: int,
    tuning_grid: list[float],
    extra_metrics: bool,
    top_k: int,
    prefer_gpu: bool,
    missing_maps: str = "all",
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Segment and score every heatmap set (one streaming pass per set).

    ``missing_maps`` (``localization.missing_maps``): ``all`` scores every ground-truth
    (CXR, task) pair without a map as an empty prediction for IoU, with a NaN hit (the
    reference's semantics: its hit rate only scores the maps it finds);
    ``evaluated`` does so only for the CXRs and tasks a set has maps for (a study's test
    split and its model's tasks).

    ``prefer_gpu`` (``localization.prefer_gpu``, false by default): the CUDA kernels instead of
    the exact CPU kernel; not the reference's arithmetic, logged with a warning when used.

    Returns:
        The per-map table of all sets (``set`` column; ``skipped_map_files``: the files of
        the set's map folder skipped because their names do not parse, 0 unless
        ``skip_unparsable_maps`` is set) and ``{set: segmentation JSON}``.
    """
    # every parameter checked before any segmentation or map is read
    grid = _grid(tuning_grid, "localization.tuning_grid") if tuning_grid else []
    configs = _configs(fixed_thresholds, prob_cutoffs, smoothing_k)
    top_k = metrics.check_top_k(top_k)
    # every RLE checked once here, not once per set
    validate_segmentations(gt_segmentations, source="gt_segmentations")
    validate_segmentations(spurious_segmentations or {}, source="spurious_segmentations")
    default = configs.pop("*")
    tables, segs = [], {}
    for name in progress_bar(sorted(heatmap_collection), desc="heatmap sets"):
        hs = heatmap_collection[name]
        # the tasks from the pairs: a pickle folder's index is read by the evaluation itself
        per_task = {t: configs.get(t, default) for t in hs.pairs["task"].astype(str).unique()}
        table, seg = evaluate_heatmap_set(
            hs,
            gt_segmentations,
            configs=per_task,
            tuning_grid=grid,
            extra_metrics=extra_metrics,
            top_k=top_k,
            spurious_segmentations=spurious_segmentations,
            prefer_gpu=prefer_gpu,
            desc=name,
            missing=missing_maps,
            validate=False,
        )
        table.insert(0, "set", name)
        skipped = list(hs.index.attrs.get("skipped_files", []))
        table[SKIPPED_COLUMN] = len(skipped)
        if skipped:
            logger.warning(
                "%s: %d file(s) of the map folder skipped (names do not parse); "
                "their maps count as missing",
                name,
                len(skipped),
            )
        tables.append(table)
        segs[name] = seg
        logger.info("%s: %d maps evaluated", name, len(table))
    return pd.concat(tables, ignore_index=True), segs


def summarise_localization(
    per_map: pd.DataFrame,
    n_boot: int,
    seed: int,
    manifest: Any = None,
    max_dropped_share: float = 0.05,
) -> pd.DataFrame:
    """``localization_summary``: set x task (+ overall) with bootstrap CIs.

    ``miou_full`` is scored on the rows of the reference's full mode (CXRs with a map
    outside the ground truth included, ``summary.scored_rows``: the mean of the full-mode
    ``iou_results_per_cxr``), the other metrics on the CXRs in the ground truth.
    Carries ``skipped_map_files`` (per set) and ``model_fingerprint`` (the set's model
    artifact, which the report compares with the model's ``test_metrics``) from the per-map
    table when present.
    """
    n_boot, seed, share = _bootstrap_settings(n_boot, seed, max_dropped_share)
    table = summary.summary_table(
        per_map,
        n_boot=n_boot,
        seed=seed,
        by=("set", "model", "method"),
        manifest=manifest,
        max_dropped_share=float(share),  # type: ignore[arg-type]
    )
    if SKIPPED_COLUMN in per_map.columns and len(table):
        table[SKIPPED_COLUMN] = (
            table["set"].map(per_map.groupby("set")[SKIPPED_COLUMN].max()).fillna(0).astype(int)
        )
    if MODEL_FINGERPRINT_KEY in per_map.columns and len(table):  # the report checks it
        fingerprints = per_map.dropna(subset=[MODEL_FINGERPRINT_KEY]).groupby("set")
        table[MODEL_FINGERPRINT_KEY] = table["set"].map(fingerprints[MODEL_FINGERPRINT_KEY].first())
    return table


def select_per_cxr(per_map: pd.DataFrame) -> pd.DataFrame:
    """``localization_per_cxr``: per (set, CXR, task) outcomes, without tuning counts."""
    return per_map[[c for c in per_map.columns if not c.startswith("tune_")]].reset_index(drop=True)


def tune_segmentation(
    per_map: pd.DataFrame,
    tuning_grid: list[float],
    prob_cutoffs_grid: list[float],
    split: str | None = None,
    prob_cutoffs_grid_by_task: Mapping[str, list[float]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Threshold and probability-cutoff tuning per set (reference CSV layouts + ``set``, ``split``).

    The probability cutoffs are tuned like the reference's ``tune_probability_threshold``:
    on every map of the set (CXRs outside the ground truth against an empty mask, pairs
    without a map left out), with plain Otsu masks whatever ``prob_cutoffs`` and
    ``fixed_thresholds`` the evaluation used (``tuning.tune_probability_cutoffs``).

    The tuning runs on the maps being evaluated: each table carries a ``split`` column
    naming the split they were made on (``saliency.split``; the ``chexlocalize``
    environment's ``split`` runtime param). Thresholds tuned on the evaluated split and fed
    back as ``localization.fixed_thresholds`` / ``prob_cutoffs`` would be scored on the
    data they were tuned on; tune on another split's maps (the reference tunes on val).

    Args:
        per_map: ``localization_per_map`` (with the tuning counts).
        tuning_grid: ``localization.tuning_grid``.
        prob_cutoffs_grid: ``localization.prob_cutoffs_grid``.
        split: The split the maps came from (``None``: unknown, an empty column).
        prob_cutoffs_grid_by_task: ``localization.prob_cutoffs_grid_by_task``: ``{task:
            [start, stop, step]}`` in place of ``prob_cutoffs_grid`` for that task (the
            ``chexlocalize`` environment: Lung Lesion from 0.1, as the reference).

    Returns:
        ``localization_tuning_results``, ``localization_tuning_grid`` and
        ``localization_probability_tuning_results``, each with ``set`` and ``split``.
    """
    grid = _grid(tuning_grid, "localization.tuning_grid")
    cut = _grid(prob_cutoffs_grid, "localization.prob_cutoffs_grid")
    if not isinstance(prob_cutoffs_grid_by_task or {}, Mapping):
        raise ParameterError(
            "localization.prob_cutoffs_grid_by_task",
            f"expected {{task: [start, stop, step]}}, got {prob_cutoffs_grid_by_task!r}",
        )
    # a misspelt task would otherwise be ignored (the default grid, with its cutoff 0)
    cut_by_task = {
        _task_key(task, "localization.prob_cutoffs_grid_by_task"): _grid(
            values, f"localization.prob_cutoffs_grid_by_task.{task}"
        )
        for task, values in (prob_cutoffs_grid_by_task or {}).items()
    }
    best, full, prob = [], [], []
    for name, group in per_map.groupby("set", sort=True):
        b, f = tuning.tune_thresholds(group, grid, label=str(name), split=split)
        p = tuning.tune_probability_cutoffs(group, cut, cut_by_task)
        for frame, out in ((b, best), (f, full), (p, prob)):
            out.append(frame.assign(set=name, split=split))
    if split is not None:
        logger.info(
            "segmentation thresholds tuned on the %s maps (the evaluated split): "
            "not for localization.fixed_thresholds of a run scored on %s",
            split,
            split,
        )
    return (
        pd.concat(best, ignore_index=True),
        pd.concat(full, ignore_index=True),
        pd.concat(prob, ignore_index=True),
    )


def _benchmark_ground_truth(
    gt_segmentations: Mapping[str, Any],
    hb_segmentations: Mapping[str, Any],
    hb_salient_points: Mapping[str, Any],
) -> dict[str, Any]:
    """The ground truth of the CXRs the human benchmark covers.

    The benchmark exists for one split (CheXlocalize's test set; the phantom's
    ``human_benchmark.splits``) while ``gt_segmentations`` may hold every split: scored
    against the others, each of their pathologies would count as a human miss and an empty
    human mask.

    Raises:
        ContractError: The benchmark and the ground truth share no CXR (e.g. the
            benchmark of one split against the ground truth of another).
    """
    covered = {str(k) for k in hb_segmentations} | {str(k) for k in hb_salient_points}
    kept = {k: v for k, v in gt_segmentations.items() if str(k) in covered}
    if not kept:
        raise ContractError(
            "human benchmark (hb_segmentations / hb_salient_points) and gt_segmentations "
            f"share no CXR: the benchmark has {len(covered)} (e.g. {sorted(covered)[:3]}), "
            f"the ground truth {len(gt_segmentations)} "
            f"(e.g. {sorted(map(str, gt_segmentations))[:3]}); score the benchmark against "
            "the ground truth of its own split (CheXlocalize: hb_*_test.json with "
            "gt_segmentations_test.json, --params split=test in the chexlocalize environment)"
        )
    outside = len(covered - {str(k) for k in kept})
    logger.info(
        "human benchmark: %d CXR(s) of gt_segmentations' %d are covered and scored; "
        "%d left out (no benchmark there)%s",
        len(kept),
        len(gt_segmentations),
        len(gt_segmentations) - len(kept),
        f"; {outside} benchmark CXR(s) outside the ground truth" if outside else "",
    )
    return kept


def evaluate_human_benchmark(
    gt_segmentations: dict[str, Any],
    hb_segmentations: dict[str, Any],
    hb_salient_points: dict[str, Any],
) -> pd.DataFrame:
    """Per (CXR, task) human-benchmark IoU counts and hit/miss (empty when no benchmark).

    Scored on the CXRs the benchmark covers (the keys of ``hb_segmentations`` and
    ``hb_salient_points``), not on every CXR of ``gt_segmentations``
    (``_benchmark_ground_truth``); within them a CXR or task without a human mask is an
    empty mask and one without a salient point a miss, as in the reference.

    Raises:
        ContractError: The benchmark and the ground truth share no CXR.
    """
    if not hb_segmentations and not hb_salient_points:
        return pd.DataFrame(columns=["image_id", "task", "in_gt", "iou_tp", "iou_full", "hit"])
    gt = _benchmark_ground_truth(gt_segmentations, hb_segmentations or {}, hb_salient_points or {})
    table = (
        metrics.segmentation_table(hb_segmentations, gt, source="hb_segmentations")
        if hb_segmentations
        else None
    )
    hits = metrics.human_hit_table(gt, hb_salient_points) if hb_salient_points else None
    if table is None:
        return hits.assign(in_gt=True)
    return table.merge(hits, on=["image_id", "task"], how="left") if hits is not None else table


def _layout(
    per_map: pd.DataFrame, prefix: str, n_boot: int, seed: int, true_pos_only: bool
) -> dict[str, pd.DataFrame]:
    out: dict[str, pd.DataFrame] = {}
    for metric, col, outside in (
        ("iou", "iou_tp" if true_pos_only else "iou_full", not true_pos_only),
        ("hitmiss", "hit", False),
    ):
        if col not in per_map.columns:
            continue
        wide = summary.per_cxr_table(per_map, col, include_outside_gt=outside)
        bs = summary.reference_bootstrap(wide, n_boot=n_boot, seed=seed)
        out[f"{metric}_{prefix}results_per_cxr"] = wide
        out[f"{metric}_{prefix}bootstrap_results_per_cxr"] = bs
        out[f"{metric}_{prefix}summary_results"] = summary.reference_summary(bs)
    return out


def _shared_cxrs(pred_wide: pd.DataFrame, hb_wide: pd.DataFrame) -> set[str]:
    """The CXRs (``img_id``) of two ``per_cxr_table`` outputs that both hold."""
    return set(pred_wide["img_id"].astype(str)) & set(hb_wide["img_id"].astype(str))


def _shared_tasks(pred_wide: pd.DataFrame, hb_wide: pd.DataFrame) -> set[str]:
    """The task columns of two ``per_cxr_table`` outputs that both hold."""
    return (set(pred_wide.columns) & set(hb_wide.columns)) - {"img_id"}


def _warn_no_shared_task(
    name: str, skipped: list[str], group: pd.DataFrame, hb: pd.DataFrame
) -> None:
    """Log that set ``name`` shares CXRs but no task with the human benchmark."""
    logger.warning(
        "%s: its maps share CXRs with the human benchmark but no task (the set's tasks: %s; "
        "the benchmark's: %s): %s skipped for this set",
        name,
        sorted(group["task"].astype(str).unique()),
        sorted(hb["task"].astype(str).unique()),
        " and ".join(f"{m}_pct_decrease" for m in skipped),
    )


def _warn_unpaired(
    name: str, split: str | None, skipped: list[str], group: pd.DataFrame, hb: pd.DataFrame
) -> None:
    """Log that set ``name`` shares no CXR with the human benchmark (no ``*_pct_decrease``)."""
    ours = sorted(group["image_id"].astype(str).unique())
    theirs = sorted(hb["image_id"].astype(str).unique())
    made_on = (
        f"made on the {split} split (saliency.split: {split})"
        if split is not None
        else "made on an unknown split (saliency.split not given)"
    )
    logger.warning(
        "%s: its maps, %s, share no CXR with the human benchmark (the set's %d CXR(s), e.g. "
        "%s; the benchmark's %d, e.g. %s): %s skipped for this set. The benchmark covers one "
        "split (CheXlocalize's test set); compare with it a run on that split",
        name,
        made_on,
        len(ours),
        ours[:3],
        len(theirs),
        theirs[:3],
        " and ".join(f"{m}_pct_decrease" for m in skipped),
    )


def build_reference_reports(
    per_map: pd.DataFrame,
    hb_table: pd.DataFrame,
    n_boot: int,
    seed: int,
    true_pos_only: bool,
    split: str | None = None,
) -> dict[str, pd.DataFrame]:
    """CheXlocalize-layout CSVs ({partition: table}); one subfolder per set when several.

    Includes per-cxr / bootstrap / summary tables for IoU and hit/miss, the human benchmark
    ones and percentage decreases when a benchmark exists, precision/recall/specificity,
    and ``n_segs``. The percentage decreases are bootstrapped on the CXRs and tasks the set
    and the benchmark share (``summary.paired_percentage_decrease``; all of the benchmark's
    when the set has every gt CXR, as in the reference), not by row position. A set that
    shares no CXR with the benchmark (maps of another split than the benchmark's, e.g. a
    tuning run with ``saliency.split: val`` against CheXlocalize's test-only benchmark) or
    no task gets no ``*_pct_decrease``, with a warning naming the set and the split (or the
    two task lists).

    Args:
        per_map: ``localization_per_map``.
        hb_table: ``localization_human_benchmark`` (empty: no benchmark).
        n_boot: Bootstrap replicates of the reference-layout files.
        seed: Their seed.
        true_pos_only: Reference IoU mode (only the CXRs with the pathology in the gt).
        split: The split the maps were made on (``saliency.split``), named in the warning.

    Returns:
        ``{partition: table}`` of the reference-layout CSVs.
    """
    n_boot, seed, _ = _bootstrap_settings(n_boot, seed)
    reports: dict[str, pd.DataFrame] = {}
    sets = sorted(per_map["set"].unique())
    hb = _layout(hb_table, "humanbenchmark_", n_boot, seed, true_pos_only) if len(hb_table) else {}
    for name in sets:
        group = per_map[per_map["set"] == name]
        prefix = "" if len(sets) == 1 else f"{name}/"
        tables = _layout(group, "", n_boot, seed, true_pos_only)
        tables["pred_precision_recall_specificity"] = metrics.precision_recall_specificity(group)
        tables["n_segs"] = (
            group.groupby("task")["pred_area"]
            .apply(lambda s: int((s > 0).sum()))
            .sort_index()
            .rename("0")
            .to_frame()
        )
        unpaired: list[str] = []
        no_task: list[str] = []
        for metric in ("iou", "hitmiss"):
            hb_wide = hb.get(f"{metric}_humanbenchmark_results_per_cxr")
            pred_wide = tables.get(f"{metric}_results_per_cxr")
            if hb_wide is None or pred_wide is None:
                continue
            if not _shared_cxrs(pred_wide, hb_wide):
                unpaired.append(metric)  # nothing to pair: another split than the benchmark's
                continue
            if not _shared_tasks(pred_wide, hb_wide):
                no_task.append(metric)  # e.g. a set of tasks the benchmark did not annotate
                continue
            # paired on the shared CXRs and tasks: missing_maps: evaluated leaves the
            # model table with fewer CXRs than the human benchmark's
            tables[f"{metric}_pct_decrease"] = summary.paired_percentage_decrease(
                pred_wide, hb_wide, n_boot=n_boot, seed=seed
            )
        if unpaired:
            _warn_unpaired(name, split, unpaired, group, hb_table)
        if no_task:
            _warn_no_shared_task(name, no_task, group, hb_table)
        reports.update({f"{prefix}{k}": v for k, v in tables.items()})
    if len(hb_table) and "pred_area" in hb_table.columns:
        reports["hb_precision_recall_specificity"] = metrics.precision_recall_specificity(hb_table)
    for k, v in hb.items():
        reports[k] = v
    return {
        k: (v.reset_index() if k.endswith("pct_decrease") or k.endswith("n_segs") else v)
        for k, v in reports.items()
    }


def summarise_subgroups(
    per_map: pd.DataFrame,
    manifest: pd.DataFrame,
    attributes: list[str],
    n_boot: int,
    seed: int,
    max_dropped_share: float = 0.05,
) -> pd.DataFrame:
    """Every metric by manifest attribute level, with patient-bootstrap CIs.

    Raises:
        ParameterError: a bad ``localization.n_boot`` / ``seed`` / ``max_dropped_share``, or
            ``localization.subgroup_attributes`` not a list of manifest columns.
    """
    n_boot, seed, share = _bootstrap_settings(n_boot, seed, max_dropped_share)
    return summary.subgroup_table(
        per_map,
        manifest,
        attributes,
        n_boot=n_boot,
        seed=seed,
        max_dropped_share=float(share),  # type: ignore[arg-type]
        key="localization.subgroup_attributes",
    )


def compare_sets(
    per_map: pd.DataFrame,
    pairs: list[list[str]] | None,
    n_boot: int,
    seed: int,
    manifest: Any = None,
    max_dropped_share: float = 0.05,
    multiplicity: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Paired differences between heatmap sets (all pairs of sets when ``pairs`` is null).

    ``p_adj`` (after ``p_value``) is the p-value adjusted for the number of pairs compared:
    ``localization.multiplicity`` (``method`` holm | bonferroni | fdr_bh | none, ``family``
    metric: each metric within each task over the pairs | table: every row), Holm per
    metric and task when it is not set; ``p_adj_note`` says which.
    """
    method, family = read_settings(multiplicity, "localization.multiplicity")
    n_boot, seed, share = _bootstrap_settings(n_boot, seed, max_dropped_share)
    names = sorted(per_map["set"].unique())
    chosen = (
        summary.check_pairs(pairs, names, "localization.compare_pairs")
        if pairs
        else [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    )
    table = summary.paired_comparisons(
        per_map,
        chosen,
        n_boot=n_boot,
        seed=seed,
        manifest=manifest,
        max_dropped_share=float(share),  # type: ignore[arg-type]
    )
    if table.empty:
        return table
    table = adjust_column(
        table,
        "p_value",
        method=method,
        family=family,
        groups=COMPARISON_FAMILY,
        source="localization_comparisons",
    )
    return table.assign(p_adj_note=family_note(method, family, COMPARISON_FAMILY))


def plot_metric_bars(localization_summary: pd.DataFrame) -> plt.Figure:
    """Per-task bars of mIoU and hit rate with 95% CIs, one colour per set."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    sets = sorted(localization_summary["set"].unique()) if len(localization_summary) else []
    for ax, metric in zip(axes, ("miou_tp", "hit_rate")):
        tasks = sorted(localization_summary["task"].unique()) if sets else []
        width = 0.8 / max(len(sets), 1)
        for k, name in enumerate(sets):
            sub = (
                localization_summary[localization_summary["set"] == name]
                .set_index("task")
                .reindex(tasks)
            )
            x = [i + k * width for i in range(len(tasks))]
            ax.bar(x, sub[metric].fillna(0), width=width, label=name)
            draw_intervals(
                ax, sub[metric], sub[f"{metric}_lo"], sub[f"{metric}_hi"], x,
                vertical=True, color="black", marker=None,
            )  # fmt: skip
        ax.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(tasks))],
            tasks,
            rotation=60,
            ha="right",
            fontsize=8,
        )
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1)
    if sets:
        axes[0].legend(fontsize=8)
    return fig


def plot_localization_overlays(
    heatmap_collection: dict[str, HeatmapSet],
    gt_segmentations: dict[str, Any],
    image_cache: ImageCache | None,
    n: int,
    seed: int,
    spurious_segmentations: dict[str, Any] | None = None,
) -> dict[str, plt.Figure]:
    """One overlay figure per heatmap set over the radiographs of the image cache.

    Each panel: map, Otsu mask, ground truth, chest tube, hit/miss point. Images the cache
    does not hold (every image when there is no cache: external CheXlocalize maps) are drawn
    on a black field, with a warning.
    """
    figures = {}
    for name in sorted(heatmap_collection):
        hset = heatmap_collection[name]
        rows = sample_overlay_rows(hset, gt_segmentations, n, seed) if len(hset) else []
        ids = hset.pairs["image_id"].iloc[rows].astype(str).unique().tolist()
        cached = [i for i in ids if image_cache is not None and i in image_cache.image_ids]
        if len(cached) < len(ids):
            logger.warning(
                "%s: %d of %d overlay images are not in the image cache; "
                "drawn without the radiograph",
                name,
                len(ids) - len(cached),
                len(ids),
            )
        images = images_of(image_cache, cached) if image_cache is not None else {}
        figure = plot_overlays(
            hset,
            gt_segmentations,
            images,
            n=n,
            seed=seed,
            spurious_segmentations=spurious_segmentations,
            title=name,
        )
        figures[name] = set_png_text(figure, overlay_provenance(hset))
    return figures


def overlay_provenance(hset: HeatmapSet) -> dict[str, str]:
    """What an overlay PNG records of its maps (``io.png_text``): the ``model`` and its
    ``model_fingerprint`` when the set's index names exactly one of each (the saliency
    pipeline's sets do; an outside CheXlocalize folder has neither), so the study report
    can tell an overlay of an earlier training from the model on disk now."""
    out = {}
    for key in ("model", MODEL_FINGERPRINT_KEY):
        if key in hset.index.columns:
            values = hset.index[key].dropna().astype(str).unique()
            if len(values) == 1 and values[0]:
                out[key] = str(values[0])
    return out
