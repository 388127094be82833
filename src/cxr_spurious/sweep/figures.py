"""The sweep's figures (Matplotlib ``Figure`` objects, no pyplot state).

(a) ``plot_strength_curves``: each metric against the confounding strength
    P(artefact | PTX) - P(artefact | no PTX), one line per supervision with its across-seed CI
    band (broken at strengths without an interval; an error bar at an isolated one), one
    panel per artefact (columns) and metric (rows);
(b) ``plot_detection``: each saliency method's detection AUROC with its CI, one panel per
    artefact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cxr_spurious.ci_marks import draw_intervals
from cxr_spurious.errors import ContractError
from cxr_spurious.sweep.detection import ALL_ARTEFACTS
from cxr_spurious.sweep.grid import LOCATION_SUPERVISIONS

STRENGTH_METRICS: tuple[tuple[str, str], ...] = (
    ("robust_auroc", "Robust AUROC\n(PTX without artefact vs no PTX with it)"),
    ("artefact_reliance", "Artefact reliance\n(drop in P(PTX) when removed)"),
)
CONFOUNDING_LABEL = "P(artefact | PTX) - P(artefact | no PTX)"
#: Reference level drawn in each metric's panels (chance AUROC, no reliance).
_REFERENCE = {"auroc": 0.5, "reliance": 0.0, "rise": 0.0}


def percent(share: float) -> str:
    """A share as an exact percentage without trailing zeros: ``0.015`` -> ``1.5%``, ``0.95``
    -> ``95%`` (6 significant digits, so that nearby grid values stay apart)."""
    return f"{100 * float(share):g}%"


def series_label(supervision: str, location_fraction: float) -> str:
    """Legend label of one supervision (with its share of location labels when below 1)."""
    if supervision in LOCATION_SUPERVISIONS and location_fraction < 1:
        return f"{supervision} ({percent(location_fraction)} location labels)"
    return supervision


def series_labels(table: pd.DataFrame, name: str = "sweep_summary") -> dict[tuple[str, float], str]:
    """``series_label`` of every (supervision, location fraction) of ``table``.

    Raises:
        ContractError: two series share a label (their fractions agree to 6 significant
            digits), so a table column or a legend entry would hide one of them.
    """
    keys = table[["supervision", "location_fraction"]].drop_duplicates()
    labels = {
        (str(s), float(f)): series_label(str(s), float(f))
        for s, f in zip(keys["supervision"], keys["location_fraction"])
    }
    seen: dict[str, tuple[str, float]] = {}
    for key, label in labels.items():
        if label in seen:
            raise ContractError(
                f"{name}: (supervision, location_fraction) {seen[label]} and {key} share the "
                f"label '{label}'; use location fractions that differ in the first 6 "
                "significant digits"
            )
        seen[label] = key
    return labels


def plot_strength_curves(
    summary: pd.DataFrame,
    metrics: Sequence[tuple[str, str]] = STRENGTH_METRICS,
    *,
    level: float = 0.95,
) -> Figure:
    """Metrics against confounding strength; ``summary`` is ``summarise_cells``' output and
    ``level`` the confidence level of its across-seed intervals (``sweep.summary.ci_level``),
    named in the title.

    Raises:
        ContractError: a column is missing, the table is empty, or two series share a label.
    """
    _require(
        summary,
        [
            "artefact",
            "supervision",
            "location_fraction",
            "p_given_ptx",
            "p_given_no_ptx",
            *(m for m, _ in metrics),
        ],
        "sweep_summary",
    )
    table = summary.assign(confounding=summary["p_given_ptx"] - summary["p_given_no_ptx"])
    labels = series_labels(table)
    artefacts = sorted(table["artefact"].unique())
    fig = Figure(figsize=(3.6 * len(artefacts), 2.8 * len(metrics)))
    axes = fig.subplots(len(metrics), len(artefacts), squeeze=False, sharex=True)
    for r, (metric, title) in enumerate(metrics):
        for c, artefact in enumerate(artefacts):
            ax = axes[r, c]
            _draw_curves(ax, table[table["artefact"] == artefact], metric, labels)
            ax.set_title(artefact.replace("_", " ") if r == 0 else "", fontsize=9)
            ax.set_ylabel(title if c == 0 else "", fontsize=8)
            ax.set_xlabel(CONFOUNDING_LABEL if r == len(metrics) - 1 else "", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"Shortcut sweep: mean over seeds, band = {percent(level)} CI across seeds", fontsize=10
    )
    fig.tight_layout()
    return fig


def _draw_curves(
    ax: Axes, cells: pd.DataFrame, metric: str, labels: dict[tuple[str, float], str]
) -> None:
    for (sup, frac), rows in cells.groupby(["supervision", "location_fraction"], sort=True):
        rows = rows.sort_values("confounding")
        x = rows["confounding"].to_numpy(dtype=float)
        (line,) = ax.plot(
            x,
            rows[metric].to_numpy(dtype=float),
            marker="o",
            label=labels[(str(sup), float(frac))],
        )
        if f"{metric}_lo" in rows and f"{metric}_hi" in rows:
            lo, hi = rows[f"{metric}_lo"].to_numpy(float), rows[f"{metric}_hi"].to_numpy(float)
            _draw_band(ax, x, rows[metric].to_numpy(dtype=float), lo, hi, line.get_color())
    for word, level in _REFERENCE.items():
        if metric.endswith(word):
            ax.axhline(level, color="grey", lw=0.8, ls="--", label="_reference")


def _draw_band(
    ax: Axes, x: np.ndarray, est: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: object
) -> None:
    """The CI band of one series, only where the strengths have an interval.

    The band is drawn over each run of neighbouring strengths that all have one, so it breaks
    at a strength without an interval (e.g. one seed) instead of being drawn across it; a
    strength whose neighbours have none gets its interval as an error bar.
    """
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return
    ax.fill_between(x, lo, hi, where=ok, interpolate=False, color=color, alpha=0.2, lw=0)
    before = np.r_[False, ok[:-1]]
    after = np.r_[ok[1:], False]
    alone = ok & ~before & ~after
    if alone.any():
        draw_intervals(
            ax, est[alone], lo[alone], hi[alone], x[alone], vertical=True, color=color, marker=None
        )


def plot_detection(
    detection: pd.DataFrame, metric: str = "detection_auroc", *, level: float = 0.95
) -> Figure:
    """Each saliency method's detection AUROC with its CI, one panel per artefact; ``level``
    is the CI's confidence level (``sweep.detection.ci_level``), named in the title."""
    _require(detection, ["method", "artefact", metric], "shortcut_detection")
    kinds = sorted(a for a in detection["artefact"].unique() if a != ALL_ARTEFACTS)
    artefacts = kinds + ([ALL_ARTEFACTS] if (detection["artefact"] == ALL_ARTEFACTS).any() else [])
    methods = sorted(detection["method"].unique())
    fig = Figure(figsize=(3.2 * len(artefacts), 0.45 * len(methods) + 1.6))
    axes = fig.subplots(1, len(artefacts), squeeze=False, sharey=True)[0]
    y = np.arange(len(methods))
    for ax, artefact in zip(axes, artefacts):
        rows = detection[detection["artefact"] == artefact].set_index("method").reindex(methods)
        est = rows[metric].to_numpy(dtype=float)
        lo = rows.get(f"{metric}_lo", rows[metric]).to_numpy(dtype=float)
        hi = rows.get(f"{metric}_hi", rows[metric]).to_numpy(dtype=float)
        draw_intervals(ax, est, lo, hi, y, color="C0")
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_yticks(y, methods)
        ax.set_title(artefact.replace("_", " "), fontsize=9)
        ax.set_xlabel("Detection AUROC\n(reliant vs not, over models)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # shared y: the first method on top in every panel
    fig.suptitle(
        "Does saliency detect reliance on the artefact? "
        f"({percent(level)} bootstrap CI over models)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _require(table: pd.DataFrame, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ContractError(f"{name}: missing column(s) {missing} for the figure")
    if table.empty:
        raise ContractError(f"{name} is empty: nothing to plot")
