"""The study report: one self-contained HTML page from the stages' reporting tables and figures.

``build_study_report`` takes the tables (pandas) and figures (PNG bytes) the stages wrote
and returns the page (``cxr_spurious.report.html``). Its sections, in order, are
``SECTIONS``; the comparison and sweep sections are ``OPTIONAL``: when their tables do not
exist (those pipelines run on request) the section is left out and the page says so under
"Not in this report". Every section opens with one sentence on how to read it.

The optional tables come from runs on request, possibly long before this one: under each,
the page says when its file was written (``StudyReportInputs.written``), with a note when
that is before the study findings the page shows were written. A table cut at ``max_rows`` names
the file that holds all of it (``SOURCES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from cxr_spurious import __version__
from cxr_spurious.datasets.optional import WRITTEN_ATTR
from cxr_spurious.errors import ContractError
from cxr_spurious.report.html import (
    Section,
    figure_html,
    heading,
    paragraph,
    render_page,
    table_html,
    with_cis,
)

# (key, title) of every section, in page order.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("dataset", "The dataset"),
    ("findings", "Findings"),
    ("findings-figure", "Findings figure"),
    ("overlays", "Saliency overlays per model"),
    ("localization", "Localization against the simulated radiologist"),
    ("regression", "What makes a lesion hard to localize"),
    ("robustness", "Subgroups, fairness and calibration"),
    ("comparison", "Debiasing comparison"),
    ("sweep", "Shortcut sweep"),
)
OPTIONAL: frozenset[str] = frozenset({"comparison", "sweep"})
TITLES: dict[str, str] = dict(SECTIONS)

# Human benchmark tables of ``chexlocalize_reports`` (partition "<set>/<name>").
HUMAN_TABLES: dict[str, str] = {"iou_pct_decrease": "mIoU", "hitmiss_pct_decrease": "hit rate"}

READ: dict[str, str] = {
    "dataset": (
        "Example radiographs with their pathology outlines and chest tubes, then the number "
        "of images per split (patient-disjoint) by label and by subgroup."
    ),
    "findings": (
        "One column per model, one row per measure: each cell is the estimate with its {level} "
        "bootstrap CI (patients resampled); robust_auroc ranks pneumothorax without a tube "
        "against no pneumothorax with a tube (0.5 = chance, low = the tube shortcut), and "
        "cf_drop_no_tube is how much P(pneumothorax) falls when the tube is removed."
    ),
    "findings-figure": (
        "The headline measures per model with their CIs: bars whose intervals do not overlap "
        "differ beyond the bootstrap's uncertainty."
    ),
    "overlays": (
        "Each panel is a test radiograph with the model's saliency map blended over it (blue "
        "low, red high), the true lesion outlined in lime, the chest tube in dashed magenta "
        "and the map's Otsu segmentation in white: a map on the tube instead of the lesion "
        "is the shortcut."
    ),
    "localization": (
        "How well each saliency map localizes the lesion (mIoU of its segmentation, hit rate "
        "of its maximum, share of its mass on the lesion), then the percentage by which it "
        "falls below the simulated radiologist on the same images (positive = worse than the "
        "radiologist). An estimate shown without an interval was finite in too few patients "
        "for a CI (the ci_note column names the measures); a skipped_map_files column counts "
        "the files of a set's map folder whose names did not parse (their maps count as "
        "missing)."
    ),
    "regression": (
        "Each row is one localization outcome of a heatmap set regressed on one min-max-"
        "normalised geometric feature of the lesion, pooled over tasks, with its unadjusted "
        "95 % CI; a point is highlighted (red) only when Bonferroni-significant, p < 0.05/k "
        "over the k features, in a fit on at least regression.min_clusters CXRs (30 by "
        "default). iou_tp and hit are the saliency map's; the gap outcomes iou_gap and "
        "hit_gap are benchmark minus saliency, so a positive gap means the saliency map is "
        "worse than the benchmark and a positive coefficient that the gap widens as the "
        "feature grows."
    ),
    "robustness": (
        "Per model: overall, worst-subgroup and robust (tube-stratified) AUROC and the "
        "fairness gaps with CIs, then calibration error (ECE, 0 = calibrated) and the gaps "
        "between subgroups at the chosen operating point (0 = equal)."
    ),
    "comparison": (
        "One row per debiasing variant of the comparison pipeline: compare each variant's "
        "worst-group and robust AUROC (with CIs) with erm's, the model that learned the "
        "shortcut."
    ),
    "sweep": (
        "Per cell of the shortcut sweep (artefact x strength, across seeds) the measures with "
        "CIs, then whether saliency flags the models that rely on the artefact."
    ),
}

#: The file of each table the page shows (``conf/base`` catalog; a test checks), named under
#: a table cut at ``max_rows``. ``<model>``: one file per model; the human benchmark
#: tables are partitions of ``chexlocalize_reports`` (``<set>/``: one folder per heatmap set
#: when there are several).
SOURCES: dict[str, str] = {
    "dataset_report": "data/08_reporting/dataset_report.csv",
    "study_findings": "data/08_reporting/study_findings.csv",
    "localization_summary": "data/08_reporting/localization/localization_summary.csv",
    "chexlocalize_reports": "data/08_reporting/localization/chexlocalize",
    "robustness_summary": "data/08_reporting/robustness/robustness_summary.csv",
    "calibration": "data/08_reporting/robustness/<model>/calibration.csv",
    "fairness_gaps": "data/08_reporting/robustness/<model>/fairness_gaps.csv",
    "headline_table": "data/08_reporting/comparison/headline_table.csv",
    "sweep_summary": "data/08_reporting/sweep/sweep_summary.csv",
    "shortcut_detection": "data/08_reporting/sweep/shortcut_detection.csv",
}
#: The pipeline that writes each optional table (named in the note on an old one).
WRITTEN_BY: dict[str, str] = {
    "headline_table": "comparison",
    "sweep_summary": "sweep",
    "shortcut_detection": "sweep",
}

MISSING: dict[str, str] = {
    "comparison": (
        "Debiasing comparison: headline_table has not been written "
        "(kedro run --pipeline comparison, then kedro run --pipeline report)."
    ),
    "sweep": (
        "Shortcut sweep: sweep_summary / shortcut_detection have not been written "
        "(kedro run --pipeline sweep, then kedro run --pipeline report)."
    ),
}


@dataclass
class StudyReportInputs:
    """What the report shows: tables as DataFrames, figures as PNG bytes.

    Attributes:
        dataset_report: ``dataset_report`` (split, task, label, attribute, value, n_images).
        example_grid: PNG of ``example_grid``.
        study_findings: ``study_findings`` (one row per model).
        study_findings_figure: PNG of ``study_findings_figure``.
        overlays: PNG per heatmap set name (``localization_overlays``).
        localization_summary: ``localization_summary``.
        human_benchmark: ``{"<set>/<table>": table}`` of ``chexlocalize_reports`` (``<table>``
            alone when there is one set); the ``HUMAN_TABLES`` of each set are shown.
        regression_forest_plot: PNG of ``regression_forest_plot``.
        robustness_summary: ``robustness_summary``.
        calibration: ``<m>.calibration`` of every model, stacked with a ``model`` column.
        fairness_gaps: ``<m>.fairness_gaps`` of every model, stacked likewise.
        headline_table: ``headline_table`` or ``None`` when it does not exist.
        sweep_summary: ``sweep_summary`` or ``None``.
        shortcut_detection: ``shortcut_detection`` or ``None``.
        written: When the files of ``study_findings`` and of the optional tables
            (``headline_table``, ``sweep_summary``, ``shortcut_detection``) were last
            written (timezone-aware; ``None`` or absent: an optional table's own
            ``attrs["written_utc"]``, which ``OptionalDataset`` sets, else not known).
    """

    dataset_report: pd.DataFrame
    example_grid: bytes
    study_findings: pd.DataFrame
    study_findings_figure: bytes
    overlays: Mapping[str, bytes]
    localization_summary: pd.DataFrame
    human_benchmark: Mapping[str, pd.DataFrame]
    regression_forest_plot: bytes
    robustness_summary: pd.DataFrame
    calibration: pd.DataFrame
    fairness_gaps: pd.DataFrame
    headline_table: pd.DataFrame | None = None
    sweep_summary: pd.DataFrame | None = None
    shortcut_detection: pd.DataFrame | None = None
    written: Mapping[str, datetime | None] = field(default_factory=dict)


def stack_per_model(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One table of several models' tables, a ``model`` column first (models in given order)."""
    frames = [t.assign(model=name)[["model", *t.columns]] for name, t in tables.items()]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"model": []})


