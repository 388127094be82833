"""Grouping rows of a manifest by attributes (optionally crossed with the label).

A group key is the tuple of the row's grouping values, written ``"sex=F|age_bin=40-60"``;
group ids are integers in the sorted order of the keys; a row with any missing grouping
value (or a missing label when crossing with it) gets group ``-1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.sources.contract import AGE_BIN, DEFAULT_AGE_EDGES, bin_ages

LABEL = "label"
NO_GROUP = -1


def grouping_columns(
    manifest: pd.DataFrame,
    attributes: Sequence[str],
    age_edges: Sequence[float] = DEFAULT_AGE_EDGES,
) -> pd.DataFrame:
    """The grouping values of every row, one column per attribute (``age_bin`` derived).

    Raises:
        ParameterError: an attribute is neither a manifest column nor ``age_bin``.
    """
    if not attributes:
        raise ParameterError("debiasing.group_by", "needs at least one attribute")
    missing = [a for a in attributes if a != AGE_BIN and a not in manifest.columns]
    if missing or (AGE_BIN in attributes and "age_years" not in manifest.columns):
        bad = missing or ["age_years (needed by age_bin)"]
        raise ParameterError(
            "debiasing.group_by",
            f"attribute(s) {bad} not in the manifest; available columns: "
            f"{sorted(map(str, manifest.columns))} and '{AGE_BIN}'",
        )
    cols = {}
    for attr in attributes:
        if attr == AGE_BIN:
            cols[attr] = bin_ages(
                manifest["age_years"], age_edges, key="debiasing.age_bins"
            ).to_numpy()
        else:
            cols[attr] = manifest[attr].to_numpy()
    return pd.DataFrame(cols, index=manifest.index)


def group_keys(
    manifest: pd.DataFrame,
    attributes: Sequence[str],
    *,
    task: str | None = None,
    cross_label: bool = False,
    age_edges: Sequence[float] = DEFAULT_AGE_EDGES,
) -> pd.Series:
    """The group key of every row (NaN when a grouping value or the crossed label is missing).

    Args:
        manifest: The manifest.
        attributes: Grouping attributes (manifest columns or ``age_bin``).
        task: Label column, needed when ``cross_label``.
        cross_label: Append ``label=<0|1>`` to the key.
        age_edges: Lower edges of the age bins.

    Returns:
        Keys such as ``"sex=F|label=1"`` aligned with the manifest index.
    """
    values = grouping_columns(manifest, attributes, age_edges)
    if cross_label:
        if task is None or task not in manifest.columns:
            raise ParameterError(
                "debiasing.tasks",
                f"cross_label needs a label column; '{task}' is not in the manifest",
            )
        values[LABEL] = manifest[task].to_numpy()
    known = values.notna().all(axis=1)
    keys = pd.Series(np.nan, index=manifest.index, dtype=object)
    parts = [values[c].map(lambda v, c=c: f"{c}={_fmt(v)}") for c in values.columns]
    joined = parts[0].str.cat(parts[1:], sep="|") if len(parts) > 1 else parts[0]
    keys[known] = joined[known]
    return keys


def assign_groups(keys: pd.Series) -> tuple[pd.Series, dict[int, str]]:
    """Integer group ids from keys (sorted order), ``-1`` for missing keys.

    Returns:
        The ids aligned with ``keys`` and the ``{id: key}`` table.
    """
    names = sorted(keys.dropna().unique())
    lookup = {k: i for i, k in enumerate(names)}
    ids = keys.map(lookup).fillna(NO_GROUP).astype("int64")
    return ids, dict(enumerate(names))


def check_groups(
    manifest: pd.DataFrame,
    keys: pd.Series,
    task: str,
    *,
    split: str = "train",
    min_patients: int = 2,
) -> None:
    """Reject groups that cannot be resampled safely in ``split``.

    Raises:
        DataFormatError: a group has fewer than ``min_patients`` patients in the split, or
            every label of the group is missing there.
    """
    in_split = (manifest["split"] == split) & keys.notna()
    if not in_split.any():
        raise DataFormatError("manifest", f"no {split} row has a complete group key", where="split")
    sub = manifest.loc[in_split]
    sub_keys = keys[in_split]
    patients = sub.groupby(sub_keys)["patient_id"].nunique()
    few = patients[patients < min_patients]
    if len(few):
        key = few.index[0]
        pid = sub.loc[sub_keys == key, "patient_id"].iloc[0]
        raise DataFormatError(
            "manifest",
            f"group '{key}' has {int(few.iloc[0])} patient(s) ({pid!s}) in the {split} split; "
            f"resampling needs at least {min_patients} per group: merge groups, "
            "change 'group_by' or 'age_bins'",
            where=f"group {key}",
        )
    if task not in manifest.columns:
        raise ParameterError("debiasing.tasks", f"label column '{task}' is not in the manifest")
    labelled = sub[task].notna().groupby(sub_keys).any()
    unlabelled = labelled[~labelled]
    if len(unlabelled):
        raise DataFormatError(
            "manifest",
            f"every '{task}' label of group '{unlabelled.index[0]}' "
            f"is missing in the {split} split; "
            "the group cannot be balanced by label (drop it or choose another task)",
            where=f"column {task}",
        )


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
