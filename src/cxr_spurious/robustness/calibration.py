"""Calibration per group: expected calibration error and reliability diagrams.

Binning: ``n_bins`` equal-width bins on [0, 1], assigned exactly as scikit-learn's
``calibration_curve(strategy="uniform")`` does (``searchsorted`` on the inner edges, left
side): bin ``m`` holds the scores in ``(m / n_bins, (m + 1) / n_bins]`` (Guo et al. 2017),
so a score on an inner edge (0.5, the score of a logit of 0, with 10 bins) falls in the
lower bin, 0.0 in the first bin and 1.0 in the last. ECE = sum over non-empty bins of
``n_bin / n * |mean label - mean score|``.

Groups with fewer than ``min_rows`` labelled rows get no ECE (an ECE over a dozen rows is
mostly binning noise); the table's warning and the reliability diagram's footnote name them
with their sizes, and the diagram leaves them out too, so both show the same groups.
A group (or a split) of fewer than ``MIN_CI_CLUSTERS`` patients has an ECE without a CI
(NaN ``ece_lo`` / ``ece_hi``; ``ci_note``: ``no CI: 1 patient (fewer than 5)``): the
patient bootstrap of one patient draws the same rows in every replicate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.errors import check_integer
from cxr_spurious.stats.bootstrap import (
    MAX_DROPPED_SHARE,
    BootstrapResult,
    bootstrap,
    few_clusters_note,
)

logger = logging.getLogger(__name__)

#: Fewest labelled rows of a group with an ECE and a reliability curve
#: (``robustness.calibration_min_rows`` in the pipeline).
MIN_ROWS = 20


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Per non-empty bin: ``bin, count, mean_score, fraction_positive``.

    Raises:
        ParameterError: ``n_bins < 1``.
    """
    n_bins = check_integer(n_bins, "robustness.calibration_bins", low=1)
    yy, pp = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    keep = np.isfinite(yy) & np.isfinite(pp)
    yy, pp = yy[keep], pp[keep]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], pp, side="left")
    count = np.bincount(ids, minlength=n_bins)
    s = np.bincount(ids, weights=pp, minlength=n_bins)
    t = np.bincount(ids, weights=yy, minlength=n_bins)
    nz = count > 0
    return pd.DataFrame(
        {
            "bin": np.flatnonzero(nz),
            "count": count[nz],
            "mean_score": s[nz] / count[nz],
            "fraction_positive": t[nz] / count[nz],
        }
    )


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE with the binning of ``reliability_bins`` (NaN when no labelled rows)."""
    bins = reliability_bins(y, p, n_bins)
    if bins.empty:
        return float("nan")
    w = bins["count"] / bins["count"].sum()
    return float((w * (bins["fraction_positive"] - bins["mean_score"]).abs()).sum())


def calibration_table(
    table: pd.DataFrame,
    task: str,
    attributes: Sequence[str],
    *,
    n_bins: int = 10,
    min_rows: int = MIN_ROWS,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
) -> pd.DataFrame:
    """ECE overall and per group (groups of at least ``min_rows`` labelled rows), with CIs.

    A replicate's ECE is undefined when it drew no row with a label and a score; those
    replicates are counted in ``ece_dropped``. ECE needs no class balance, so a group of
    ``min_rows`` rows has none unless scores are missing: above ``max_dropped_share`` it is
    an error (``BootstrapDropError`` naming the task and group), not a quieter interval.
    Groups below ``min_rows`` have no row; a warning names them with their sizes. A group
    of fewer than ``MIN_CI_CLUSTERS`` patients keeps its ECE with NaN ``ece_lo`` /
    ``ece_hi`` and a ``ci_note`` giving the number of patients (module docstring).

    Returns:
        Rows ``task, attribute, group, n, ece, ece_lo, ece_hi, ece_dropped, ci_note``
        (``ci_note``: why a CI is missing, ``""`` when it stands).
    """
    lab = table[np.isfinite(table[task].to_numpy(dtype=float))].reset_index(drop=True)
    parts = [("all", "all", np.ones(len(lab), dtype=bool))]
    for attr in attributes:
        kept, small = split_by_size(lab[attr], min_rows)
        parts += [(attr, str(v), (lab[attr] == v).to_numpy()) for v in kept]
        if small:
            logger.warning(
                "calibration %s / %s: %s", task, attr, small_groups_note(small, min_rows)
            )
    rows = []
    for attr, group, mask in parts:
        y = lab.loc[mask, task].to_numpy(dtype=float)
        p = lab.loc[mask, f"p_{task}"].to_numpy(dtype=float)
        patients = lab.loc[mask, "patient_id"].to_numpy()
        desc = f"ECE {task}/{attr}={group}"
        if note := few_clusters_note(patients):
            estimate = expected_calibration_error(y, p, n_bins)
            res = BootstrapResult(estimate, float("nan"), float("nan"), np.array([]))
            logger.warning("%s: %s", desc, note)
        else:
            res = bootstrap(
                lambda i, y=y, p=p: expected_calibration_error(y[i], p[i], n_bins),
                len(y),
                n_boot=n_boot,
                seed=seed,
                clusters=patients,
                level=level,
                max_dropped_share=float(max_dropped_share),
                desc=desc,
            )
        rows.append(
            {
                "task": task,
                "attribute": attr,
                "group": group,
                "n": len(y),
                "ece": res.estimate,
                "ece_lo": res.lo,
                "ece_hi": res.hi,
                "ece_dropped": res.n_dropped,
                "ci_note": note,
            }
        )
    return pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))


#: The columns of ``calibration_table``.
CALIBRATION_COLUMNS: tuple[str, ...] = (
    "task",
    "attribute",
    "group",
    "n",
    "ece",
    "ece_lo",
    "ece_hi",
    "ece_dropped",
    "ci_note",
)


def split_by_size(values: pd.Series, min_rows: int) -> tuple[list[object], dict[object, int]]:
    """Groups of ``values`` (sorted as text) with at least ``min_rows`` rows, and the others
    with their row counts."""
    counts = values.value_counts()
    counts = counts[counts > 0]  # a categorical's unused categories are no groups
    kept: list[object] = []
    small: dict[object, int] = {}
    for v in sorted(counts.index, key=str):
        if counts[v] >= min_rows:
            kept.append(v)
        else:
            small[v] = int(counts[v])
    return kept, small


def small_groups_note(small: dict[object, int], min_rows: int) -> str:
    """``left out (fewer than 20 labelled rows): D (n=12), E (n=3)``."""
    listed = ", ".join(f"{v} (n={n})" for v, n in small.items())
    return f"left out (fewer than {min_rows} labelled rows): {listed}"


def plot_reliability(
    table: pd.DataFrame,
    task: str,
    attribute: str | None,
    *,
    n_bins: int = 10,
    min_rows: int = MIN_ROWS,
    title: str = "",
) -> Figure:
    """Reliability diagram: fraction positive vs mean score per bin, one line per group.

    The groups are those of ``calibration_table`` with the same ``min_rows``: smaller groups
    are left out and named with their sizes under the plot (and in a warning).
    """
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    lab = table[np.isfinite(table[task].to_numpy(dtype=float))]
    groups, note = [("all", lab)], ""
    if attribute is not None:
        kept, small = split_by_size(lab[attribute], min_rows)
        groups = [(str(v), lab[lab[attribute] == v]) for v in kept]
        if small:
            note = small_groups_note(small, min_rows)
            logger.warning("reliability diagram %s / %s: %s", task, attribute, note)
            fig.text(0.01, 0.005, note, fontsize=6, ha="left", va="bottom", wrap=True)
    for name, sub in groups:
        bins = reliability_bins(sub[task].to_numpy(), sub[f"p_{task}"].to_numpy(), n_bins)
        ax.plot(
            bins["mean_score"],
            bins["fraction_positive"],
            marker="o",
            ms=3,
            label=f"{name} (n={len(sub)})",
        )
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction positive")
    ax.set_title(title or f"{task} reliability" + (f" by {attribute}" if attribute else ""))
    if groups:
        ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1) if note else None)  # keep the footnote clear
    return fig