def _require(table: pd.DataFrame, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ContractError(
            f"report: table '{name}' lacks column(s) {missing}; has {list(table.columns)}"
        )


def _dataset(inputs: StudyReportInputs, max_rows: int) -> str:
    counts = inputs.dataset_report
    _require(counts, ["split", "task", "label", "attribute", "value", "n_images"], "dataset_report")
    splits = [s for s in ("train", "val", "test") if s in set(counts["split"])]
    splits += sorted(set(counts["split"]) - set(splits))
    overall = counts[counts["attribute"] == "all"]
    by_label = overall.pivot_table(
        index=["task", "label"], columns="split", values="n_images", aggfunc="sum", fill_value=0
    ).reindex(columns=splits, fill_value=0)
    pivot = f"{SOURCES['dataset_report']} (the counts this table pivots)"
    parts = [figure_html(inputs.example_grid, name="example_grid", caption="Example images.")]
    parts += [
        heading("Images per split, by label"),
        table_html(by_label.reset_index(), max_rows=max_rows, source=pivot),
    ]
    groups = counts[counts["attribute"] != "all"]
    if len(groups):
        task = str(groups["task"].iloc[0])
        per_group = (
            groups[groups["task"] == task]
            .pivot_table(
                index=["attribute", "value"],
                columns="split",
                values="n_images",
                aggfunc="sum",
                fill_value=0,
            )
            .reindex(columns=splits, fill_value=0)
        )
        parts += [
            heading(f"Images per split, by subgroup (all labels of {task})"),
            table_html(per_group.reset_index(), max_rows=max_rows, source=pivot),
        ]
    return "".join(parts)


def ci_level_text(findings: pd.DataFrame) -> str:
    """The level of the findings' CIs as the page says it ("95 %"), from their ``ci_level``.

    Findings written before the column existed were all at 95 %.

    Raises:
        ContractError: the rows record several levels.
    """
    if "ci_level" not in findings or findings["ci_level"].isna().all():
        return "95 %"
    levels = sorted({float(v) for v in findings["ci_level"].dropna()})
    if len(levels) != 1:
        raise ContractError(f"study_findings: rows at several CI levels {levels}; expected one")
    return f"{100 * levels[0]:g} %"


def _findings(inputs: StudyReportInputs, max_rows: int) -> str:
    findings = inputs.study_findings
    _require(findings, ["model"], "study_findings")
    wide = with_cis(findings).set_index("model").T.reset_index(names="measure")
    wide.columns = [str(c) for c in wide.columns]
    source = f"{SOURCES['study_findings']} (one row per model there)"
    return table_html(wide.astype(str).replace({"nan": ""}), max_rows=max_rows, source=source)


def _overlays(inputs: StudyReportInputs) -> str:
    if not inputs.overlays:
        return paragraph("No overlay figures were drawn (no heatmap sets).", "note")
    models = [str(m) for m in inputs.study_findings.get("model", [])]

    def order(name: str) -> tuple[int, str]:  # the findings' model order, then by name
        model = name.split(".", 1)[0]
        return (models.index(model) if model in models else len(models), name)

    return "".join(
        heading(name) + figure_html(inputs.overlays[name], name=f"localization_overlays/{name}")
        for name in sorted(inputs.overlays, key=order)
    )


#: Columns of ``localization_summary`` shown when a row needs them: why an estimate has no CI
#: (``ci_note``: finite in too few patients) and how many files of a set's map folder were
#: skipped because their names do not parse (``skipped_map_files``).
LOCALIZATION_NOTES: tuple[str, ...] = ("ci_note", "skipped_map_files")


def _has_note(column: pd.Series) -> bool:
    """Whether any row of a note column says something (a non-empty text, a non-zero count)."""
    values = column.dropna()
    if pd.api.types.is_numeric_dtype(values):
        return bool((values != 0).any())
    return bool(values.astype(str).str.strip().ne("").any())


def _localization(inputs: StudyReportInputs, max_rows: int) -> str:
    summary = inputs.localization_summary
    _require(summary, ["set", "task"], "localization_summary")
    keep = [
        c
        for c in ("set", "task", "n_cxr", "miou_tp", "hit_rate", "relevance_mass")
        if c in summary.columns
    ] + [c for c in LOCALIZATION_NOTES if c in summary.columns and _has_note(summary[c])]
    shown = with_cis(summary)[keep]
    if "skipped_map_files" in keep:  # a count: "0", not table_html's "0.00"
        shown = shown.assign(
            skipped_map_files=[
                "" if pd.isna(v) else str(int(v)) for v in shown["skipped_map_files"]
            ]
        )
    parts = [
        heading("Localization per heatmap set"),
        table_html(shown, max_rows=max_rows, source=SOURCES["localization_summary"]),
    ]
    rows = []
    sets = sorted({str(s) for s in summary["set"]})
    for key, table in sorted(inputs.human_benchmark.items()):
        set_name, _, kind = key.rpartition("/")
        if kind not in HUMAN_TABLES:
            continue
        # with one heatmap set the reports have no per-set subfolder
        set_name = set_name or (sets[0] if len(sets) == 1 else "all sets")
        _require(table, ["hb", "pred", "pct_diff", "pct_diff_lower", "pct_diff_upper"], key)
        task_col = "Index" if "Index" in table.columns else table.columns[0]
        for rec in table.to_dict("records"):
            rows.append(
                {
                    "set": set_name,
                    "measure": HUMAN_TABLES[kind],
                    "task": rec[task_col],
                    "radiologist": rec["hb"],
                    "model": rec["pred"],
                    "pct_below": rec["pct_diff"],
                    "pct_below_lo": rec["pct_diff_lower"],
                    "pct_below_hi": rec["pct_diff_upper"],
                }
            )
    if rows:
        parts += [
            heading("Against the simulated radiologist (% below the radiologist)"),
            table_html(
                with_cis(pd.DataFrame(rows), digits=1),
                digits=3,
                max_rows=max_rows,
                source=(
                    f"the files {', '.join(f'{t}.csv' for t in HUMAN_TABLES)} under "
                    f"{SOURCES['chexlocalize_reports']} (one folder per heatmap set when "
                    "there are several)"
                ),
            ),
        ]
    else:
        parts.append(paragraph("No human benchmark comparison was computed.", "note"))
    return "".join(parts)


def _robustness(inputs: StudyReportInputs, max_rows: int) -> str:
    parts = [
        heading("Robustness summary"),
        table_html(
            with_cis(inputs.robustness_summary),
            max_rows=max_rows,
            source=SOURCES["robustness_summary"],
        ),
    ]
    cal = inputs.calibration
    if len(cal):
        _require(cal, ["model", "attribute"], "calibration")
        parts += [
            heading("Calibration (all test images)"),
            table_html(
                with_cis(cal[cal["attribute"] == "all"]),
                max_rows=max_rows,
                source=f"{SOURCES['calibration']}, one file per model (every subgroup there)",
            ),
        ]
    if len(inputs.fairness_gaps):
        parts += [
            heading("Fairness gaps between subgroups"),
            table_html(
                with_cis(inputs.fairness_gaps),
                max_rows=max_rows,
                source=f"{SOURCES['fairness_gaps']}, one file per model",
            ),
        ]
    return "".join(parts)


def utc_stamp(when: datetime) -> str:
    """``YYYY-MM-DD HH:MM UTC`` (a naive time is taken as UTC)."""
    aware = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return aware.strftime("%Y-%m-%d %H:%M UTC")


def _written(name: str, table: pd.DataFrame, inputs: StudyReportInputs) -> str:
    """When the optional table ``name``'s file was written (``inputs.written``, else the
    table's ``attrs["written_utc"]``), with a note when that is before the study findings'
    file was."""
    when = inputs.written.get(name) or table.attrs.get(WRITTEN_ATTR)
    if when is None:
        return paragraph(f"{SOURCES[name]}: when it was written is not known.", "written")
    parts = [paragraph(f"{SOURCES[name]}: written {utc_stamp(when)}.", "written")]
    findings = inputs.written.get("study_findings")
    if findings is not None and _utc(when) < _utc(findings):
        parts.append(
            paragraph(
                f"Older than the study findings this report shows (written "
                f"{utc_stamp(findings)}): this table comes from an earlier run, whose data and "
                "parameters may differ from the rest of this report; kedro run --pipeline "
                f"{WRITTEN_BY[name]}, then kedro run --pipeline report, brings it up to date.",
                "note",
            )
        )
    return "".join(parts)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _optional_table(
    name: str, table: pd.DataFrame, inputs: StudyReportInputs, max_rows: int
) -> str:
    """An optional table: when it was written, then the table."""
    return _written(name, table, inputs) + table_html(
        with_cis(table), max_rows=max_rows, source=SOURCES[name]
    )


def _subtitle(findings: pd.DataFrame) -> str:
    models = ", ".join(str(m) for m in findings["model"]) if "model" in findings else ""
    tasks = sorted({str(t) for t in findings["task"]}) if "task" in findings else []
    bits = [f"models: {models}" if models else "", f"task: {', '.join(tasks)}" if tasks else ""]
    return " · ".join([b for b in bits if b] + [f"cxr-spurious {__version__}"])


def build_study_report(
    inputs: StudyReportInputs,
    *,
    title: str = "Spurious correlations in chest X-ray models",
    max_rows: int = 60,
) -> str:
    """The study report as one self-contained HTML page.

    Args:
        inputs: The stages' tables and figures.
        title: Page title.
        max_rows: Longest table shown (longer ones are cut with a note).

    Returns:
        The HTML page.

    Raises:
        ContractError: a table lacks a column the report needs, or a figure is not PNG
            data (both name the dataset).
    """
    bodies: dict[str, str] = {
        "dataset": _dataset(inputs, max_rows),
        "findings": _findings(inputs, max_rows),
        "findings-figure": figure_html(inputs.study_findings_figure, name="study_findings_figure"),
        "overlays": _overlays(inputs),
        "localization": _localization(inputs, max_rows),
        "regression": figure_html(inputs.regression_forest_plot, name="regression_forest_plot"),
        "robustness": _robustness(inputs, max_rows),
    }
    if inputs.headline_table is not None:
        bodies["comparison"] = _optional_table(
            "headline_table", inputs.headline_table, inputs, max_rows
        )
    sweep = []
    if inputs.sweep_summary is not None:
        sweep += [
            heading("Sweep summary"),
            _optional_table("sweep_summary", inputs.sweep_summary, inputs, max_rows),
        ]
    if inputs.shortcut_detection is not None:
        sweep += [
            heading("Shortcut detection by saliency"),
            _optional_table("shortcut_detection", inputs.shortcut_detection, inputs, max_rows),
        ]
    if sweep:
        bodies["sweep"] = "".join(sweep)
    read = {**READ, "findings": READ["findings"].format(level=ci_level_text(inputs.study_findings))}
    sections = [Section(k, t, read[k], bodies[k]) for k, t in SECTIONS if k in bodies]
    notes = [MISSING[k] for k, _ in SECTIONS if k not in bodies]
    return render_page(title, _subtitle(inputs.study_findings), sections, notes)
