"""The sweep's findings as Markdown tables (``sweep_tables``, ``sweep_tables.md``).

What a README or a paper draft quotes, written from the sweep's own tables so that every
number can be traced to a CSV of the same run:

* ``by_supervision``: one metric of ``sweep_summary`` per artefact x strength (rows, weakest
  confounding first), one column per supervision: mean over seeds [t interval across seeds];
* ``paired_table``: ``sweep_paired_differences`` for one metric, one column per pair (same
  data and seed): mean difference [paired t interval], p-value;
* ``reliance_onset``: per artefact, the weakest confounding strength at which a supervision's
  mean reliance over seeds reaches a threshold *and* its across-seed interval excludes 0;
* ``detection_table`` / ``detection_by_artefact``: ``shortcut_detection`` per saliency method
  (over all artefacts, and per artefact);
* ``cell_column``: one cell's metrics, e.g. next to the single-run study table.

``render_sweep_tables`` puts them into one Markdown document. Formatting of an estimate with
its interval is ``cxr_spurious.report.html.with_cis``'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, check_number
from cxr_spurious.report.html import p_text, with_cis
from cxr_spurious.sweep.detection import ALL_ARTEFACTS
from cxr_spurious.sweep.figures import percent, series_labels
from cxr_spurious.sweep.grid import CELL_COLUMNS

#: Display names of the sweep's saliency methods (others are shown as they are).
METHOD_NAMES: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "integrated_gradients": "integrated gradients",
    "occlusion": "occlusion",
    "smoothgrad": "SmoothGrad",
    "seg_prob": "the model's own probability map",
}
#: Display names of the artefact kinds.
ARTEFACT_NAMES: dict[str, str] = {
    "tube_random": "tube, random side",
    "tube_lesion": "tube crossing the lesion",
    "marker_port": '"PORT" marker',
    "faint_texture": "faint texture",
    ALL_ARTEFACTS: "all artefacts",
}
#: Metrics of the default tables: (column, what it is).
DEFAULT_METRICS: tuple[tuple[str, str], ...] = (
    ("robust_auroc", "robust AUROC (PTX without the artefact vs no PTX with it)"),
    ("artefact_reliance", "reliance: drop in P(PTX) when the artefact is removed"),
    ("lesion_reliance", "drop in P(PTX) when the lesion is removed (PTX images)"),
)
#: Metrics of one cell put next to the single-run study table (``cell_column``).
STUDY_METRICS: tuple[str, ...] = (
    "auroc",
    "robust_auroc",
    "artefact_reliance",
    "lesion_reliance",
    "gradcam_miou",
    "gradcam_hit_rate",
    "gradcam_artefact_mass",
    "gradcam_artefact_auroc",
    "seg_prob_miou",
    "seg_prob_artefact_mass",
    "seg_prob_artefact_auroc",
)
MISSING = "n/a"
#: ``reliance_onset`` where the mean reaches the threshold but there is no across-seed interval.
UNDETERMINED = "undetermined"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``frame`` (index dropped; ``|`` in cells escaped)."""

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return MISSING
        return str(value).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *body])


def strength_label(name: str, p_given_ptx: float, p_given_no_ptx: float) -> str:
    """``medium (0.7 / 0.3)``: the strength's name with P(artefact | PTX) / P(a | no PTX)."""
    return f"{name} ({p_given_ptx:g} / {p_given_no_ptx:g})"


def _require(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ContractError(f"{name}: missing column(s) {missing}; has {list(table.columns)}")


def level_text(level: float) -> str:
    """A confidence level as the tables write it: ``0.95`` -> ``95 %``, ``0.8`` -> ``80 %``."""
    return percent(level).replace("%", " %")


def _with_labels(summary: pd.DataFrame) -> pd.DataFrame:
    out = summary.copy()
    out["confounding"] = out["p_given_ptx"] - out["p_given_no_ptx"]
    out["artefact_name"] = [ARTEFACT_NAMES.get(a, a) for a in out["artefact"]]
    out["strength_name"] = [
        strength_label(s, a, b)
        for s, a, b in zip(out["strength"], out["p_given_ptx"], out["p_given_no_ptx"])
    ]
    labels = series_labels(out)
    out["series"] = [
        labels[(str(s), float(f))] for s, f in zip(out["supervision"], out["location_fraction"])
    ]
    return out


def _series_key(supervision: Any, location_fraction: Any) -> tuple[str, float]:
    """A series' key: (supervision, location fraction), whatever the column dtypes."""
    return str(supervision), float(location_fraction)


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(values))
    return [v for v in order if v in seen] + [v for v in seen if v not in order]


