"""Multiplicity: p-values adjusted for the number of tests a table reports.

A comparison table tests every variant against a reference on several metrics, so some
uncorrected p-values fall under 0.05 by chance alone (55 tests give about 2.75 such
p-values when no variant changes anything). ``adjust_p`` returns the adjusted p-values of
one family of tests; ``adjust_table`` adds ``<metric>_p_adj`` beside every ``<metric>_p``
column of a paired table (``adjust_column``: one ``p_adj`` column of a table with one test
per row), with the family chosen by the caller:

* ``family="metric"``: each metric column (within each ``groups`` value, e.g. each task)
  is one family: "does any variant change this metric?".
* ``family="table"``: every p-value of the table is one family: "does anything change?".

Methods (those of ``statsmodels.stats.multitest.multipletests``, the reference the tests
compare with):

* ``holm``: Holm's step-down, family-wise error rate, valid under any dependence;
* ``bonferroni``: ``min(1, m * p)``;
* ``fdr_bh``: Benjamini-Hochberg false discovery rate (independent or positively
  dependent tests);
* ``none``: the p-values unchanged (the column is still written, so readers see the choice).

NaN p-values (an undefined test) stay NaN and do not count in the family size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, ParameterError

METHODS: tuple[str, ...] = ("holm", "bonferroni", "fdr_bh", "none")
FAMILIES: tuple[str, ...] = ("metric", "table")
ADJUSTED_SUFFIX = "_p_adj"


def check_method(method: str, family: str = "metric", *, key: str = "multiplicity") -> None:
    """Raise ``ParameterError`` naming ``key`` when ``method`` or ``family`` is unknown."""
    if method not in METHODS:
        raise ParameterError(f"{key}.method", f"must be one of {list(METHODS)}, got {method!r}")
    if family not in FAMILIES:
        raise ParameterError(f"{key}.family", f"must be one of {list(FAMILIES)}, got {family!r}")


def read_settings(value: Mapping[str, Any] | None, key: str) -> tuple[str, str]:
    """``(method, family)`` of a ``multiplicity`` parameter block (Holm per metric when it is
    not set), checked.

    Raises:
        ParameterError: naming ``key``: an unknown key, method or family.
    """
    settings = {"method": "holm", "family": "metric", **dict(value or {})}
    unknown = sorted(set(settings) - {"method", "family"})
    if unknown:
        raise ParameterError(key, f"unknown key(s) {unknown}; expected method and family")
    method, family = str(settings["method"]), str(settings["family"])
    check_method(method, family, key=key)
    return method, family


def adjust_p(p: np.ndarray | Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjusted p-values of one family of tests, in the input order.

    Args:
        p: The family's p-values; NaN entries stay NaN and are not counted.
        method: One of ``METHODS``.

    Returns:
        The adjusted p-values, each in [p, 1].

    Raises:
        ParameterError: an unknown method.
        ContractError: a finite p-value outside [0, 1].
    """
    check_method(method)
    values = np.asarray(p, dtype=float)
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    q = values[finite]
    if ((q < 0) | (q > 1)).any():
        raise ContractError(f"p-values must lie in [0, 1], got {q[(q < 0) | (q > 1)][:3].tolist()}")
    m = q.size
    if m == 0:
        return out
    if method == "none":
        adjusted = q.copy()
    elif method == "bonferroni":
        adjusted = np.minimum(1.0, m * q)
    else:
        order = np.argsort(q, kind="stable")
        ranked = q[order]
        if method == "holm":  # step-down: running maximum of (m - i) p_(i), i = 0..m-1
            steps = np.maximum.accumulate((m - np.arange(m)) * ranked)
        else:  # fdr_bh step-up: running minimum from the largest of m / i p_(i), i = 1..m
            steps = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(1.0, steps)
    out[finite] = adjusted
    return out


