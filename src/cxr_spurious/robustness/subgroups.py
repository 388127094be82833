"""AUROC overall, per subgroup, Saab's robust (tube) AUROC and worst-group AUROC, with
bootstrap CIs over patients, and a paired bootstrap test between two models."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError
from cxr_spurious.stats.bootstrap import BootstrapResult, bootstrap, paired_bootstrap
from cxr_spurious.stats.metrics import auroc, reverse_auroc, robust_auroc

METRICS: dict[str, Callable[..., float]] = {"auroc": auroc, "robust_auroc": robust_auroc, "reverse_auroc": reverse_auroc}


def eligible_groups(y: np.ndarray, values: pd.Series, min_per_class: int) -> list[object]:
    """Groups of ``values`` with at least ``min_per_class`` positives and negatives."""
    out = []
    for v in sorted(values.dropna().unique(), key=str):
        yy = y[(values == v).to_numpy()]
        if (yy == 1).sum() >= min_per_class and (yy == 0).sum() >= min_per_class:
            out.append(v)
    return out


def worst_group_auroc(y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_groups: int) -> float:
    """Lowest AUROC over the groups ``0..n_groups-1`` of ``codes`` (NaN groups skipped)."""
    values = [auroc(y[codes == k], s[codes == k]) for k in range(n_groups)]
    finite = [v for v in values if np.isfinite(v)]
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
) -> pd.DataFrame:
    """AUROC overall, per group of each attribute, worst group, and robust / reverse AUROC.

    CIs resample patients (``patient_id``). A subgroup's CI resamples the patients of that
    subgroup; the worst-group CI resamples all patients and takes the minimum over the
    eligible groups (those with ``min_per_class`` positives and negatives) in each replicate.

    Args:
        table: Evaluation rows of one split (``patient_id``, ``task``, ``p_<task>``, attributes).
        task: The label column.
        attributes: Grouping attributes (columns of ``table``).
        spurious: Binary spurious-feature column for robust / reverse AUROC (None: skip).
        min_per_class: Smallest number of positives and of negatives to report a group.
        n_boot: Bootstrap replicates.
        seed: Bootstrap seed.
        level: CI level.

    Returns:
        Rows ``task, metric, attribute, group, n, n_pos, estimate, lo, hi``.
    """
    y = table[task].to_numpy(dtype=float)
    s = table[f"p_{task}"].to_numpy(dtype=float)
    pid = table["patient_id"].to_numpy()
    kw = {"n_boot": n_boot, "seed": seed, "level": level}
    rows = [_row(task, "auroc", "all", "all", y, bootstrap(lambda i: auroc(y[i], s[i]), len(y), clusters=pid, **kw))]
    if spurious is not None and spurious in table.columns:
        t = table[spurious].to_numpy(dtype=float)
        for metric in ("robust_auroc", "reverse_auroc"):
            fn = METRICS[metric]
            res = bootstrap(lambda i, fn=fn: fn(y[i], s[i], t[i]), len(y), clusters=pid, **kw)
            rows.append(_row(task, metric, spurious, "all", y, res))
    for attr in attributes:
        if attr not in table.columns:
            raise ContractError(f"evaluation table has no attribute column '{attr}'")
        groups = eligible_groups(y, table[attr], min_per_class)
        for v in groups:
            mask = (table[attr] == v).to_numpy()
            yy, ss, pp = y[mask], s[mask], pid[mask]
            res = bootstrap(lambda i, yy=yy, ss=ss: auroc(yy[i], ss[i]), int(mask.sum()), clusters=pp, **kw)
            rows.append(_row(task, "auroc", attr, str(v), yy, res))
        if groups:
            codes = pd.Categorical(table[attr], categories=groups).codes
            res = bootstrap(_worst_statistic(y, s, codes, len(groups)), len(y), clusters=pid, **kw)
            rows.append(_row(task, "worst_group_auroc", attr, "worst", y, res))
    return pd.DataFrame(rows)


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
) -> dict[str, float]:
    """Paired bootstrap (over patients) of ``metric(a) - metric(b)`` on the same images.

    Returns:
        ``{"difference", "difference_lo", "difference_hi", "p_value"}``.

    Raises:
        ContractError: the two tables do not hold the same images.
    """
    a = table_a.set_index("image_id")
    b = table_b.set_index("image_id")
    if set(a.index) != set(b.index):
        raise ContractError(f"paired test needs the same images in both models; {len(set(a.index) ^ set(b.index))} differ")
    b = b.loc[a.index]
    y = a[task].to_numpy(dtype=float)
    sa, sb = a[f"p_{task}"].to_numpy(dtype=float), b[f"p_{task}"].to_numpy(dtype=float)
    fn = METRICS[metric]
    extra = (a[spurious].to_numpy(dtype=float),) if metric != "auroc" else ()

    def stat(score: np.ndarray) -> Callable[[np.ndarray], float]:
        return lambda i: fn(y[i], score[i], *(e[i] for e in extra))

    res, p = paired_bootstrap(stat(sa), stat(sb), len(y), n_boot=n_boot, seed=seed, clusters=a["patient_id"].to_numpy(), level=level)
    return {**res.as_dict("difference"), "p_value": p}


def _worst_statistic(y: np.ndarray, s: np.ndarray, codes: np.ndarray, k: int) -> Callable[[np.ndarray], float]:
    return lambda i: worst_group_auroc(y[i], s[i], codes[i], k)


def _row(task: str, metric: str, attribute: str, group: str, y: np.ndarray, res: BootstrapResult) -> dict[str, object]:
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
    }
