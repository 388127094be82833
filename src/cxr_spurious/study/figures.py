"""The study's headline figure: each model's metrics with their CIs."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.ci_marks import draw_intervals

PANELS: tuple[tuple[str, str], ...] = (
    ("auroc", "Overall AUROC"),
    ("robust_auroc", "Robust AUROC\n(PTX without tube vs no PTX with tube)"),
    ("cf_auroc_no_tube", "AUROC on tube-free renders"),
    ("cf_drop_no_tube", "Drop in P(PTX) when the tube is removed"),
    ("gradcam_tube_mass", "Grad-CAM mass on the tube\n(images with a tube)"),
    ("gradcam_tube_mass_no_finding", "Grad-CAM mass on the tube\n(images with a tube, no PTX)"),
    (
        "gradcam_tube_auroc",
        "Grad-CAM as a pixel score for the tube\n(AUROC outside the lesion, images with a tube)",
    ),
    ("gradcam_miou", "Grad-CAM mIoU with the true lesion"),
)


def plot_findings(findings: pd.DataFrame) -> Figure:
    """One panel per headline metric, one point with its CI per model (at the table's
    ``ci_level``, 95 % when the table does not record it)."""
    panels = [(c, t) for c, t in PANELS if c in findings.columns]
    ncols = min(4, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.6 * nrows), squeeze=False)
    models = findings["model"].tolist()
    y = np.arange(len(models))
    colours = plt.get_cmap("tab10")(np.arange(len(models)))
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (col, title) in zip(axes.flat, panels):
        est = findings[col].to_numpy(float)
        lo = findings.get(f"{col}_lo", findings[col]).to_numpy(float)
        hi = findings.get(f"{col}_hi", findings[col]).to_numpy(float)
        draw_intervals(ax, est, lo, hi, y, color=colours)
        if "auroc" in col:
            ax.axvline(0.5, color="grey", lw=0.8, ls="--")
            ax.set_xlim(0, 1)
        ax.set_yticks(y, models)
        ax.set_ylim(-0.6, len(models) - 0.4)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        "Spatial specificity vs shortcut learning "
        f"(point estimate, {_level_text(findings)} bootstrap CI)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _level_text(findings: pd.DataFrame) -> str:
    """``"95%"`` from the ``ci_level`` column (one level per table), 95 % without it."""
    levels = findings["ci_level"].dropna().unique() if "ci_level" in findings else []
    level = float(levels[0]) if len(levels) == 1 else 0.95
    return f"{level * 100:g}%"