def _series_order(table: pd.DataFrame) -> list[tuple[str, float, str]]:
    """``(supervision, location_fraction, label)`` of every series of a ``_with_labels``
    table: erm, box, seg (others after), the larger location fraction first."""
    ranks = {"erm": 0, "box": 1, "seg": 2}
    keys = table[["series", "supervision", "location_fraction"]].drop_duplicates()
    keys = keys.assign(
        rank=[ranks.get(s, 3) for s in keys["supervision"]], neg=-keys["location_fraction"]
    ).sort_values(["rank", "neg", "series"])
    return [
        (*_series_key(s, f), str(label))
        for s, f, label in zip(keys["supervision"], keys["location_fraction"], keys["series"])
    ]


def by_supervision(summary: pd.DataFrame, metric: str, *, digits: int = 2) -> pd.DataFrame:
    """``metric`` per artefact x strength (rows) and supervision (columns), ``m [lo, hi]``."""
    _require(
        summary,
        [*CELL_COLUMNS, metric, f"{metric}_lo", f"{metric}_hi"],
        "sweep_summary",
    )
    table = _with_labels(summary)
    table[metric] = with_cis(table[[metric, f"{metric}_lo", f"{metric}_hi"]], digits, fixed=True)[
        metric
    ]
    series = _series_order(table)
    rows = []
    for (artefact, _confounding, strength), group in table.sort_values(
        ["artefact", "confounding"]
    ).groupby(["artefact_name", "confounding", "strength_name"], sort=False):
        row = {"artefact": artefact, "strength (P(a | PTX) / P(a | no PTX))": strength}
        values = {
            _series_key(s, f): v
            for s, f, v in zip(group["supervision"], group["location_fraction"], group[metric])
        }
        row.update({f"`{label}`": values.get((s, f), MISSING) or MISSING for s, f, label in series})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_table(paired: pd.DataFrame, metric: str, *, digits: int = 2) -> pd.DataFrame:
    """``metric``'s paired differences per artefact x strength (rows) and pair (columns):
    ``d [lo, hi], p = ... (adj. ...)`` (paired t interval and test across seeds, and the
    p-value adjusted for multiplicity, ``<metric>_p_adj``, where the table has it), with
    ``(n = k of m pairs)`` where the metric is defined for fewer pairs (``<metric>_n``) than
    were matched (``n_pairs``).

    Raises:
        ContractError: a column is missing, or two location fractions of a pair share a
            column label.
    """
    _require(
        paired,
        [
            "pair",
            "artefact",
            "strength",
            "p_given_ptx",
            "p_given_no_ptx",
            "location_fraction",
            metric,
            f"{metric}_lo",
            f"{metric}_hi",
            f"{metric}_p",
        ],
        "sweep_paired_differences",
    )
    table = paired.copy()
    table["confounding"] = table["p_given_ptx"] - table["p_given_no_ptx"]
    table["pair_name"] = [
        p if f >= 1 else f"{p} ({percent(f)} location labels)"
        for p, f in zip(table["pair"], table["location_fraction"])
    ]
    text = with_cis(table[[metric, f"{metric}_lo", f"{metric}_hi"]], digits, fixed=True)[metric]
    adjusted = (
        table[f"{metric}_p_adj"]
        if f"{metric}_p_adj" in table.columns
        else pd.Series(np.nan, index=table.index)  # a table written before _p_adj existed
    )
    table["value"] = [
        t if not t else f"{t}, p {_p(p)}{'' if np.isnan(q) else f' (adj. {_p(q)})'}{n}"
        for t, p, q, n in zip(
            text, table[f"{metric}_p"], adjusted.astype(float), _defined_pairs(table, metric)
        )
    ]
    order = table[["pair", "location_fraction", "pair_name"]].drop_duplicates()
    shared = order[order.duplicated("pair_name", keep=False)]
    if not shared.empty:
        clash = shared[["pair", "location_fraction"]].values.tolist()
        raise ContractError(
            f"sweep_paired_differences: pairs {clash} share the column "
            f"'{shared['pair_name'].iloc[0]}'; use location fractions that differ in the first "
            "6 significant digits"
        )
    order = order.assign(neg=-order["location_fraction"]).sort_values(
        ["pair", "neg"], kind="stable"
    )
    first = {p: i for i, p in enumerate(dict.fromkeys(table["pair"]))}
    order = order.assign(rank=order["pair"].map(first)).sort_values(["rank", "neg"], kind="stable")
    pairs = list(zip(order["pair"], order["location_fraction"], order["pair_name"]))
    rows = []
    for (artefact, _, strength, a, b), group in table.sort_values(
        ["artefact", "confounding"]
    ).groupby(["artefact", "confounding", "strength", "p_given_ptx", "p_given_no_ptx"], sort=False):
        row = {
            "artefact": ARTEFACT_NAMES.get(artefact, artefact),
            "strength": strength_label(strength, a, b),
        }
        values = dict(zip(zip(group["pair"], group["location_fraction"]), group["value"]))
        row.update({f"`{name}`": values.get((p, f), MISSING) or MISSING for p, f, name in pairs})
        rows.append(row)
    return pd.DataFrame(rows)


