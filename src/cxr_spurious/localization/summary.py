"""Tables from the per-map results: reference CheXlocalize layouts and the project summary.

Bootstrap conventions: the reference-layout tables (``reference_bootstrap``,
``reference_summary``, ``percentage_decrease``) resample CXRs with the reference's legacy
draws, so they reproduce its files; the project tables (``summary_table``,
``subgroup_table``, ``paired_comparisons``) resample patients (``patient_clusters``) with
``cxr_spurious.stats.bootstrap``.

Rows scored: ``miou_full`` (``iou_full``) is the mean over the rows of CheXlocalize's full
mode (``eval.py --true_pos_only False``): the CXRs in the ground truth and every CXR with a
map outside it, scored against an empty mask (IoU 0 for a non-empty prediction, NaN and
left out of the mean for an empty one), the rows of the reference-layout full-mode
``iou_results_per_cxr`` (``per_cxr_table(include_outside_gt=True)``); ``miou_tp``,
``hit_rate`` and the other metrics are over the CXRs in the ground truth
(``scored_rows``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.sources.contract import patient_ids
from cxr_spurious.stats.bootstrap import (
    MAX_DROPPED_SHARE,
    MIN_CI_CLUSTERS,
    few_clusters_note,
    legacy_bootstrap_indices,
    nanmean_cis,
    paired_bootstrap,
)
from cxr_spurious.tasks import CHEXLOCALIZE_TASKS

logger = logging.getLogger(__name__)

#: CheXpert / CheXlocalize image ids start with the patient: ``patient64541_study1_view1_frontal``.
_CHEXPERT_ID = re.compile(r"^(patient\d+)_study\d+")

METRICS: dict[str, str] = {"miou_tp": "iou_tp", "miou_full": "iou_full", "hit_rate": "hit"}
#: The metric scored on the reference full mode's rows (``scored_rows``), every CXR with a
#: map included; the others are scored on the CXRs in the ground truth.
FULL_MODE_METRICS: frozenset[str] = frozenset({"miou_full"})
EXTRA_METRICS: tuple[str, ...] = (
    "relevance_mass",
    "relevance_rank",
    "top_k_intersection",
    "pixel_auroc",
)


def per_cxr_table(
    per_map: pd.DataFrame, column: str, *, include_outside_gt: bool = False
) -> pd.DataFrame:
    """Reference ``*_results_per_cxr.csv``.

    One row per CXR, sorted task columns, then ``img_id``.
    """
    rows = per_map if include_outside_gt else per_map[per_map["in_gt"].astype(bool)]
    wide = rows.pivot_table(
        index="image_id", columns="task", values=column, aggfunc="first", dropna=False
    )
    tasks = sorted(set(CHEXLOCALIZE_TASKS) & set(wide.columns)) or sorted(wide.columns)
    wide = wide.reindex(columns=tasks).sort_index()
    out = wide.reset_index(drop=True)
    out["img_id"] = wide.index.to_list()
    return out


def scored_rows(per_map: pd.DataFrame, metric: str) -> pd.Series:
    """The rows of ``per_map`` that ``metric`` (a ``METRICS`` / extra-metric name) is
    averaged over, as a boolean mask.

    ``miou_full`` (``FULL_MODE_METRICS``): every row, as CheXlocalize's full mode (its
    ``get_ious`` with ``true_pos_only=False`` appends each predicted CXR that is not in the
    ground truth, scored against an empty mask), so a false-positive mask outside the
    ground truth counts as IoU 0; an empty one there is NaN (empty union) and counts in no
    mean. These are the rows of the full-mode ``iou_results_per_cxr`` of the same table
    (``per_cxr_table(include_outside_gt=True)``). Every other metric: the CXRs in the
    ground truth (``in_gt``), as the true-positive IoU and the hit rate of the reference.
    """
    if metric in FULL_MODE_METRICS:
        return pd.Series(True, index=per_map.index)
    return per_map["in_gt"].astype(bool)


def _nanmean_replicates(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(n_boot, T) NaN-skipping means of ``values`` (n, T) over replicate rows ``idx``."""
    finite = np.isfinite(values)
    sums = np.where(finite, values, 0.0)[idx].sum(axis=1)
    counts = finite[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def reference_bootstrap(per_cxr: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Reference ``*_bootstrap_results_per_cxr.csv``.

    Replicate means per task, in the reference's task order.
    """
    tasks = [t for t in CHEXLOCALIZE_TASKS if t in per_cxr.columns]
    idx = legacy_bootstrap_indices(len(per_cxr), n_boot, seed)
    reps = _nanmean_replicates(per_cxr[tasks].to_numpy(dtype=float), idx)
    return pd.DataFrame(reps, columns=tasks)


def _order_statistic(share: float, n: int) -> int:
    """The reference's position ``int(share * n) - 1`` of a sorted sample, within ``[0, n - 1]``."""
    return min(max(int(share * n) - 1, 0), max(n - 1, 0))


def reference_ci(
    replicates: pd.Series, confidence_level: float = 0.05
) -> tuple[float, float, float]:
    """Reference CI: order statistics of the sorted replicates (NaN last), rounded to 3.

    The reference takes the replicates at positions ``int(alpha / 2 * n) - 1`` and
    ``int((1 - alpha / 2) * n) - 1``; below 40 replicates the first is -1, which Python reads
    as the last (largest) replicate. Both positions are clamped to ``[0, n - 1]``: the
    smallest replicate then, as ``np.quantile(..., method="lower")``; from 40 replicates on,
    the reference's numbers.
    """
    ordered = replicates.sort_values().reset_index(drop=True)
    n = len(ordered)
    lower = ordered.iloc[_order_statistic(confidence_level / 2, n)]
    upper = ordered.iloc[_order_statistic(1 - confidence_level / 2, n)]
    return round(float(lower), 3), round(float(replicates.mean()), 3), round(float(upper), 3)


def reference_summary(bootstrap_table: pd.DataFrame) -> pd.DataFrame:
    """Reference ``*_summary_results.csv``: name, lower, mean, upper (sorted by name)."""
    records = []
    for task in bootstrap_table.columns:
        lo, mean, hi = reference_ci(bootstrap_table[task])
        records.append({"name": task, "lower": lo, "mean": mean, "upper": hi})
    return pd.DataFrame(records).sort_values("name").reset_index(drop=True)


def percentage_decrease(pred_bs: pd.DataFrame, hb_bs: pd.DataFrame) -> pd.DataFrame:
    """Reference ``*_pct_decrease.csv`` from paired bootstrap tables, with an ``Average`` row.

    The reference writes the Average row's CI under misspelt column names; here it goes in
    ``pct_diff_lower`` / ``pct_diff_upper`` like the task rows. The two tables are paired
    by row (replicate) position, so they must come from the same resamples of the same
    CXRs (``paired_percentage_decrease`` builds them so).

    Raises:
        ContractError: the tables hold different numbers of replicates.
    """
    if len(pred_bs) != len(hb_bs):
        raise ContractError(
            f"percentage decrease: {len(pred_bs)} model and {len(hb_bs)} human-benchmark "
            "bootstrap replicates; they must be paired replicate by replicate"
        )
    cols = [c for c in hb_bs.columns if c in pred_bs.columns]
    pred_bs, hb_bs = pred_bs[cols], hb_bs[cols]
    pct_bs = (hb_bs - pred_bs) / hb_bs
    out = pd.DataFrame({"hb": hb_bs.mean(), "pred": pred_bs.mean()})
    out["pct_diff"] = ((out["hb"] - out["pred"]) / out["hb"] * 100).round(3)
    cis = [reference_ci(pct_bs[c]) for c in cols]
    out["pct_diff_lower"] = [round(lo * 100, 3) for lo, _, _ in cis]
    out["pct_diff_upper"] = [round(hi * 100, 3) for _, _, hi in cis]
    out = out.sort_values("pct_diff", ascending=False)
    avg_pred, avg_hb = round(out["pred"].mean(), 3), round(out["hb"].mean(), 3)
    avg_bs = 100 * (hb_bs.mean(axis=1) - pred_bs.mean(axis=1)) / hb_bs.mean(axis=1)
    lo, _, hi = reference_ci(avg_bs)
    out.loc["Average"] = {
        "hb": avg_hb,
        "pred": avg_pred,
        "pct_diff": round((avg_hb - avg_pred) / avg_hb * 100, 3),
        "pct_diff_lower": lo,
        "pct_diff_upper": hi,
    }
    return out


def paired_per_cxr(
    pred_per_cxr: pd.DataFrame, hb_per_cxr: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two ``per_cxr_table`` outputs restricted to their shared CXRs and task columns.

    The reference's ``pct_diff`` pairs the two bootstrap files row by row, i.e. replicate
    by replicate, which is a paired bootstrap only when both were drawn over the same CXRs
    in the same order (same seed, same row count: same resamples). That holds for its own
    runs (both tables list every gt CXR); here the model table can hold fewer CXRs
    (``missing_maps: evaluated``) or fewer tasks, so both are cut to the CXRs (``img_id``)
    and tasks they share, in the same (sorted) order. When the rows and columns are already
    the same, the tables are returned unchanged in content (the reference's numbers).

    Raises:
        ContractError: a table lacks ``img_id``, or the two share no CXR or no task.
    """
    for name, table in (("model", pred_per_cxr), ("human benchmark", hb_per_cxr)):
        if "img_id" not in table.columns:
            raise ContractError(f"{name} per-CXR table has no 'img_id' column")
    tasks = [c for c in pred_per_cxr.columns if c != "img_id" and c in hb_per_cxr.columns]
    ids = sorted(set(pred_per_cxr["img_id"].astype(str)) & set(hb_per_cxr["img_id"].astype(str)))
    if not ids or not tasks:
        raise ContractError(
            "percentage decrease: the model and human-benchmark per-CXR tables share "
            f"{len(ids)} CXR(s) and {len(tasks)} task(s); they cannot be paired"
        )

    def cut(table: pd.DataFrame) -> pd.DataFrame:
        wide = table.assign(img_id=table["img_id"].astype(str)).set_index("img_id")
        out = wide.loc[ids, tasks].reset_index(drop=True)
        out["img_id"] = ids
        return out

    return cut(pred_per_cxr), cut(hb_per_cxr)


def paired_percentage_decrease(
    pred_per_cxr: pd.DataFrame, hb_per_cxr: pd.DataFrame, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Reference ``*_pct_decrease.csv`` from the two per-CXR tables, on their shared CXRs.

    Both tables are restricted to their shared CXRs and tasks (``paired_per_cxr``), then
    bootstrapped with the same seed (``reference_bootstrap``: the same resamples of the same
    rows), then compared replicate by replicate (``percentage_decrease``).
    """
    pred, hb = paired_per_cxr(pred_per_cxr, hb_per_cxr)
    if len(pred) < len(pred_per_cxr) or len(hb) < len(hb_per_cxr):
        logger.info(
            "percentage decrease on the %d CXR(s) shared by the model (%d) and the human "
            "benchmark (%d)",
            len(pred),
            len(pred_per_cxr),
            len(hb_per_cxr),
            extra={"console": False},  # expected (missing_maps: evaluated): the log file only
        )
    return percentage_decrease(
        reference_bootstrap(pred, n_boot=n_boot, seed=seed),
        reference_bootstrap(hb, n_boot=n_boot, seed=seed),
    )


def _metric_columns(per_map: pd.DataFrame) -> dict[str, str]:
    cols = dict(METRICS)
    cols.update({m: m for m in EXTRA_METRICS if m in per_map.columns})
    cols.update({c: c for c in per_map.columns if c.startswith("shortcut_")})
    return cols


def patient_clusters(
    image_ids: pd.Series | Sequence[str], manifest: object = None
) -> tuple[np.ndarray, str]:
    """The bootstrap cluster of each CXR: its patient, or the CXR itself when unknown.

    Args:
        image_ids: CXR ids of the rows.
        manifest: The manifest (``image_id``, ``patient_id``); anything else (e.g. ``{}`` in
            the ``chexlocalize`` environment) or a manifest without ``patient_id``: the
            patient is read from CheXpert-style ids (``patient<digits>_study<k>_...``).

    Returns:
        ``(labels, unit)``: one label per row and ``"patient"`` or ``"cxr"`` (ids that are
        not CheXpert-style and no manifest: each CXR is its own cluster, logged).

    Raises:
        ContractError: the manifest has ``patient_id`` but lacks some of the CXRs.
    """
    ids = pd.Series(image_ids, dtype=object).astype(str).reset_index(drop=True)
    if isinstance(manifest, pd.DataFrame) and {"image_id", "patient_id"} <= set(manifest.columns):
        return patient_ids(ids, manifest, table="the localization table"), "patient"
    parsed = ids.str.extract(_CHEXPERT_ID, expand=False)
    if len(ids) and parsed.notna().all():
        return parsed.astype(str).to_numpy(), "patient"
    if len(ids):
        bad = ids[parsed.isna()].iloc[0]
        logger.warning(
            "bootstrap clusters: no manifest patient_id and id %r is not CheXpert-style "
            "(patient<digits>_study<k>_...): CXRs are resampled, not patients",
            bad,
        )
    return ids.to_numpy(), "cxr"


def bootstrap_means(
    per_map: pd.DataFrame,
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    clusters: np.ndarray | None = None,
    cluster_unit: str = "cxr",
    max_dropped_share: float = MAX_DROPPED_SHARE,
    min_clusters: int = MIN_CI_CLUSTERS,
    label: str = "",
    metrics: Sequence[str] | None = None,
) -> dict[str, float | str]:
    """Mean of each metric with a percentile CI, resampling clusters (all their maps together).

    Every row of ``per_map`` counts (``summary_table`` chooses the rows of each metric).

    Args:
        per_map: Rows of one table cell.
        n_boot: Replicates.
        seed: Seed.
        level: CI level.
        clusters: Cluster of each row (default: the CXR, ``image_id``).
        cluster_unit: Name of the cluster unit for the ``cluster_unit`` column.
        max_dropped_share: Largest share of undefined replicates (a replicate that drew no
            finite value of a metric); above it ``BootstrapDropError``.
        min_clusters: A metric finite in fewer clusters gets no CI (named in ``ci_note``).
        label: The cell, for error messages.
        metrics: Names of the metrics to compute (default: every ``METRICS`` name, the
            extra metrics and ``shortcut_*`` columns present).

    Returns:
        ``n_cxr``, ``n_maps``, ``n_clusters``, ``cluster_unit``, then per metric
        ``<m>``, ``<m>_lo``, ``<m>_hi``, ``<m>_dropped`` (replicates left out), and ``ci_note``.
    """
    labels = (
        per_map["image_id"].astype(str).to_numpy() if clusters is None else np.asarray(clusters)
    )
    out: dict[str, float | str] = {
        "n_cxr": float(per_map["image_id"].nunique()),
        "n_maps": float(len(per_map)),
        "n_clusters": float(pd.unique(labels).size),
        "cluster_unit": cluster_unit,
    }
    names = _metric_columns(per_map)
    if metrics is not None:
        names = {name: names[name] for name in metrics}
    cols = {name: per_map[col].to_numpy(dtype=float) for name, col in names.items()}
    results = nanmean_cis(
        cols,
        labels,
        n_boot=n_boot,
        seed=seed,
        level=level,
        max_dropped_share=max_dropped_share,
        min_clusters=min_clusters,
        label=label,
    )
    for name, res in results.items():
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = res.estimate, res.lo, res.hi
        out[f"{name}_dropped"] = float(res.n_dropped)
    out["ci_note"] = _ci_note(out, list(results), min_clusters, cluster_unit)
    return out


def _ci_note(stats: Mapping[str, Any], names: Sequence[str], min_clusters: int, unit: str) -> str:
    """``ci_note``: the metrics of ``names`` with a value but no CI (finite in fewer than
    ``min_clusters`` clusters: ``nanmean_cis`` leaves their bounds NaN)."""
    short = [n for n in names if np.isfinite(stats[n]) and not np.isfinite(stats[f"{n}_lo"])]
    return f"no CI (finite in < {min_clusters} {unit}s): {', '.join(short)}" if short else ""


#: Columns of the project tables (``summary_table``, ``subgroup_table``,
#: ``paired_comparisons``) that record how their CIs were made.
CI_COLUMNS: tuple[str, ...] = ("ci_level", "n_boot")


def ci_settings(level: float, n_boot: int) -> dict[str, float | int]:
    """The ``CI_COLUMNS`` of a row: the CI level and the bootstrap replicates."""
    return {"ci_level": float(level), "n_boot": int(n_boot)}


def summary_table(
    per_map: pd.DataFrame,
    *,
    n_boot: int,
    seed: int,
    by: Sequence[str] = ("model", "method"),
    manifest: object = None,
    max_dropped_share: float = MAX_DROPPED_SHARE,
    level: float = 0.95,
) -> pd.DataFrame:
    """``localization_summary``: per group x task and an ``overall`` row, every metric with CIs.

    A cell (group x task) is made for the tasks with rows of CXRs in the ground truth.
    ``miou_full`` is averaged over the rows of the reference's full mode (``scored_rows``:
    also every CXR with a map outside the ground truth, a false positive there scoring 0),
    so it equals the mean of the full-mode ``iou_results_per_cxr`` of the same rows; every
    other metric over the CXRs in the ground truth. ``n_cxr``, ``n_maps`` and ``n_clusters``
    count the latter; ``n_cxr_full``, ``n_maps_full`` and ``n_clusters_full`` the rows of
    ``miou_full``. CIs resample patients (``patient_clusters``: the manifest's
    ``patient_id``, else CheXpert-style ids); see ``bootstrap_means`` for the columns, then
    ``ci_level`` and ``n_boot`` (``CI_COLUMNS``: the level and replicates the CIs were made
    with).
    """
    rows = []
    patients, unit = patient_clusters(per_map["image_id"], manifest)
    table = per_map.assign(_cluster=patients)
    for key, group in table.groupby(list(by), sort=True):
        labels = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for task, sub in [*group.groupby("task", sort=True), ("overall", group)]:
            if not sub["in_gt"].astype(bool).any():
                continue  # only CXRs outside the ground truth: no cell, as before
            cell = "/".join(str(v) for v in (*labels.values(), task)) + ": "
            stats = _cell_stats(
                sub,
                n_boot=n_boot,
                seed=seed,
                level=level,
                unit=unit,
                max_dropped_share=max_dropped_share,
                label=cell,
            )
            rows.append({**labels, "task": task, **stats, **ci_settings(level, n_boot)})
    return pd.DataFrame(rows)


def _cell_stats(
    cell: pd.DataFrame,
    *,
    n_boot: int,
    seed: int,
    level: float,
    unit: str,
    max_dropped_share: float,
    label: str,
) -> dict[str, float | str]:
    """``bootstrap_means`` of one cell (with a ``_cluster`` column), each metric on its own
    rows (``scored_rows``): one call for the metrics of the CXRs in the ground truth (the
    same draws as before ``miou_full`` had its own rows), one for ``FULL_MODE_METRICS``.
    Columns in ``bootstrap_means``' order, ``n_*_full`` after ``n_clusters``."""
    names = list(_metric_columns(cell))
    parts: dict[bool, dict[str, float | str]] = {}
    for full in (False, True):
        chosen = [m for m in names if (m in FULL_MODE_METRICS) == full]
        rows = cell[scored_rows(cell, chosen[0])]
        parts[full] = bootstrap_means(
            rows.drop(columns="_cluster"),
            n_boot=n_boot,
            seed=seed,
            level=level,
            clusters=rows["_cluster"].to_numpy(),
            cluster_unit=unit,
            max_dropped_share=max_dropped_share,
            label=label,
            metrics=chosen,
        )
    counts = ("n_cxr", "n_maps", "n_clusters")
    out: dict[str, float | str] = {k: parts[False][k] for k in counts}
    out.update({f"{k}_full": parts[True][k] for k in counts})
    out["cluster_unit"] = unit
    for name in names:
        source = parts[name in FULL_MODE_METRICS]
        for suffix in ("", "_lo", "_hi", "_dropped"):
            out[f"{name}{suffix}"] = source[f"{name}{suffix}"]
    out["ci_note"] = _ci_note(out, names, MIN_CI_CLUSTERS, unit)
    return out


def check_attributes(attributes: object, key: str) -> list[str]:
    """``subgroup_attributes`` as a list of names (``None``: none).

    Raises:
        ParameterError: not a list of strings (a bare string such as ``--params
        localization.subgroup_attributes=sex`` would be read letter by letter).
    """
    if attributes is None:
        return []
    if not isinstance(attributes, list | tuple) or not all(
        isinstance(a, str) and a for a in attributes
    ):
        raise ParameterError(
            key, f"expected a list of manifest columns, e.g. [sex, tube], got {attributes!r}"
        )
    return list(attributes)


def check_pairs(pairs: object, names: Sequence[str], key: str) -> list[tuple[str, str]]:
    """``compare_pairs``: a list of ``[set_a, set_b]`` of two different known sets.

    Raises:
        ParameterError: naming ``key``: not a list of two-element lists, a pair of one set
            with itself, or a set that is not in ``names`` (the available ones listed).
    """
    expected = "expected a list of [set_a, set_b] pairs of two different heatmap sets"
    if not isinstance(pairs, list | tuple):
        raise ParameterError(key, f"{expected}, got {pairs!r}")
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(s, str) for s in pair)
        ):
            raise ParameterError(key, f"{expected}; {pair!r} is not a pair of set names")
        if pair[0] == pair[1]:
            raise ParameterError(key, f"{expected}; {list(pair)!r} compares a set with itself")
        out.append((pair[0], pair[1]))
    unknown = sorted({s for p in out for s in p} - set(names))
    if unknown:
        raise ParameterError(key, f"unknown heatmap set(s) {unknown}; available: {list(names)}")
    return out


def subgroup_table(
    per_map: pd.DataFrame,
    manifest: pd.DataFrame,
    attributes: Sequence[str],
    *,
    n_boot: int,
    seed: int,
    max_dropped_share: float = MAX_DROPPED_SHARE,
    key: str = "subgroup_attributes",
) -> pd.DataFrame:
    """Summary broken down by manifest attributes (one block per attribute and level).

    Empty without a manifest (``{}`` in the ``chexlocalize`` environment) or attributes.

    Raises:
        ParameterError: ``attributes`` (the parameter ``key``) is not a list of names, or
            names a column the manifest lacks (the message lists the manifest's columns).
    """
    attrs = check_attributes(attributes, key)
    if not isinstance(manifest, pd.DataFrame) or manifest.empty or not attrs:
        return pd.DataFrame()
    unknown = [a for a in attrs if a not in manifest.columns]
    if unknown:
        available = ", ".join(str(c) for c in manifest.columns if c != "image_id")
        raise ParameterError(
            key, f"not a column of the manifest: {unknown}; available columns: {available}"
        )
    frames = []
    joined = per_map.merge(
        manifest[["image_id", *attrs]].astype({"image_id": str}), on="image_id", how="left"
    )
    for attr in attrs:
        for level, sub in joined.groupby(joined[attr].astype(str), sort=True):
            table = summary_table(
                sub,
                n_boot=n_boot,
                seed=seed,
                manifest=manifest,
                max_dropped_share=max_dropped_share,
            )
            table.insert(0, "level", level)
            table.insert(0, "attribute", attr)
            frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def paired_comparisons(
    per_map: pd.DataFrame,
    pairs: Sequence[Sequence[str]],
    *,
    n_boot: int,
    seed: int,
    manifest: object = None,
    max_dropped_share: float = MAX_DROPPED_SHARE,
    level: float = 0.95,
) -> pd.DataFrame:
    """Difference a - b of each metric between two heatmap sets on the same (CXR, task) pairs.

    Each metric is compared on its own rows (``scored_rows``): ``miou_full`` on every pair
    the two sets share, CXRs outside the ground truth included (as the reference's full
    mode and ``summary_table``), the others on the pairs of CXRs in the ground truth; in
    both, only the pairs where the metric is finite in both sets count. A row per task
    with pairs of CXRs in the ground truth, and ``overall``.

    Args:
        per_map: Per-map table with a ``set`` column.
        pairs: [[set_a, set_b], ...].
        n_boot: Replicates (patients resampled, ``patient_clusters``).
        seed: Seed.
        manifest: For the patient of each CXR (see ``patient_clusters``).
        max_dropped_share: See ``cxr_spurious.stats.bootstrap.percentile_ci``.
        level: CI level.

    Returns:
        set_a, set_b, task, metric, diff, diff_lo, diff_hi, p_value, n_maps, n_clusters,
        cluster_unit, diff_dropped, ci_note, ci_level, n_boot. A difference over fewer
        than ``MIN_CI_CLUSTERS`` clusters has no CI and no p-value (``paired_bootstrap``;
        ``ci_note`` says so).

    Raises:
        ParameterError: a pair of a set with itself (its differences would all be 0).
    """
    rows = []
    patients, unit = patient_clusters(per_map["image_id"], manifest)
    table = per_map.assign(_cluster=patients)
    for a, b in pairs:
        if a == b:
            raise ParameterError("compare_pairs", f"[{a!r}, {b!r}] compares a set with itself")
        left = table[table["set"] == a].set_index(["image_id", "task"])
        right = table[table["set"] == b].set_index(["image_id", "task"])
        common = left.index.intersection(right.index)
        left, right = left.loc[common].reset_index(), right.loc[common].reset_index()
        in_gt = left["in_gt"].astype(bool).to_numpy()  # the same CXR: the same in both sets
        if not in_gt.any():
            continue
        own = {name: scored_rows(left, name).to_numpy() for name in METRICS}
        for task, sel in [
            *(
                (t, (left["task"] == t).to_numpy())
                for t in sorted(left.loc[in_gt, "task"].unique())
            ),
            ("overall", np.ones(len(left), bool)),
        ]:
            for name, col in METRICS.items():
                la, rb = left[sel & own[name]], right[sel & own[name]]
                va, vb = la[col].to_numpy(float), rb[col].to_numpy(float)
                keep = np.isfinite(va) & np.isfinite(vb)
                if not keep.any():
                    continue
                va, vb = va[keep], vb[keep]
                groups = la["_cluster"].to_numpy()[keep]
                res, p = paired_bootstrap(
                    lambda i, v=va: float(v[i].mean()),
                    lambda i, v=vb: float(v[i].mean()),
                    len(va),
                    n_boot=n_boot,
                    seed=seed,
                    level=level,
                    clusters=groups,
                    max_dropped_share=max_dropped_share,
                    label=f"{a} - {b}/{task}/{name}",
                )
                rows.append(
                    {
                        "set_a": a,
                        "set_b": b,
                        "task": task,
                        "metric": name,
                        "diff": res.estimate,
                        "diff_lo": res.lo,
                        "diff_hi": res.hi,
                        "p_value": p,
                        "n_maps": int(keep.sum()),
                        "n_clusters": int(pd.unique(groups).size),
                        "cluster_unit": unit,
                        "diff_dropped": res.n_dropped,
                        "ci_note": few_clusters_note(groups, unit=unit, lacks="CI or p-value"),
                        **ci_settings(level, n_boot),
                    }
                )
    return pd.DataFrame(rows)
