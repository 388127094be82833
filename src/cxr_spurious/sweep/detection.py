"""Does a saliency method tell models that rely on the artefact from models that do not?

Truth comes from the counterfactual renders, not from the maps: a model *relies* on its
artefact when ``artefact_reliance`` (mean drop in P(PTX) when the artefact is removed) is at
least ``reliance_threshold``. The method's score is its attribution to the artefact (the
mass share, ``<method>_artefact_mass``). Per method and artefact (and ``all`` artefacts):

* ``detection_auroc``: AUROC of the attribution for reliance, over models, with a percentile
  bootstrap over models (rows resampled; NaN CI and a note when a resample often lacks a
  class, see ``stats.bootstrap.bootstrap_or_note``). The rows are put in a canonical order
  first (``canonical_order``), so the same seed gives the same CI whatever the order of
  ``sweep_models``' rows (which follows the order of the grid's parameters);
* ``spearman``: rank correlation of attribution with reliance, with the same bootstrap;
* ``false_flag_rate``: among models trained without confounding (P(artefact | PTX) =
  P(artefact | no PTX)), the share whose attribution exceeds ``flag_k`` times the artefact's
  mean area share (a map spread evenly would put that share on it), with a Wilson interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from statsmodels.stats.proportion import proportion_confint

from cxr_spurious.errors import ContractError, check_number
from cxr_spurious.stats.bootstrap import (
    MAX_DROPPED_SHARE,
    bootstrap_or_note,
    check_ci_level,
    check_max_dropped_share,
    check_n_boot,
)
from cxr_spurious.stats.metrics import auroc
from cxr_spurious.sweep.grid import CELL_COLUMNS

RELIANCE_COLUMN = "artefact_reliance"
AREA_COLUMN = "artefact_area"
MASS_SUFFIX = "_artefact_mass"
ALL_ARTEFACTS = "all"
_NAN_CI = {"": np.nan, "_lo": np.nan, "_hi": np.nan, "_dropped": np.nan}
#: Columns that identify a model of ``sweep_models``, in the order its rows are sorted by
#: before the bootstrap (``canonical_order``).
MODEL_KEY: tuple[str, ...] = (*CELL_COLUMNS, "seed")


def check_reliance_threshold(value: object, key: str = "reliance_threshold") -> float:
    """The reliance at or above which a model relies on its artefact: a finite number.

    Raises:
        ParameterError: naming ``key`` (booleans, strings, NaN and infinities refused).
    """
    return check_number(value, key)


def check_flag_k(value: object, key: str = "flag_k") -> float:
    """The multiple of the artefact's mean area share above which a map flags it: > 0.

    Raises:
        ParameterError: naming ``key`` (booleans, strings, NaN, infinities and values <= 0
            refused).
    """
    return check_number(value, key, low=0, low_open=True)


def canonical_order(models: pd.DataFrame, methods: Sequence[str] = ()) -> pd.DataFrame:
    """``models`` sorted by the model's identity (``MODEL_KEY``, the columns present), then
    by reliance and the methods' attributions: rows that tie on every sort column are equal
    in everything the bootstrap reads, so its replicates depend on the set of models only,
    not on the order of the rows (the order of the grid's artefacts and strengths)."""
    values = [RELIANCE_COLUMN, *(f"{m}{MASS_SUFFIX}" for m in methods)]
    by = [c for c in (*MODEL_KEY, *values) if c in models.columns]
    return models.sort_values(by, kind="stable", na_position="last").reset_index(drop=True)


def saliency_methods(models: pd.DataFrame) -> list[str]:
    """Methods with an attribution column ``<method>_artefact_mass`` in ``sweep_models``."""
    return sorted(c[: -len(MASS_SUFFIX)] for c in models.columns if c.endswith(MASS_SUFFIX))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson on average ranks) of the pairs where both are finite.

    NaN with fewer than 3 pairs or a constant side.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return float("nan")
    rx, ry = rankdata(x[keep]), rankdata(y[keep])
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials (NaN, NaN for ``n`` = 0).

    Raises:
        ParameterError: ``level`` not in (0, 1) (naming ``level``; -0.2 gave an inverted
            interval and 1.5 a NaN one).
    """
    level = check_ci_level(level, "level")
    if n == 0:
        return float("nan"), float("nan")
    lo, hi = proportion_confint(k, n, alpha=1 - level, method="wilson")
    return float(lo), float(hi)


def detection_rule(method: str, reliance_threshold: float, flag_k: float) -> str:
    """The stated truth and flag rule of one method's rows."""
    return (
        f"relies: {RELIANCE_COLUMN} >= {reliance_threshold:g}; flagged: {method} artefact "
        f"mass share > {flag_k:g} x the artefact's mean area share"
    )


