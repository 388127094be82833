"""Calibration per group: expected calibration error and reliability diagrams.

Binning: ``n_bins`` equal-width bins on [0, 1], assigned exactly as scikit-learn's
``calibration_curve(strategy="uniform")`` does (``searchsorted`` on the inner edges, left
side): bin ``m`` holds the scores in ``(m / n_bins, (m + 1) / n_bins]`` (Guo et al. 2017),
so a score on an inner edge (0.5, the score of a logit of 0, with 10 bins) falls in the
lower bin, 0.0 in the first bin and 1.0 in the last. ECE = sum over non-empty bins of
``n_bin / n * |mean label - mean score|``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.errors import ParameterError
from cxr_spurious.stats.bootstrap import MAX_DROPPED_SHARE, bootstrap


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Per non-empty bin: ``bin, count, mean_score, fraction_positive``.

    Raises:
        ParameterError: ``n_bins < 1``.
    """
    if n_bins < 1:
        raise ParameterError("robustness.calibration_bins", f"must be >= 1, got {n_bins}")
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
    min_rows: int = 20,
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

    Returns:
        Rows ``task, attribute, group, n, ece, ece_lo, ece_hi, ece_dropped``.
    """
    lab = table[np.isfinite(table[task].to_numpy(dtype=float))].reset_index(drop=True)
    parts = [("all", "all", np.ones(len(lab), dtype=bool))]
    for attr in attributes:
        for v in sorted(lab[attr].dropna().unique(), key=str):
            mask = (lab[attr] == v).to_numpy()
            if mask.sum() >= min_rows:
                parts.append((attr, str(v), mask))
    rows = []
    for attr, group, mask in parts:
        y = lab.loc[mask, task].to_numpy(dtype=float)
        p = lab.loc[mask, f"p_{task}"].to_numpy(dtype=float)
        res = bootstrap(
            lambda i, y=y, p=p: expected_calibration_error(y[i], p[i], n_bins),
            len(y),
            n_boot=n_boot,
            seed=seed,
            clusters=lab.loc[mask, "patient_id"].to_numpy(),
            level=level,
            max_dropped_share=float(max_dropped_share),
            desc=f"ECE {task}/{attr}={group}",
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
            }
        )
    return pd.DataFrame(rows)


def plot_reliability(
    table: pd.DataFrame, task: str, attribute: str | None, *, n_bins: int = 10, title: str = ""
) -> Figure:
    """Reliability diagram: fraction positive vs mean score per bin, one line per group."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    lab = table[np.isfinite(table[task].to_numpy(dtype=float))]
    groups = (
        [("all", lab)]
        if attribute is None
        else [
            (str(v), lab[lab[attribute] == v])
            for v in sorted(lab[attribute].dropna().unique(), key=str)
        ]
    )
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
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
