"""AUROC overall, per subgroup, Saab's robust (tube) AUROC and worst-group AUROC, with
bootstrap CIs over patients, and a paired bootstrap test between two models.

Undefined replicates (a resample without a positive or a negative where the AUROC needs
them) are counted in ``n_dropped`` next to each CI. Overall AUROC and the paired difference
raise ``BootstrapDropError`` above ``max_dropped_share``. Statistics of groups (a subgroup's
AUROC, the worst-group AUROC, robust / reverse AUROC, which compare two tube subgroups) may
legitimately be undefined in many resamples of a small group: above the threshold their CI
is NaN and ``ci_note`` says why and how many (``bootstrap_or_note``); the estimate stays.

A statistic of fewer than ``MIN_CI_CLUSTERS`` patients (the project's rule for a
patient-bootstrap CI, ``stats.bootstrap``) gets no CI either: a group of one patient would
draw the same rows in every replicate, an interval of width 0, and a handful of patients
give a handful of distinct resamples. Its ``lo`` / ``hi`` are NaN and ``ci_note`` says how
many patients (``stats.bootstrap.few_clusters_note``: ``no CI: 1 patient (fewer than 5)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.stats.bootstrap import (
    MAX_DROPPED_SHARE,
    BootstrapResult,
    bootstrap,
    bootstrap_or_note,
    few_clusters_note,
    paired_bootstrap,
)
from cxr_spurious.stats.metrics import (
    SPURIOUS_PAIRING,
    auroc,
    reverse_auroc,
    robust_auroc,
    spurious_pairing_rows,
    undefined_pairing_note,
)

METRICS: dict[str, Callable[..., float]] = {
    "auroc": auroc,
    "robust_auroc": robust_auroc,
    "reverse_auroc": reverse_auroc,
}

logger = logging.getLogger(__name__)


def eligible_groups(y: np.ndarray, values: pd.Series, min_per_class: int) -> list[object]:
    """Groups of ``values`` with at least ``min_per_class`` positives and negatives."""
    out = []
    for v in sorted(values.dropna().unique(), key=str):
        yy = y[(values == v).to_numpy()]
        if (yy == 1).sum() >= min_per_class and (yy == 0).sum() >= min_per_class:
            out.append(v)
    return out


def _no_ci(estimate: float) -> BootstrapResult:
    """An estimate without an interval (and without replicates: ``n_dropped`` 0)."""
    return BootstrapResult(float(estimate), float("nan"), float("nan"), np.array([]))


def worst_group_auroc(
    y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_groups: int, *, strict: bool = False
) -> float:
    """Lowest AUROC over the groups ``0..n_groups-1`` of ``codes``.

    ``strict=False``: undefined (NaN) groups are skipped. ``strict=True``: NaN when any group
    is undefined (a bootstrap replicate that lost a group's positives has no worst group; the
    minimum over the remaining groups would bias the interval upwards).
    """
    values = [auroc(y[codes == k], s[codes == k]) for k in range(n_groups)]
    finite = [v for v in values if np.isfinite(v)]
    if strict and len(finite) < len(values):
        return float("nan")
    return float(min(finite)) if finite else float("nan")


def subgroup_auroc(
    table: pd.DataFrame,
    task: str,
    attributes: Sequence[str],
    *,
    spurious: str | None = "tube",
    min_per_class: int = 5,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
) -> pd.DataFrame:
    """AUROC overall, per group of each attribute, worst group, and robust / reverse AUROC.

    CIs resample patients (``patient_id``). A subgroup's CI resamples the patients of that
    subgroup; the worst-group CI resamples all patients and takes the minimum over the
    eligible groups (those with ``min_per_class`` positives and negatives) in each replicate
    (undefined when any of them is); its ``n`` / ``n_pos`` count the eligible groups' rows.
    Groups left out are named with their counts in the worst-group row's ``ci_note`` and
    in a warning; with fewer than two eligible groups the worst-group row has a NaN
    estimate and says so (one group's AUROC is no worst group: it may be the best one).
    Robust / reverse AUROC rows count only the rows they compare (``n``: positives without
    the spurious feature and negatives with it, or the reverse pairing; ``n_pos``: those
    positives); when either side is empty the estimate is NaN and ``ci_note`` and a warning
    give both counts (``undefined_pairing_note``).
    Undefined replicates: see the module docstring. A statistic of fewer than
    ``MIN_CI_CLUSTERS`` patients (a group, the rows robust / reverse AUROC compare, the
    whole split; for the worst group: any eligible group) has an estimate and no CI, and
    ``ci_note`` gives the number of patients (module docstring).

    Args:
        table: Evaluation rows of one split (``patient_id``, ``task``, ``p_<task>``, attributes).
        task: The label column.
        attributes: Grouping attributes (columns of ``table``).
        spurious: Binary spurious-feature column for robust / reverse AUROC (None: skip;
            a name that is not a column of ``table`` is a ``ParameterError``).
        min_per_class: Smallest number of positives and of negatives to report a group.
        n_boot: Bootstrap replicates.
        seed: Bootstrap seed.
        level: CI level.
        max_dropped_share: Largest share of undefined replicates: above it the overall AUROC
            raises ``BootstrapDropError``; a group statistic gets a NaN CI and a ``ci_note``.

    Returns:
        Rows ``task, metric, attribute, group, n, n_pos, estimate, lo, hi, n_dropped, ci_note``.
    """
    y = table[task].to_numpy(dtype=float)
    s = table[f"p_{task}"].to_numpy(dtype=float)
    pid = table["patient_id"].to_numpy()
    kw: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "level": level}
    share = float(max_dropped_share)
    labelled = np.isfinite(y)
    few = few_clusters_note(pid[labelled])
    if few:
        overall = _no_ci(auroc(y, s))
        logger.warning("AUROC %s: %s", task, few)
    else:
        overall = bootstrap(
            lambda i: auroc(y[i], s[i]),
            len(y),
            clusters=pid,
            max_dropped_share=share,
            desc=f"AUROC {task}",
            **kw,
        )
    rows = [_row(task, "auroc", "all", "all", y, overall, few)]
    if spurious is not None and spurious not in table.columns:
        # a silent skip would leave the robust / reverse AUROC out of every summary
        raise ParameterError(
            "robustness.spurious",
            f"column {spurious!r} is not in the evaluation table; has {list(table.columns)} "
            "(null skips the robust and reverse AUROC)",
        )
    if spurious is not None:
        t = table[spurious].to_numpy(dtype=float)
        for metric in SPURIOUS_PAIRING:
            fn = METRICS[metric]
            desc = f"{metric} {task}/{spurious}"
            used = spurious_pairing_rows(y, t, metric)
            if note := few_clusters_note(pid[used]):
                res = _no_ci(fn(y, s, t))
                logger.warning("%s: %s", desc, note)
            else:
                res, note = bootstrap_or_note(
                    lambda i, fn=fn: fn(y[i], s[i], t[i]),
                    len(y),
                    clusters=pid,
                    max_dropped_share=share,
                    desc=desc,
                    **kw,
                )
            if not np.isfinite(res.estimate):
                note = undefined_pairing_note(y, t, metric, spurious)
                logger.warning("%s: %s", desc, note)
            rows.append(_row(task, metric, spurious, "all", y[used], res, note))
    for attr in attributes:
        if attr not in table.columns:
            raise ContractError(f"evaluation table has no attribute column '{attr}'")
        groups = eligible_groups(y, table[attr], min_per_class)
        left_out = left_out_note(y, table[attr], groups, min_per_class)
        if left_out:
            logger.warning("subgroup AUROC %s / %s: %s", task, attr, left_out)
        few_groups = []  # notes of the groups too small in patients for a CI
        for v in groups:
            mask = (table[attr] == v).to_numpy()
            yy, ss, pp = y[mask], s[mask], pid[mask]
            desc = f"AUROC {task}/{attr}={v}"
            if note := few_clusters_note(pp[np.isfinite(yy)]):
                res = _no_ci(auroc(yy, ss))
                few_groups.append(few_clusters_note(pp[np.isfinite(yy)], what=f"group {v}"))
                logger.warning("%s: %s", desc, note)
            else:
                res, note = bootstrap_or_note(
                    lambda i, yy=yy, ss=ss: auroc(yy[i], ss[i]),
                    int(mask.sum()),
                    clusters=pp,
                    max_dropped_share=share,
                    desc=desc,
                    **kw,
                )
            rows.append(_row(task, "auroc", attr, str(v), yy, res, note))
        if len(groups) >= 2:
            # Rows of groups too small to score get code -1 (left out of the worst group).
            values = table[attr].where(table[attr].isin(groups))
            codes = pd.Categorical(values, categories=groups).codes
            if few_groups:  # the minimum over a group without a CI has none either
                res = _no_ci(worst_group_auroc(y, s, codes, len(groups)))
                note = "; ".join(few_groups)
            else:
                res, note = bootstrap_or_note(
                    _worst_statistic(y, s, codes, len(groups)),
                    len(y),
                    clusters=pid,
                    max_dropped_share=share,
                    desc=f"worst-group AUROC {task}/{attr}",
                    **kw,
                )
            note = "; ".join(part for part in (note, left_out) if part)
            rows.append(_row(task, "worst_group_auroc", attr, "worst", y[codes >= 0], res, note))
        else:  # one scorable group is not a worst group (it may be the best one)
            none = BootstrapResult(float("nan"), float("nan"), float("nan"), np.array([]))
            why = f"no worst group: {len(groups)} group(s) of '{attr}' scorable"
            note = "; ".join(part for part in (why, left_out) if part)
            rows.append(_row(task, "worst_group_auroc", attr, "worst", y[:0], none, note))
    return pd.DataFrame(rows)


def left_out_note(
    y: np.ndarray, values: pd.Series, groups: Sequence[object], min_per_class: int
) -> str:
    """Which groups of ``values`` are left out of the per-group and worst-group AUROC
    (fewer than ``min_per_class`` positives or negatives), with their counts; "" if none."""
    out = []
    for v in sorted(values.dropna().unique(), key=str):
        if v in groups:
            continue
        yy = y[(values == v).to_numpy()]
        out.append(f"{v} ({int((yy == 1).sum())} pos, {int((yy == 0).sum())} neg)")
    if not out:
        return ""
    return f"left out (fewer than {min_per_class} positives or negatives): " + ", ".join(out)


def paired_auroc_test(
    table_a: pd.DataFrame,
    table_b: pd.DataFrame,
    task: str,
    *,
    metric: str = "auroc",
    spurious: str = "tube",
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
) -> dict[str, float]:
    """Paired bootstrap (over patients) of ``metric(a) - metric(b)`` on the same images.

    Returns:
        ``{"difference", "difference_lo", "difference_hi", "difference_dropped", "p_value"}``
        (``difference_dropped``: replicates where the difference was undefined).

    Raises:
        ContractError: the two tables do not hold the same images.
        BootstrapDropError: more than ``max_dropped_share`` of the replicates are undefined.
    """
    a = table_a.set_index("image_id")
    b = table_b.set_index("image_id")
    if set(a.index) != set(b.index):
        raise ContractError(
            "paired test needs the same images in both models; "
            f"{len(set(a.index) ^ set(b.index))} differ"
        )
    b = b.loc[a.index]
    y = a[task].to_numpy(dtype=float)
    sa, sb = a[f"p_{task}"].to_numpy(dtype=float), b[f"p_{task}"].to_numpy(dtype=float)
    fn = METRICS[metric]
    extra = (a[spurious].to_numpy(dtype=float),) if metric != "auroc" else ()

    def stat(score: np.ndarray) -> Callable[[np.ndarray], float]:
        return lambda i: fn(y[i], score[i], *(e[i] for e in extra))

    res, p = paired_bootstrap(
        stat(sa),
        stat(sb),
        len(y),
        n_boot=n_boot,
        seed=seed,
        clusters=a["patient_id"].to_numpy(),
        level=level,
        max_dropped_share=float(max_dropped_share),
        label=f"paired {metric} difference {task}",
    )
    return {**res.as_dict("difference"), "difference_dropped": float(res.n_dropped), "p_value": p}


def _worst_statistic(
    y: np.ndarray, s: np.ndarray, codes: np.ndarray, k: int
) -> Callable[[np.ndarray], float]:
    return lambda i: worst_group_auroc(y[i], s[i], codes[i], k, strict=True)


def _row(
    task: str,
    metric: str,
    attribute: str,
    group: str,
    y: np.ndarray,
    res: BootstrapResult,
    note: str = "",
) -> dict[str, object]:
    return {
        "task": task,
        "metric": metric,
        "attribute": attribute,
        "group": group,
        "n": int(np.isfinite(y).sum()),
        "n_pos": int((y == 1).sum()),
        "estimate": res.estimate,
        "lo": res.lo,
        "hi": res.hi,
        "n_dropped": res.n_dropped,
        "ci_note": note,
    }