def _defined_pairs(table: pd.DataFrame, metric: str) -> list[str]:
    """`` (n = k of m pairs)`` where ``<metric>_n`` < ``n_pairs``, else ``""`` (and ``""``
    for every row of a table written before ``<metric>_n`` existed)."""
    if f"{metric}_n" not in table or "n_pairs" not in table:
        return [""] * len(table)
    return [
        f" (n = {int(k)} of {int(m)} pairs)" if np.isfinite(k) and k < m else ""
        for k, m in zip(table[f"{metric}_n"].astype(float), table["n_pairs"].astype(float))
    ]


def _p(p: float) -> str:
    return p_text(p) if np.isfinite(p) else MISSING


def reliance_onset(
    summary: pd.DataFrame,
    *,
    supervision: str = "erm",
    location_fraction: float | None = None,
    metric: str = "artefact_reliance",
    threshold: float = 0.05,
    digits: int = 2,
) -> pd.DataFrame:
    """Per artefact, the weakest strength at which ``supervision`` relies on it.

    "Relies" = the mean of ``metric`` over seeds is at least ``threshold`` and the interval
    across seeds lies above 0. One row per artefact: the strength (or ``none of the grid's
    strengths``) and the metric at each strength of the grid, weakest first. Where the mean
    reaches ``threshold`` but there is no across-seed interval (one seed, or the metric
    defined for one seed only), whether the model relies on the artefact is not known: the
    onset reads ``undetermined (one seed: no across-seed interval)``, naming the strength,
    rather than counting that strength as not relied on.

    Raises:
        ParameterError: ``threshold`` is not a finite number (a NaN threshold is never
            reached, so every onset would read ``none of the grid's strengths``).
        ContractError: a column is missing, no cell has ``supervision``, or it has several
            location fractions and ``location_fraction`` does not pick one.
    """
    threshold = check_number(threshold, "threshold")
    _require(
        summary,
        ["artefact", "supervision", "location_fraction", metric, f"{metric}_lo"],
        "sweep_summary",
    )
    table = _with_labels(summary)
    pick = table["supervision"] == supervision
    if location_fraction is not None:
        pick &= np.isclose(table["location_fraction"], location_fraction)
    table = table[pick].sort_values(["artefact", "confounding"])
    if table.empty:
        raise ContractError(f"sweep_summary: no cell of supervision '{supervision}'")
    fractions = sorted(table["location_fraction"].unique())
    if len(fractions) > 1:
        raise ContractError(
            f"sweep_summary: supervision '{supervision}' has location fractions {fractions}; "
            "pass location_fraction to pick one (an onset per series)"
        )
    text = with_cis(table[[metric, f"{metric}_lo", f"{metric}_hi"]], digits, fixed=True)[metric]
    table = table.assign(text=list(text))
    rows = []
    for artefact, group in table.groupby("artefact_name", sort=False):
        rows.append(
            {
                "artefact": artefact,
                f"`{supervision}` relies from": _onset(group, metric, threshold),
                **dict(zip(group["strength_name"], group["text"])),
            }
        )
    return pd.DataFrame(rows)


def _onset(group: pd.DataFrame, metric: str, threshold: float) -> str:
    """The onset text of one artefact's strengths (weakest first), see ``reliance_onset``."""
    reaches = group[metric] >= threshold
    lower = group[f"{metric}_lo"].astype(float)
    relies = reaches & (lower > 0)
    unknown = reaches & lower.isna()
    first = group.loc[relies | unknown]
    if first.empty:
        return "none of the grid's strengths"
    if relies.loc[first.index[0]]:
        return str(first["strength_name"].iloc[0])
    seeds = first["n_seeds"].iloc[0] if "n_seeds" in first else 1
    why = (
        "one seed: no across-seed interval"
        if not np.isfinite(seeds) or seeds <= 1
        else f"no across-seed interval: `{metric}` defined for one seed only"
    )
    text = f"{UNDETERMINED} ({why}) from {first['strength_name'].iloc[0]}"
    later = group.loc[relies, "strength_name"]
    return f"{text}; relies from {later.iloc[0]}" if len(later) else text


