"""Across-seed summaries of ``sweep_models``: what changes with the seed, not test sampling.

``summarise_cells``: one row per cell (everything but the seed), each metric's mean over the
seeds with a Student t interval on the seed values (``ci_covers`` = ``seeds``): the spread of
retraining on the same data design, not the within-run bootstrap CI of one model. Each seed
also re-draws which images carry the artefact, in train and val and, unless
``sweep.test_seed`` fixes them, in the test split (``sweep.confounding``).
``paired_differences``: supervisions trained on the same data and seed (same artefact,
strength, seed and, between two location supervisions, the same location fraction; ``erm``
uses no location labels and pairs with every fraction), as the mean paired difference with a
paired t interval and p-value (``scipy.stats.ttest_rel``'s). The interval and the paired
test are ``cxr_spurious.stats.seeds``'s (shared with the comparison's across-seed tables),
both cut to the metric's range where it is known (``stats.seeds.metric_range``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.stats.seeds import (
    SEED_COLUMN,
    difference_range,
    metric_range,
    paired_difference,
    seed_list,
    t_interval,
)
from cxr_spurious.sweep.grid import CELL_COLUMNS, LOCATION_SUPERVISIONS, SUPERVISIONS

logger = logging.getLogger(__name__)

#: Columns that are never metrics (the cell, the seed and bookkeeping).
IDENTITY_COLUMNS: frozenset[str] = frozenset(
    {*CELL_COLUMNS, SEED_COLUMN, "confounding", "namespace", "config_hash"}
)
#: Within-run CI columns of ``sweep_models`` (not averaged over seeds).
CI_SUFFIXES: tuple[str, ...] = ("_lo", "_hi", "_dropped")
#: Text columns that a CSV round trip may turn into all-NaN floats, and the counts of images
#: behind each model's metrics (``n_test``, ``n_with_artefact``): neither is a metric.
NOT_METRICS: frozenset[str] = frozenset({"ci_note", "note", "ci_covers"})
COUNT_PREFIX = "n_"
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("seg", "erm"), ("seg", "box"), ("box", "erm"))
ONE_SEED_NOTE = "one seed: no across-seed CI"
ONE_PAIR_NOTE = "one seed pair: no CI"


def metric_columns(models: pd.DataFrame) -> list[str]:
    """Numeric columns of ``sweep_models`` that are metrics (point estimates, not their CIs)."""
    return [
        c
        for c in models.columns
        if c not in IDENTITY_COLUMNS
        and c not in NOT_METRICS
        and not c.startswith(COUNT_PREFIX)
        and not c.endswith(CI_SUFFIXES)
        and pd.api.types.is_numeric_dtype(models[c])
        and not pd.api.types.is_bool_dtype(models[c])
    ]


def check_pairs(pairs: object, key: str = "pairs") -> list[tuple[str, str]]:
    """The supervision pairs to compare, checked: a list of ``[a, b]``, two different names
    of ``grid.SUPERVISIONS`` each.

    Args:
        pairs: The pairs (``sweep.summary.pairs``).
        key: The parameter's key, named in the error (``[i]`` added for the i-th pair).

    Returns:
        The pairs as tuples, in the order given.

    Raises:
        ParameterError: ``pairs`` is not a list, a pair is not two names, a name is not a
            supervision (the valid names listed) or a pair names one supervision twice.
    """
    if isinstance(pairs, str | bytes) or not isinstance(pairs, Sequence):
        raise ParameterError(
            key, f"must be a list of [supervision, supervision] pairs, got {pairs!r}"
        )
    out: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        where = f"{key}[{i}]"
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ParameterError(
                where,
                f"must be a pair [a, b] of two supervisions {list(SUPERVISIONS)}, got {pair!r}",
            )
        bad = [name for name in pair if name not in SUPERVISIONS]
        if bad:
            raise ParameterError(
                where,
                f"unknown supervision(s) {bad}; valid names are {list(SUPERVISIONS)}",
            )
        a, b = pair
        if a == b:
            raise ParameterError(where, f"a pair needs two different supervisions, got {a} - {b}")
        out.append((str(a), str(b)))
    return out


def summarise_cells(
    models: pd.DataFrame, *, metrics: Sequence[str] | None = None, level: float = 0.95
) -> pd.DataFrame:
    """One row per cell: each metric's mean over seeds with a t interval across seeds.

    Args:
        models: ``sweep_models`` (``CELL_COLUMNS``, ``seed`` and the metric columns).
        metrics: The metrics to summarise (default: ``metric_columns(models)``).
        level: Confidence level.

    Returns:
        ``CELL_COLUMNS``, ``confounding``, ``n_seeds``, ``seeds``, per metric ``<m>``,
        ``<m>_lo``, ``<m>_hi``; ``ci_covers`` ("seeds") and ``note``. A value that is not
        finite (NaN or +-inf) is left out of its metric's mean and interval, and ``note``
        counts it: ``undefined for some seeds: robust_auroc: 3 of 4 seeds``.
    """
    _check_models(models)
    names = list(metrics) if metrics is not None else metric_columns(models)
    rows = []
    for key, group in models.groupby(list(CELL_COLUMNS), sort=True, dropna=False):
        row: dict[str, Any] = dict(zip(CELL_COLUMNS, key))
        row["confounding"] = row["p_given_ptx"] - row["p_given_no_ptx"]
        row.update(n_seeds=len(group), seeds=_seed_list(group))
        for m in names:
            values = group[m].to_numpy(dtype=float)
            mean, lo, hi = t_interval(
                values, level, bounds=metric_range(m), name=f"sweep_models: {m}"
            )
            row.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi})
        row["ci_covers"] = "seeds"
        row["note"] = ONE_SEED_NOTE if len(group) == 1 else _missing_note(group, names)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(
    models: pd.DataFrame,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    *,
    metrics: Sequence[str] | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """Mean difference (a - b) between two supervisions trained on the same data and seed.

    ``pairs`` is checked by ``check_pairs``; a valid pair whose supervisions never share a
    cell and seed in ``models`` (e.g. one of them is not in the grid) gives no rows and a
    warning that names it.

    Returns:
        One row per pair and matched cell: ``pair`` ("seg - erm"), ``supervision_a``,
        ``supervision_b``, the cell columns (``location_fraction`` of the location side),
        ``n_pairs``, ``seeds``, per metric ``<m>`` (mean difference), ``<m>_lo``, ``<m>_hi``
        (paired t interval), ``<m>_p`` (paired t-test p-value) and ``<m>_n`` (the pairs where
        the metric is defined on both sides: the others are left out of that metric's
        difference, interval and test, and ``note`` names the metric, e.g. ``undefined for
        some pairs: occlusion_artefact_mass: 2 of 3 pairs``); ``ci_covers``, ``note``.

    Raises:
        ParameterError: a malformed pair, an unknown supervision or a pair of one
            supervision (``check_pairs``, naming ``pairs[i]``).
    """
    _check_models(models)
    pairs = check_pairs(pairs)
    names = list(metrics) if metrics is not None else metric_columns(models)
    frames = []
    for a, b in pairs:
        frame = _pair_rows(models, a, b, names, level)
        if frame.empty:
            _warn_unmatched(models, a, b)
        else:
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _pair_rows(
    models: pd.DataFrame, a: str, b: str, names: list[str], level: float
) -> pd.DataFrame:
    both_located = a in LOCATION_SUPERVISIONS and b in LOCATION_SUPERVISIONS
    keys = ["artefact", "strength", "p_given_ptx", "p_given_no_ptx", SEED_COLUMN]
    keys += ["location_fraction"] if both_located else []
    cols = keys + names + ([] if both_located else ["location_fraction"])
    side_a, side_b = (models.loc[models["supervision"] == s, cols] for s in (a, b))
    merged = side_a.merge(side_b, on=keys, suffixes=("_a", "_b"))
    if merged.empty:
        return pd.DataFrame()
    if not both_located:
        located = "_a" if a in LOCATION_SUPERVISIONS else "_b"
        merged["location_fraction"] = merged[f"location_fraction{located}"]
    cell = [k for k in CELL_COLUMNS if k != "supervision"]
    rows = []
    for key, group in merged.groupby(cell, sort=True, dropna=False):
        row: dict[str, Any] = {"pair": f"{a} - {b}", "supervision_a": a, "supervision_b": b}
        row.update(dict(zip(cell, key)))
        row.update(n_pairs=len(group), seeds=_seed_list(group))
        defined: dict[str, int] = {}
        for m in names:
            diff = (group[f"{m}_a"] - group[f"{m}_b"]).to_numpy(dtype=float)
            mean, lo, hi, p = paired_difference(
                diff, level, bounds=difference_range(m), name=f"sweep_models: {m} ({a} - {b})"
            )
            defined[m] = int(np.isfinite(diff).sum())  # pairs where both sides are defined
            row.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi, f"{m}_p": p, f"{m}_n": defined[m]})
        row["ci_covers"] = "seeds (paired)"
        row["note"] = ONE_PAIR_NOTE if len(group) == 1 else _missing_pairs_note(defined, len(group))
        rows.append(row)
    return pd.DataFrame(rows)


def _warn_unmatched(models: pd.DataFrame, a: str, b: str) -> None:
    """Say why a pair has no rows: an info line when the run trained no model of one of its
    supervisions (the shipped pairs name every supervision, the base grid trains erm and seg
    only), a warning when both were trained but share no artefact, strength and seed."""
    present = set(models["supervision"].astype(str))
    absent = [s for s in (a, b) if s not in present]
    if absent:
        logger.info(
            "sweep_paired_differences: pair %s - %s skipped: no model of %s in this run "
            "(supervisions trained: %s)",
            a, b, absent, sorted(present),
        )  # fmt: skip
        return
    logger.warning(
        "sweep_paired_differences: pair %s - %s has no rows: the two supervisions share no "
        "artefact, strength and seed",
        a, b,
    )  # fmt: skip


def _check_models(models: pd.DataFrame) -> None:
    missing = [c for c in (*CELL_COLUMNS, SEED_COLUMN) if c not in models.columns]
    if missing:
        raise ContractError(f"sweep_models: missing column(s) {missing}")
    repeated = models.duplicated([*CELL_COLUMNS, SEED_COLUMN])
    if repeated.any():
        rows = models.loc[repeated, ["artefact", "strength", "supervision", SEED_COLUMN]]
        raise ContractError(
            f"sweep_models: a cell and seed repeat, e.g. {rows.head(3).to_dict('records')}"
        )


def _seed_list(group: pd.DataFrame) -> str:
    return seed_list(group[SEED_COLUMN])


def _missing_pairs_note(defined: dict[str, int], n_pairs: int) -> str:
    short = [f"{m}: {k} of {n_pairs} pairs" for m, k in defined.items() if k < n_pairs]
    return ("undefined for some pairs: " + ", ".join(short)) if short else ""


def _missing_note(group: pd.DataFrame, names: list[str]) -> str:
    """``undefined for some seeds: <m>: k of n seeds`` for each metric with fewer than ``n``
    finite values: NaN and +-inf are both left out of the mean and interval
    (``stats.seeds.t_interval``), so both are counted here."""
    defined = {m: int(np.isfinite(group[m].to_numpy(dtype=float)).sum()) for m in names}
    short = [f"{m}: {k} of {len(group)} seeds" for m, k in defined.items() if k < len(group)]
    return ("undefined for some seeds: " + ", ".join(short)) if short else ""
