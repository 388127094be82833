"""The dataset report: counts by split x label x attribute."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.errors import ParameterError

_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def dataset_counts(
    manifest: pd.DataFrame, tasks: Sequence[str], attributes: Sequence[str]
) -> pd.DataFrame:
    """Long table of image counts per split, task label and attribute value.

    Args:
        manifest: Contract manifest.
        tasks: Pathology columns.
        attributes: Attribute columns (each must exist).

    Returns:
        Columns ``split, task, label, attribute, value, n_images, n_patients``; ``label`` is
        "positive" / "negative" / "unknown"; ``attribute`` "all" gives the totals.
    """
    missing = [a for a in attributes if a not in manifest.columns]
    if missing:
        raise ParameterError(
            "ingestion.report_attributes",
            f"unknown attribute(s) {missing}; manifest columns are {list(manifest.columns)}",
        )
    rows = []
    for task in tasks:
        label = manifest[task].map({1.0: "positive", 0.0: "negative"}).fillna("unknown")
        for attribute in ["all", *attributes]:
            values = (
                pd.Series("all", index=manifest.index)
                if attribute == "all"
                else manifest[attribute]
                .astype(object)
                .where(manifest[attribute].notna(), "missing")
                .astype(str)
            )
            grouped = manifest.assign(_label=label, _value=values).groupby(
                ["split", "_label", "_value"], observed=True
            )
            for (split, lab, value), g in grouped:
                rows.append(
                    {
                        "split": split,
                        "task": task,
                        "label": lab,
                        "attribute": attribute,
                        "value": value,
                        "n_images": len(g),
                        "n_patients": g["patient_id"].nunique(),
                    }
                )
    out = pd.DataFrame(
        rows, columns=["split", "task", "label", "attribute", "value", "n_images", "n_patients"]
    )
    return out.sort_values(
        ["task", "attribute", "value", "split", "label"],
        key=lambda s: s.map(_SPLIT_ORDER).fillna(s) if s.name == "split" else s,
    ).reset_index(drop=True)


def plot_dataset_report(counts: pd.DataFrame, max_panels: int = 12) -> Figure:
    """Bar charts: positives per split for each task, and image counts per attribute value."""
    totals = counts[counts["attribute"] == "all"]
    attrs = [a for a in counts["attribute"].unique() if a != "all"]
    n_panels = min(1 + len(attrs), max_panels)
    ncols = min(3, n_panels)
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.4 * nrows), squeeze=False)
    ax = axes.flat[0]
    pos = totals[totals["label"] == "positive"].pivot_table(
        index="task", columns="split", values="n_images", aggfunc="sum", fill_value=0
    )
    pos = pos[[s for s in ("train", "val", "test") if s in pos.columns]]
    pos.plot.barh(ax=ax)
    ax.set_title("Positive images per task and split")
    ax.set_xlabel("images")
    first_task = counts["task"].iloc[0] if len(counts) else None
    for ax, attribute in zip(list(axes.flat)[1:], attrs):
        sub = counts[(counts["attribute"] == attribute) & (counts["task"] == first_task)]
        table = sub.pivot_table(
            index="value", columns="split", values="n_images", aggfunc="sum", fill_value=0
        )
        table = table[[s for s in ("train", "val", "test") if s in table.columns]]
        table.plot.bar(ax=ax, rot=30)
        ax.set_title(f"Images by {attribute}")
        ax.set_xlabel("")
    for ax in list(axes.flat)[n_panels:]:
        ax.axis("off")
    fig.suptitle("Dataset report", fontweight="bold")
    fig.tight_layout()
    return fig
