"""The evaluation table: predictions joined with the manifest's labels and attributes."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

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
    spurious: str | None = None,
) -> pd.DataFrame:
    """One row per manifest image: ids, split, labels, ``p_<task>`` and grouping attributes.

    Args:
        manifest: The manifest (one row per image; duplicates from resampling are dropped).
        predictions: ``image_id, p_<task>...`` covering every manifest image.
        tasks: Label columns.
        attributes: Grouping attributes (manifest columns or ``age_bin``).
        age_edges: Lower edges of the age bins.
        name: Dataset name for error messages.
        spurious: The spurious-feature column of the robust AUROC (``robustness.spurious``),
            carried as floats 1 / 0 / NaN; None: none (``tube`` is carried whenever the
            manifest has it).

    Returns:
        ``image_id, patient_id, split, <task>, p_<task>, <attribute>..., tube, <spurious>``.

    Raises:
        ContractError: misaligned predictions or a missing ``p_<task>`` column.
        ParameterError: an attribute or the spurious column not in the manifest, or a
            spurious column holding values other than 1 / 0 / empty.
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
        out[a] = (
            bin_ages(m["age_years"], age_edges, key="robustness.age_bins").to_numpy()
            if a == AGE_BIN
            else m[a].to_numpy()
        )
    if "tube" in m.columns and "tube" not in out.columns:
        out["tube"] = m["tube"].to_numpy(dtype=float)
    if spurious is not None:
        out[spurious] = spurious_column(m, spurious)
    check_probabilities(out, tasks, name)
    return out


#: How many offending image ids a bad-prediction error lists.
N_EXAMPLES = 5


def check_probabilities(table: pd.DataFrame, tasks: Sequence[str], name: str) -> None:
    """Refuse ``p_<task>`` values that are NaN, infinite or outside [0, 1].

    The operating points and the calibration assume probabilities; a logit or a missing
    score would silently move thresholds and bins. Each offending column is named with the
    number of images and the first ``N_EXAMPLES`` image ids and values (in table order).

    Raises:
        ContractError: ``{name}: p_Effusion is NaN or infinite for 1 image(s), e.g.
            p11_1 (nan); ...``, one clause per column and kind.
    """
    problems = []
    for t in tasks:
        col = f"p_{t}"
        values = table[col].to_numpy(dtype=float)
        finite = np.isfinite(values)
        outside = finite & ((values < 0) | (values > 1))  # logits: thresholds assume [0, 1]
        for mask, what in ((~finite, "NaN or infinite"), (outside, "outside [0, 1]")):
            if mask.any():
                rows = np.flatnonzero(mask)
                examples = ", ".join(
                    f"{table['image_id'].iloc[i]} ({values[i]:g})" for i in rows[:N_EXAMPLES]
                )
                more = ", ..." if rows.size > N_EXAMPLES else ""
                problems.append(f"{col} is {what} for {rows.size} image(s), e.g. {examples}{more}")
    if problems:
        raise ContractError(
            f"{name}: " + "; ".join(problems) + "; expected probabilities in [0, 1] "
            "(a sigmoid's output), not logits or missing scores"
        )


def spurious_column(manifest: pd.DataFrame, spurious: str) -> np.ndarray:
    """The ``robustness.spurious`` column as floats 1 / 0 / NaN.

    Every manifest carries the source contract's attribute columns (``tube`` included, NaN
    where a dataset has no label), so a name that is not a column is a wrong name, not a
    dataset without the feature: refused rather than a robust AUROC silently left out.

    Raises:
        ParameterError: the column is not in the manifest, or holds other values.
    """
    key = "robustness.spurious"
    if not isinstance(spurious, str) or spurious not in manifest.columns:
        raise ParameterError(
            key,
            f"column {spurious!r} not in the manifest (the robust / reverse AUROC need a 1 / 0 "
            f"spurious-feature column); available: {sorted(map(str, manifest.columns))}; "
            "null skips the robust and reverse AUROC",
        )
    raw = manifest[spurious]
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna().to_numpy() & ~values.isin((0, 1)).to_numpy()
    if bad.any():
        examples = sorted({str(v) for v in raw[bad]})[:3]
        raise ParameterError(
            key,
            f"column '{spurious}' must hold 1 (has the spurious feature), 0 or empty; "
            f"{int(bad.sum())} row(s) do not, e.g. {examples}",
        )
    return values.to_numpy(dtype=float)


def grouping_columns(table: pd.DataFrame, attributes: Sequence[str]) -> list[str]:
    """The columns of an evaluation table that group rows: ``attributes`` and any other
    column than ids, split, labels and scores (``tube``, the spurious column)."""
    fixed = {"image_id", "patient_id", "split"}
    scores = {c for c in table.columns if str(c).startswith("p_")}
    labels = {str(c)[2:] for c in scores}
    extra = [c for c in table.columns if c not in fixed | scores | labels and c not in attributes]
    return [*attributes, *extra]


