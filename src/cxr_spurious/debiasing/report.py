"""Group counts of the train split before and after resampling (table and figure)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .groups import NO_GROUP


def group_count_table(
    before: pd.DataFrame, after: pd.DataFrame, names: Mapping[int, str]
) -> pd.DataFrame:
    """Rows, patients and summed weight per train group, before and after.

    Args:
        before: Manifest with a ``group`` column (before resampling).
        after: Resampled manifest (``group``, ``weight``).
        names: ``{group id: key}``; id ``-1`` is reported as ``(none)``.

    Returns:
        One row per group: ``group, key, n_before, patients_before, n_after,
        patients_after, weight_after``.
    """
    b = before[before["split"] == "train"]
    a = after[after["split"] == "train"]
    ids = sorted(set(b["group"]).union(a["group"]))
    rows = []
    for gid in ids:
        gb, ga = b[b["group"] == gid], a[a["group"] == gid]
        rows.append(
            {
                "group": int(gid),
                "key": "(none)" if gid == NO_GROUP else names.get(int(gid), str(gid)),
                "n_before": len(gb),
                "patients_before": gb["patient_id"].nunique(),
                "n_after": len(ga),
                "patients_after": ga["patient_id"].nunique(),
                "weight_after": float(ga["weight"].sum()),
            }
        )
    return pd.DataFrame(rows)


def plot_group_counts(table: pd.DataFrame, title: str = "train group sizes") -> Figure:
    """Horizontal bars of rows per group before and after (and effective weight)."""
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1.5))
    y = np.arange(len(table))
    ax.barh(y - 0.2, table["n_before"], height=0.4, label="before")
    ax.barh(y + 0.2, table["weight_after"], height=0.4, label="after (summed weight)")
    ax.set_yticks(y, table["key"], fontsize=7)
    ax.set_xlabel("train rows")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