def detection_table(
    detection: pd.DataFrame, artefact: str = ALL_ARTEFACTS, *, digits: int = 2
) -> pd.DataFrame:
    """One row per saliency method: detection AUROC [CI], Spearman [CI], false flags
    ``k/n = rate [lo, hi]``, for one artefact (default: all artefacts together)."""
    _require(
        detection,
        [
            "method",
            "artefact",
            "detection_auroc",
            "spearman",
            "false_flag_rate",
            "n_flagged",
            "n_unconfounded",
            "n_models",
            "n_reliant",
        ],
        "shortcut_detection",
    )
    rows = detection[detection["artefact"] == artefact]
    if rows.empty:
        raise ContractError(f"shortcut_detection: no row for artefact '{artefact}'")
    text = with_cis(rows, digits, fixed=True)
    out = pd.DataFrame(
        {
            "method": [METHOD_NAMES.get(m, m) for m in rows["method"]],
            "models (reliant)": [
                f"{int(n)} ({int(r)})" for n, r in zip(rows["n_models"], rows["n_reliant"])
            ],
            "detection AUROC": list(text["detection_auroc"]),
            "Spearman with reliance": list(text["spearman"]),
            "false flags (unconfounded models)": [
                f"{int(k)}/{int(n)} = {t}" if n else MISSING
                for k, n, t in zip(
                    rows["n_flagged"], rows["n_unconfounded"], text["false_flag_rate"]
                )
            ],
        }
    )
    return out.replace("", MISSING)


def detection_by_artefact(detection: pd.DataFrame, *, digits: int = 2) -> pd.DataFrame:
    """Detection AUROC [CI] per saliency method (rows) and artefact (columns); an undefined
    AUROC says why (e.g. no model of that artefact relies on it)."""
    _require(detection, ["method", "artefact", "detection_auroc"], "shortcut_detection")
    text = with_cis(detection, digits, fixed=True)
    notes = detection["note"].fillna("") if "note" in detection else pd.Series("", detection.index)
    cells = {}
    for m, a, t, note in zip(
        detection["method"], detection["artefact"], text["detection_auroc"], notes
    ):
        if not t:
            reason = next(
                (
                    part.split(": ", 1)[1]
                    for part in str(note).split("; ")
                    if part.startswith("detection_auroc: ")
                ),
                "",
            )
            if reason.startswith("undefined (") and reason.endswith(")"):
                reason = reason[len("undefined (") : -1]
            t = f"{MISSING} ({reason})" if reason else MISSING
        cells[(m, a)] = t
    methods = list(dict.fromkeys(detection["method"]))
    artefacts = [a for a in dict.fromkeys(detection["artefact"]) if a != ALL_ARTEFACTS]
    artefacts += [ALL_ARTEFACTS] if ALL_ARTEFACTS in set(detection["artefact"]) else []
    return pd.DataFrame(
        [
            {
                "method": METHOD_NAMES.get(m, m),
                **{ARTEFACT_NAMES.get(a, a): cells.get((m, a), MISSING) for a in artefacts},
            }
            for m in methods
        ]
    )


