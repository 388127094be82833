"""Across-seed statistics: the spread of retraining, not the sampling of one test set.

The one Student t interval over training seeds (``t_interval``) and the one paired
comparison of two models trained on the same seeds (``paired_difference``: mean paired
difference, paired t interval, ``scipy.stats.ttest_rel``'s two-sided p-value). The sweep's
summaries (``cxr_spurious.sweep.summary``) and the comparison's across-seed tables
(``summarise_over_seeds``, ``paired_over_seeds``) are built on them.

A t interval is symmetric, so with a few seeds near the edge of a bounded metric it can
reach past what the metric can take (an AUROC of 0.89 [0.74, 1.04]). Where the metric's
range is known (``metric_range``: AUROCs, rates, masses and gaps in [0, 1], reliances in
[-1, 1]; a paired difference of two such metrics in [lo - hi, hi - lo]) the interval is cut
to that range. Its coverage does not change, since the true value lies in the range; a
metric whose name matches no rule keeps the plain interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cxr_spurious.errors import ContractError
from cxr_spurious.stats.bootstrap import check_ci_level

SEED_COLUMN = "seed"

#: The range of each kind of metric, matched on the end of its column name (first match).
METRIC_RANGES: tuple[tuple[str, tuple[float, float]], ...] = (
    ("auroc", (0.0, 1.0)),  # auroc, robust_auroc, worst_group_auroc, <method>_artefact_auroc
    ("hit_rate", (0.0, 1.0)),
    ("miou", (0.0, 1.0)),
    ("artefact_mass", (0.0, 1.0)),  # share of a non-negative map's mass
    ("artefact_area", (0.0, 1.0)),
    ("fnr_gap", (0.0, 1.0)),  # max - min of per-group rates
    ("fpr_gap", (0.0, 1.0)),
    ("equalized_odds_difference", (0.0, 1.0)),
    ("reliance", (-1.0, 1.0)),  # mean change of a probability between two renders
    ("artefact_rise", (-1.0, 1.0)),
)
#: Slack for float round-off when values are checked against their metric's range.
RANGE_TOLERANCE = 1e-9


def metric_range(name: str) -> tuple[float, float] | None:
    """The values metric ``name`` can take (``METRIC_RANGES``), or None when unknown."""
    for suffix, bounds in METRIC_RANGES:
        if name.endswith(suffix):
            return bounds
    return None


def difference_range(name: str) -> tuple[float, float] | None:
    """The values a difference of two ``name`` metrics can take, or None when unknown."""
    bounds = metric_range(name)
    if bounds is None:
        return None
    lo, hi = bounds
    return lo - hi, hi - lo


def t_interval(
    values: np.ndarray,
    level: float = 0.95,
    *,
    bounds: tuple[float, float] | None = None,
    name: str = "values",
) -> tuple[float, float, float]:
    """Mean of the finite values and its Student t interval (NaN bounds with < 2 values).

    Args:
        values: One value per seed (NaN values are left out).
        level: Confidence level.
        bounds: The range the quantity can take: the interval is cut to it.
        name: The quantity in error messages.

    Raises:
        ParameterError: ``level`` is not in (0, 1).
        ContractError: a value lies outside ``bounds`` (the range does not fit the metric).
    """
    level = check_ci_level(level)
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if bounds is not None:
        outside = v[(v < bounds[0] - RANGE_TOLERANCE) | (v > bounds[1] + RANGE_TOLERANCE)]
        if outside.size:
            raise ContractError(
                f"{name}: value {float(outside[0]):g} lies outside its range "
                f"[{bounds[0]:g}, {bounds[1]:g}] (stats.seeds.METRIC_RANGES)"
            )
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return mean, lo, hi


def paired_p(diff: np.ndarray) -> float:
    """Two-sided paired t-test p-value of the finite differences, as ``scipy.stats.ttest_rel``
    gives it: NaN with fewer than 2 differences or all of them 0; 0.0 when they are all one
    non-zero value (no spread: t is infinite, e.g. a metric saturated at 1.0 on one side and
    0.0 on the other on every seed; it stays in the multiplicity family)."""
    d = np.asarray(diff, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan")
    if d.std(ddof=1) == 0:
        return 0.0 if d.mean() != 0 else float("nan")
    t = d.mean() / (d.std(ddof=1) / np.sqrt(d.size))
    return float(2 * stats.t.sf(abs(t), d.size - 1))


def paired_difference(
    diff: np.ndarray,
    level: float = 0.95,
    *,
    bounds: tuple[float, float] | None = None,
    name: str = "differences",
) -> tuple[float, float, float, float]:
    """Mean of the paired differences ``a - b``, its t interval (cut to ``bounds``, the
    range of a difference: ``difference_range``) and the paired p-value."""
    mean, lo, hi = t_interval(diff, level, bounds=bounds, name=name)
    return mean, lo, hi, paired_p(diff)


def seed_list(seeds: pd.Series) -> str:
    """The seeds of a group as text, sorted (``"0,1,2"``)."""
    return ",".join(str(s) for s in sorted(seeds.tolist()))


def summarise_over_seeds(
    per_seed: pd.DataFrame,
    keys: Sequence[str],
    metrics: Sequence[str],
    *,
    level: float = 0.95,
    source: str = "per-seed table",
) -> pd.DataFrame:
    """One row per ``keys`` group: each metric's mean over seeds and its t interval.

    Args:
        per_seed: One row per ``keys`` and ``seed``, one column per metric.
        keys: Columns that identify what was trained (e.g. ``variant``, ``task``).
        metrics: Metric columns to summarise (NaN values, an undefined metric of one seed,
            are left out of that metric's mean and interval).
        level: Confidence level.
        source: The table's name in error messages.

    Returns:
        ``keys``, ``n_seeds``, ``seeds``, per metric ``<m>``, ``<m>_lo``, ``<m>_hi`` and
        ``<m>_n`` (the seeds where the metric is defined).

    Raises:
        ContractError: a column is missing or a key and seed repeat (naming ``source``).
    """
    _check(per_seed, keys, metrics, source)
    rows = []
    for key, group in per_seed.groupby(list(keys), sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update(n_seeds=len(group), seeds=seed_list(group[SEED_COLUMN]))
        for m in metrics:
            values = group[m].to_numpy(dtype=float)
            mean, lo, hi = t_interval(values, level, bounds=metric_range(m), name=f"{source}: {m}")
            row.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi})
            row[f"{m}_n"] = int(np.isfinite(values).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def paired_over_seeds(
    per_seed: pd.DataFrame,
    by: str,
    reference: str,
    match: Sequence[str],
    metrics: Sequence[str],
    *,
    level: float = 0.95,
    source: str = "per-seed table",
) -> pd.DataFrame:
    """Every ``by`` value minus ``reference``, paired on the same seed and ``match`` columns.

    Args:
        per_seed: One row per ``by``, ``match`` and ``seed``.
        by: The column of what is compared (e.g. ``variant``).
        reference: The ``by`` value every other one is compared with (e.g. ``erm``).
        match: Further columns a pair must share (e.g. ``task``).
        metrics: Metric columns.
        level: Confidence level of the paired t interval.
        source: The table's name in error messages.

    Returns:
        One row per ``by`` value (but ``reference``) and ``match`` group: ``by``,
        ``reference``, ``match``, ``n_pairs``, ``seeds``, per metric ``<m>`` (mean
        difference), ``<m>_lo``, ``<m>_hi`` (paired t interval), ``<m>_p`` (paired
        t-test p-value) and ``<m>_n`` (the pairs where the metric is defined on both sides:
        the others are left out of that metric's difference). Seeds without a reference
        row are not paired.

    Raises:
        ContractError: a column is missing, a key and seed repeat, or no row is
            ``reference`` (naming ``source``).
    """
    _check(per_seed, [by, *match], metrics, source)
    ref = per_seed.loc[per_seed[by] == reference]
    if ref.empty:
        raise ContractError(f"{source}: no row with {by} = {reference!r} to pair with")
    on = [*match, SEED_COLUMN]
    others = per_seed.loc[per_seed[by] != reference, [by, *on, *metrics]]
    merged = others.merge(ref[[*on, *metrics]], on=on, suffixes=("_a", "_b"))
    rows = []
    for key, group in merged.groupby([by, *match], sort=False, dropna=False):
        row: dict[str, Any] = dict(zip([by, *match], key))
        row["reference"] = reference
        row.update(n_pairs=len(group), seeds=seed_list(group[SEED_COLUMN]))
        for m in metrics:
            diff = (group[f"{m}_a"] - group[f"{m}_b"]).to_numpy(dtype=float)
            mean, lo, hi, p = paired_difference(
                diff, level, bounds=difference_range(m), name=f"{source}: {m} difference"
            )
            row.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi, f"{m}_p": p})
            row[f"{m}_n"] = int(np.isfinite(diff).sum())  # pairs where both sides are defined
        rows.append(row)
    columns = [by, "reference", *match, "n_pairs", "seeds"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def _check(frame: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str], source: str) -> None:
    missing = [c for c in (*keys, SEED_COLUMN, *metrics) if c not in frame.columns]
    if missing:
        raise ContractError(f"{source}: missing column(s) {missing}; it has {list(frame.columns)}")
    repeated = frame.duplicated([*keys, SEED_COLUMN])
    if repeated.any():
        rows = frame.loc[repeated, [*keys, SEED_COLUMN]].head(3).to_dict("records")
        raise ContractError(f"{source}: a key and seed repeat, e.g. {rows}")