def adjust_table(
    table: pd.DataFrame,
    metrics: Sequence[str],
    *,
    method: str = "holm",
    family: str = "metric",
    groups: Sequence[str] = (),
    source: str = "paired table",
) -> pd.DataFrame:
    """A copy of ``table`` with ``<m>_p_adj`` after each ``<m>_p`` column.

    Args:
        table: A paired table with a ``<m>_p`` column per metric of ``metrics``.
        metrics: The metrics whose p-values are adjusted.
        method: One of ``METHODS``.
        family: ``metric`` (one family per metric and ``groups`` value) or ``table`` (one
            family for every p-value of the table).
        groups: Columns that split the ``metric`` families further (e.g. ``task``); unused
            with ``family="table"``.
        source: The table's name in error messages.

    Raises:
        ParameterError: an unknown method or family.
        ContractError: a ``<m>_p`` or ``groups`` column is missing (naming ``source``).
    """
    check_method(method, family)
    p_cols = [f"{m}_p" for m in metrics]
    missing = [c for c in (*p_cols, *groups) if c not in table.columns]
    if missing:
        raise ContractError(f"{source}: missing column(s) {missing} to adjust for multiplicity")
    out = table.copy()
    if out.empty:
        for m in metrics:
            out[f"{m}{ADJUSTED_SUFFIX}"] = pd.Series(dtype=float)
        return _ordered(out, metrics)
    if family == "table":
        flat = adjust_p(out[p_cols].to_numpy(dtype=float).ravel(), method)
        adjusted = flat.reshape(len(out), len(p_cols))
        for j, m in enumerate(metrics):
            out[f"{m}{ADJUSTED_SUFFIX}"] = adjusted[:, j]
        return _ordered(out, metrics)
    for m in metrics:
        out[f"{m}{ADJUSTED_SUFFIX}"] = _adjust_within(out, f"{m}_p", groups, method)
    return _ordered(out, metrics)


def adjust_column(
    table: pd.DataFrame,
    p_column: str,
    *,
    method: str = "holm",
    family: str = "metric",
    groups: Sequence[str] = (),
    out_column: str = "p_adj",
    source: str = "table",
) -> pd.DataFrame:
    """A copy of a long table (one test per row) with ``out_column`` after ``p_column``.

    Args:
        table: One row per test, its p-value in ``p_column``.
        p_column: The column of p-values.
        method: One of ``METHODS``.
        family: ``metric``: one family per ``groups`` value (e.g. each metric and task);
            ``table``: every row is one family.
        groups: The columns whose values split the families with ``family="metric"``.
        out_column: The name of the adjusted column.
        source: The table's name in error messages.

    Raises:
        ParameterError: an unknown method or family.
        ContractError: ``p_column`` or a ``groups`` column is missing (naming ``source``).
    """
    check_method(method, family)
    missing = [c for c in (p_column, *groups) if c not in table.columns]
    if missing:
        raise ContractError(f"{source}: missing column(s) {missing} to adjust for multiplicity")
    out = table.copy()
    adjusted = _adjust_within(out, p_column, groups if family == "metric" else (), method)
    columns = [c for c in out.columns if c != out_column]
    out[out_column] = adjusted
    columns.insert(columns.index(p_column) + 1, out_column)
    return out[columns]


def _adjust_within(
    table: pd.DataFrame, p_column: str, groups: Sequence[str], method: str
) -> np.ndarray:
    """``p_column`` adjusted within each group of rows that share the ``groups`` values."""
    p = table[p_column].to_numpy(dtype=float)
    positions = (
        [np.arange(len(table))]
        if not groups
        else list(table.groupby(list(groups), sort=False, dropna=False).indices.values())
    )
    out = np.full(len(table), np.nan)
    for rows in positions:
        out[rows] = adjust_p(p[rows], method)
    return out


def family_note(method: str, family: str, groups: Sequence[str] = ()) -> str:
    """One sentence for a table's note: which adjustment ``<m>_p_adj`` holds."""
    if method == "none":
        return "p_adj: no multiplicity adjustment (method none: equal to p)"
    name = {
        "holm": "Holm (family-wise error)",
        "bonferroni": "Bonferroni (family-wise error)",
        "fdr_bh": "Benjamini-Hochberg (false discovery rate)",
    }[method]
    if family == "table":
        scope = "every p-value of the table"
    else:
        names = list(groups) if "metric" in groups else ["metric", *groups]
        scope = "each " + (
            names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        )
    return f"p_adj: {name} over {scope}; the intervals are not adjusted"


def _ordered(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Move each ``<m>_p_adj`` right after its ``<m>_p``."""
    columns = [c for c in frame.columns if not c.endswith(ADJUSTED_SUFFIX)]
    for m in metrics:
        at = columns.index(f"{m}_p") + 1
        columns.insert(at, f"{m}{ADJUSTED_SUFFIX}")
    return frame[columns]
