"""The evaluation table: predictions joined with the manifest's labels and attributes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.sources.contract import AGE_BIN, DEFAULT_AGE_EDGES, align_table, bin_ages


def evaluation_table(
    manifest: pd.DataFrame,
    predictions: pd.DataFrame,
    tasks: Sequence[str],
    attributes: Sequence[str],
    *,
    age_edges: Sequence[float] = DEFAULT_AGE_EDGES,
    name: str = "predictions",
) -> pd.DataFrame:
    """One row per manifest image: ids, split, labels, ``p_<task>`` and grouping attributes.

    Args:
        manifest: The manifest (one row per image; duplicates from resampling are dropped).
        predictions: ``image_id, p_<task>...`` covering every manifest image.
        tasks: Label columns.
        attributes: Grouping attributes (manifest columns or ``age_bin``).
        age_edges: Lower edges of the age bins.
        name: Dataset name for error messages.

    Returns:
        ``image_id, patient_id, split, <task>, p_<task>, <attribute>...``.

    Raises:
        ContractError: misaligned predictions or a missing ``p_<task>`` column.
        ParameterError: an attribute not in the manifest.
    """
    m = manifest.drop_duplicates("image_id").reset_index(drop=True)
    missing_p = [f"p_{t}" for t in tasks if f"p_{t}" not in predictions.columns]
    if missing_p:
        raise ContractError(
            f"{name}: missing column(s) {missing_p}; got {list(predictions.columns)}"
        )
    bad = [a for a in attributes if a != AGE_BIN and a not in m.columns]
    if bad:
        raise ParameterError(
            "robustness.attributes",
            f"attribute(s) {bad} not in the manifest; "
            f"available: {sorted(map(str, m.columns))} and '{AGE_BIN}'",
        )
    aligned = align_table(m, predictions, name=name)
    out = m[["image_id", "patient_id", "split", *tasks]].copy()
    for t in tasks:
        out[f"p_{t}"] = aligned[f"p_{t}"].to_numpy(dtype=float)
    for a in attributes:
        out[a] = bin_ages(m["age_years"], age_edges).to_numpy() if a == AGE_BIN else m[a].to_numpy()
    if "tube" in m.columns and "tube" not in out.columns:
        out["tube"] = m["tube"].to_numpy(dtype=float)
    if not np.isfinite(out[[f"p_{t}" for t in tasks]].to_numpy(dtype=float)).all():
        raise ContractError(f"{name}: p_<task> columns contain NaN or infinite values")
    return out


def split_rows(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split (fresh index).

    Raises:
        ContractError: the split is empty.
    """
    out = table[table["split"] == split].reset_index(drop=True)
    if out.empty:
        raise ContractError(f"evaluation table has no '{split}' rows")
    return out