def _names(value: object, key: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ParameterError(key, f"must be a list of attribute names, got {value!r}")
    return [str(v) for v in value]


def check_attribute_parameters(
    attributes: Sequence[str],
    columns: Collection[str] | None = None,
    *,
    worst_group_attributes: Sequence[str] | None = None,
    fairness_attribute: str | None = None,
    reliability_attribute: str | None = None,
    ami_attributes: Sequence[str] | None = None,
) -> None:
    """Cross-check the attribute names of the ``robustness`` block.

    The summary's worst-group AUROC and FNR gap can only be read from attributes that were
    evaluated, so an entry outside ``robustness.attributes`` (a typo such as ``sites``)
    would silently pick another worst group or give a NaN gap; refused here instead.

    Args:
        attributes: ``robustness.attributes``.
        columns: The evaluation table's grouping columns (``grouping_columns``) for the
            reliability and AMI attributes; None: ``attributes``.
        worst_group_attributes: ``robustness.worst_group_attributes`` (None: not checked).
        fairness_attribute: ``robustness.fairness_attribute`` (None: not checked).
        reliability_attribute: ``robustness.reliability_attribute`` (None: one line for all).
        ami_attributes: ``robustness.ami_attributes`` (None: not checked).

    Raises:
        ParameterError: naming the key, the unknown name(s) and the valid ones.
    """
    attrs = _names(attributes, "robustness.attributes")
    present = list(columns) if columns is not None else attrs
    if worst_group_attributes is not None:
        worst = _names(worst_group_attributes, "robustness.worst_group_attributes")
        bad = [a for a in worst if a not in attrs]
        if bad or not worst:
            raise ParameterError(
                "robustness.worst_group_attributes",
                f"{bad or 'an empty list'}: must be a non-empty subset of robustness.attributes "
                f"{attrs} (the worst group is taken over their subgroup AUROCs)",
            )
    if fairness_attribute is not None and fairness_attribute not in attrs:
        raise ParameterError(
            "robustness.fairness_attribute",
            f"{fairness_attribute!r} is not one of robustness.attributes {attrs} "
            "(the FNR gap is computed for those only)",
        )
    if reliability_attribute is not None and reliability_attribute not in present:
        raise ParameterError(
            "robustness.reliability_attribute",
            f"{reliability_attribute!r} is not a column of the evaluation table; "
            f"available: {present}",
        )
    if ami_attributes is not None:
        bad = [a for a in _names(ami_attributes, "robustness.ami_attributes") if a not in present]
        if bad:
            raise ParameterError(
                "robustness.ami_attributes",
                f"{bad} not columns of the evaluation table; available: {present}",
            )


def split_rows(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split (fresh index).

    Raises:
        ContractError: the split is empty.
    """
    out = table[table["split"] == split].reset_index(drop=True)
    if out.empty:
        raise ContractError(f"evaluation table has no '{split}' rows")
    return out


# The robustness settings a model's summary row depends on (``summarise_model``): its
# tasks, groups, operating point and bootstrap. Calibration, reliability, hidden-strata and
# thumbnail settings feed other outputs only.
SUMMARY_SETTINGS: tuple[str, ...] = (
    "tasks",
    "attributes",
    "age_bins",
    "spurious",
    "min_per_class",
    "worst_group_attributes",
    "fairness_attribute",
    "operating_point",
    "operating_target",
    "n_boot",
    "ci_level",
    "max_dropped_share",
    "seed",
)
SETTINGS_COLUMN = "robustness_settings"


# The key of a summary's settings record that holds the source digests of the code that
# computed it (``summary_settings(..., code=...)``).
CODE_KEY = "_code"


def summary_settings(robustness: Mapping[str, Any], code: Mapping[str, str] | None = None) -> str:
    """The ``SUMMARY_SETTINGS`` of a ``robustness`` parameter block as sorted JSON.

    ``summarise_model`` writes it into each row (``SETTINGS_COLUMN``) so that a later run
    reusing the summary (the comparison) can tell whether it was computed under its own
    settings, and with ``code`` (``{module: source digest}`` of the modules that compute
    the summary) by its own code, under ``CODE_KEY``.
    """
    record: dict[str, Any] = {k: robustness.get(k) for k in SUMMARY_SETTINGS}
    if code is not None:
        record[CODE_KEY] = {str(k): str(v) for k, v in code.items()}
    return json.dumps(record, sort_keys=True)


def recorded_summary_code(recorded: str) -> dict[str, str] | None:
    """The ``{module: source digest}`` a settings record holds (None: written without it).

    Raises:
        ValueError: ``recorded`` is not the JSON ``summary_settings`` writes.
    """
    code = json.loads(recorded).get(CODE_KEY)
    return dict(code) if isinstance(code, Mapping) else None


def settings_differences(recorded: str, robustness: Mapping[str, Any]) -> dict[str, tuple]:
    """``{key: (recorded, this run's)}`` of the summary settings that differ.

    Raises:
        ValueError: ``recorded`` is not the JSON ``summary_settings`` writes.
    """
    old = json.loads(recorded)
    new = json.loads(summary_settings(robustness))
    return {k: (old.get(k), new[k]) for k in SUMMARY_SETTINGS if old.get(k) != new[k]}