def shortcut_detection(
    models: pd.DataFrame,
    *,
    methods: Sequence[str] | None = None,
    reliance_threshold: float = 0.1,
    flag_k: float = 2.0,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
) -> pd.DataFrame:
    """One row per saliency method and artefact (and ``all``); see the module docstring.

    Args:
        models: ``sweep_models``: ``artefact``, ``p_given_ptx``, ``p_given_no_ptx``,
            ``artefact_reliance``, ``artefact_area`` and ``<method>_artefact_mass``.
        methods: Saliency methods (default: every ``<method>_artefact_mass`` column).
        reliance_threshold: Reliance at or above which a model relies on its artefact.
        flag_k: Multiple of the artefact's mean area share above which a map flags it.
        n_boot, seed, level, max_dropped_share: The bootstrap over models (rows in
            ``canonical_order``: the same seed gives the same CI whatever the row order).

    Returns:
        ``method``, ``artefact``, ``rule``, ``n_models``, ``n_reliant``, ``n_not_reliant``,
        ``detection_auroc`` and ``spearman`` (each with ``_lo``/``_hi``/``_dropped``),
        ``n_unconfounded``, ``n_flagged``, ``false_flag_rate`` (``_lo``/``_hi``), ``note``.

    Raises:
        ParameterError: ``level`` not in (0, 1), checked whether or not a bootstrap runs;
            ``reliance_threshold`` not finite; ``flag_k`` not > 0; ``n_boot`` not an integer
            >= 1; ``max_dropped_share`` not in [0, 1].
        ContractError: a missing column.
    """
    level = check_ci_level(level, "level")
    n_boot = check_n_boot(n_boot)
    max_dropped_share = check_max_dropped_share(max_dropped_share)
    reliance_threshold, flag_k = _check(models, reliance_threshold, flag_k)
    names = list(methods) if methods is not None else saliency_methods(models)
    models = canonical_order(models, [m for m in names if f"{m}{MASS_SUFFIX}" in models])
    area = models.groupby("artefact")[AREA_COLUMN].mean() if AREA_COLUMN in models else None
    boot: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "level": level}
    rows = []
    for method in names:
        if f"{method}{MASS_SUFFIX}" not in models:
            raise ContractError(f"sweep_models has no column '{method}{MASS_SUFFIX}'")
        for artefact in [*sorted(models["artefact"].unique()), ALL_ARTEFACTS]:
            sub = models if artefact == ALL_ARTEFACTS else models[models["artefact"] == artefact]
            row: dict[str, Any] = {
                "method": method,
                "artefact": artefact,
                "rule": detection_rule(method, reliance_threshold, flag_k),
            }
            notes: list[str] = []
            row.update(_separation(sub, method, reliance_threshold, max_dropped_share, boot, notes))
            row.update(_false_flags(sub, method, area, flag_k, level, notes))
            row["note"] = "; ".join(notes)
            rows.append(row)
    return pd.DataFrame(rows)


def _check(models: pd.DataFrame, reliance_threshold: float, flag_k: float) -> tuple[float, float]:
    missing = [
        c
        for c in ("artefact", "p_given_ptx", "p_given_no_ptx", RELIANCE_COLUMN)
        if c not in models.columns
    ]
    if missing:
        raise ContractError(f"sweep_models: missing column(s) {missing} for shortcut detection")
    return check_reliance_threshold(reliance_threshold), check_flag_k(flag_k)


def _separation(
    sub: pd.DataFrame,
    method: str,
    threshold: float,
    share: float,
    boot: dict[str, Any],
    notes: list[str],
) -> dict[str, float]:
    score = sub[f"{method}{MASS_SUFFIX}"].to_numpy(dtype=float)
    reliance = sub[RELIANCE_COLUMN].to_numpy(dtype=float)
    keep = np.isfinite(score) & np.isfinite(reliance)
    score, reliance = score[keep], reliance[keep]
    truth = (reliance >= threshold).astype(float)
    n_reliant = int(truth.sum())
    out: dict[str, float] = {
        "n_models": float(truth.size),
        "n_reliant": float(n_reliant),
        "n_not_reliant": float(truth.size - n_reliant),
    }
    stats = {
        "detection_auroc": lambda i: auroc(truth[i], score[i]),
        "spearman": lambda i: spearman(score[i], reliance[i]),
    }
    for name, fn in stats.items():
        if not np.isfinite(fn(np.arange(truth.size))):
            out.update({name + k: v for k, v in _NAN_CI.items()})
            notes.append(f"{name}: undefined ({_why_undefined(name, n_reliant, truth.size)})")
            continue
        res, note = bootstrap_or_note(
            fn, truth.size, max_dropped_share=share, desc=f"{method}/{name}", **boot
        )
        out.update({**res.as_dict(name), f"{name}_dropped": float(res.n_dropped)})
        notes += [f"{name}: {note}"] if note else []
    return out


def _why_undefined(name: str, n_reliant: int, n: int) -> str:
    if name == "spearman":
        return (
            f"{n} model(s) with both reliance and attribution"
            if n < 3
            else "a constant attribution or reliance"
        )
    if n_reliant == 0:
        return f"no model of {n} relies on the artefact"
    if n_reliant == n:
        return f"every model of {n} relies on the artefact"
    return "a constant attribution"


def _false_flags(
    sub: pd.DataFrame,
    method: str,
    area: pd.Series | None,
    flag_k: float,
    level: float,
    notes: list[str],
) -> dict[str, float]:
    score = sub[f"{method}{MASS_SUFFIX}"].to_numpy(dtype=float)
    unconfounded = (sub["p_given_ptx"] == sub["p_given_no_ptx"]).to_numpy() & np.isfinite(score)
    limit = (
        flag_k * sub["artefact"].map(area).to_numpy(dtype=float)
        if area is not None
        else np.full(len(sub), np.nan)
    )
    usable = unconfounded & np.isfinite(limit)
    n, k = int(usable.sum()), int((score[usable] > limit[usable]).sum())
    lo, hi = wilson_interval(k, n, level)
    if n == 0:
        notes.append("false_flag_rate: no unconfounded model with an attribution and an area share")
    return {
        "n_unconfounded": float(n),
        "n_flagged": float(k),
        "false_flag_rate": k / n if n else float("nan"),
        "false_flag_rate_lo": lo,
        "false_flag_rate_hi": hi,
    }