def cell_column(
    summary: pd.DataFrame,
    *,
    artefact: str,
    strength: str,
    metrics: Sequence[str],
    digits: int = 2,
) -> pd.DataFrame:
    """One cell's metrics (rows) per supervision (columns), ``mean [lo, hi]`` across seeds,
    with the number of seeds behind each column."""
    table = _with_labels(summary)
    table = table[(table["artefact"] == artefact) & (table["strength"] == strength)]
    if table.empty:
        raise ContractError(f"sweep_summary: no cell {artefact} / {strength}")
    _require(table, [f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi")], "sweep_summary")
    text = with_cis(table, digits, fixed=True)
    series = _series_order(table)
    keys = [_series_key(s, f) for s, f in zip(table["supervision"], table["location_fraction"])]
    by_series = {k: r for k, (_, r) in zip(keys, text.iterrows())}
    seeds = dict(zip(keys, table.get("n_seeds", pd.Series(np.nan, table.index))))
    rows = [
        {"metric": m, **{f"`{label}`": by_series[(s, f)][m] or MISSING for s, f, label in series}}
        for m in metrics
    ]
    rows.append(
        {"metric": "seeds", **{f"`{label}`": f"{seeds[(s, f)]:g}" for s, f, label in series}}
    )
    return pd.DataFrame(rows)


def render_sweep_tables(
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    detection: pd.DataFrame,
    *,
    metrics: Sequence[tuple[str, str]] = DEFAULT_METRICS,
    onset_threshold: float = 0.05,
    study_cell: tuple[str, str] | None = None,
    level: float = 0.95,
    detection_level: float = 0.95,
) -> str:
    """The sweep's findings as one Markdown document (``sweep_tables.md``); ``study_cell``
    (artefact, strength) adds that cell's ``STUDY_METRICS`` per supervision, when the sweep
    has it. ``level`` is the confidence level of ``summary``'s and ``paired``'s across-seed
    intervals (``sweep.summary.ci_level``), ``detection_level`` that of ``detection``'s
    bootstrap and Wilson intervals (``sweep.detection.ci_level``); the text names both.

    Raises:
        ParameterError: ``onset_threshold`` is not a finite number.
    """
    onset_threshold = check_number(onset_threshold, "onset_threshold")
    seeds = sorted({int(n) for n in summary.get("n_seeds", pd.Series([], dtype=float)).dropna()})
    cells = summary[["artefact", "strength", "supervision", "location_fraction"]]
    parts = [
        "# Shortcut sweep: findings",
        "",
        f"{len(cells.drop_duplicates())} cells, {', '.join(map(str, seeds)) or MISSING} "
        "seed(s) each. Cells: mean over seeds "
        f"[{level_text(level)} t interval across seeds: each seed retrains on re-drawn "
        "artefact carriers; the test images are fixed, their carriers re-drawn too unless "
        "`sweep.test_seed` is set; cut to the metric's range, e.g. [0, 1] for an AUROC]. "
        "Paired differences: same data and seed, paired "
        f"{level_text(level)} t interval and p-value. Detection: "
        f"{level_text(detection_level)} bootstrap CI over models; false flags: "
        f"{level_text(detection_level)} Wilson interval.",
    ]
    if "p_adj_note" in paired.columns and not paired.empty:
        note = str(paired["p_adj_note"].iloc[0]).removeprefix("p_adj: ")
        parts[-1] = parts[-1].replace(
            "t interval and p-value.",
            f"t interval and p-value; adj.: {note}.",
        )
    for metric, title in metrics:
        if metric not in summary.columns:
            continue
        parts += [
            "",
            f"## {title} (`{metric}`)",
            "",
            markdown_table(by_supervision(summary, metric)),
        ]
    if "artefact_reliance" in summary.columns:
        for supervision, fraction, label in _series_order(_with_labels(summary)):
            sub = summary[
                (summary["supervision"].astype(str) == supervision)
                & (summary["location_fraction"].astype(float) == fraction)
            ]
            onset = reliance_onset(
                sub,
                supervision=supervision,
                location_fraction=fraction,
                threshold=onset_threshold,
            )
            parts += [
                "",
                f"## Where `{label}` starts to rely on the artefact",
                "",
                f"Weakest strength with mean reliance >= {onset_threshold:g} and its "
                f"{level_text(level)} interval across seeds above 0; reliance at each strength.",
                "",
                markdown_table(onset.rename(columns={onset.columns[1]: "relies from"})),
            ]
    if not paired.empty:
        for metric, title in metrics:
            if f"{metric}_p" not in paired.columns:
                continue
            parts += [
                "",
                f"## Paired differences: {title} (`{metric}`)",
                "",
                markdown_table(paired_table(paired, metric)),
            ]
    if study_cell is not None:
        artefact, strength = study_cell
        here = (summary["artefact"] == artefact) & (summary["strength"] == strength)
        if here.any():
            present = [m for m in STUDY_METRICS if f"{m}_lo" in summary.columns]
            parts += [
                "",
                f"## The study's setting: {ARTEFACT_NAMES.get(artefact, artefact)}, {strength}",
                "",
                "The cell matching the default study's phantom setting, per supervision "
                "(mean over seeds [t interval across seeds]).",
                "",
                markdown_table(
                    cell_column(summary, artefact=artefact, strength=strength, metrics=present)
                ),
            ]
    if not detection.empty:
        first = detection.iloc[0]
        rule = (
            str(first["rule"]).replace(f"{first['method']} ", "the method's ")
            if "rule" in detection
            else ""
        )
        parts += [
            "",
            "## Does saliency reveal the reliance? (all artefacts)",
            "",
            rule,
            "",
            markdown_table(detection_table(detection)),
            "",
            "## Detection AUROC per artefact",
            "",
            markdown_table(detection_by_artefact(detection)),
        ]
    return "\n".join(parts) + "\n"
