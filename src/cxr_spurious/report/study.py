"""The study report: one self-contained HTML page from the stages' reporting tables and figures.

``build_study_report`` takes the tables (pandas) and figures (PNG bytes) the stages wrote
and returns the page (``cxr_spurious.report.html``). Its sections, in order, are
``SECTIONS``; the comparison and sweep sections are ``OPTIONAL``: when their tables do not
exist (those pipelines run on request) the section is left out and the page says so under
"Not in this report". Every section opens with one sentence on how to read it. The
comparison section shows those of its tables that exist (``COMPARISON_TABLES``): the study's
training seed, the comparison over training seeds, and each variant minus erm paired over
seeds (one cell per metric, ``paired_cell``), each with its ``ci_note``.

The optional tables come from runs on request, possibly long before this one: under each,
the page says when its file was written (``StudyReportInputs.written``), with a note when
that is before the study findings the page shows were written. A table cut at ``max_rows`` names
the file that holds all of it (``SOURCES``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from cxr_spurious import __version__
from cxr_spurious.datasets.optional import WRITTEN_ATTR
from cxr_spurious.errors import ContractError
from cxr_spurious.io.png_text import read_png_text
from cxr_spurious.report.html import (
    Section,
    figure_html,
    heading,
    p_text,
    paragraph,
    render_page,
    table_html,
    with_cis,
)
from cxr_spurious.training.provenance import (
    MODEL_DIGEST_COLUMN,
    MODEL_FINGERPRINT_KEY,
    RERUN_AFTER_RETRAINING,
)

logger = logging.getLogger(__name__)

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
        "over the k features the study tests (a feature with one value counts but is not "
        "drawn), in a fit on at least regression.min_clusters CXRs (30 by "
        "default). iou_tp and hit are the saliency map's; the gap outcomes iou_gap and "
        "hit_gap are benchmark minus saliency, so a positive gap means the saliency map is "
        "worse than the benchmark and a positive coefficient that the gap widens as the "
        "feature grows."
    ),
    "robustness": (
        "Per model: overall, worst-subgroup and robust (tube-stratified) AUROC and the "
        "fairness gaps with CIs, then calibration error (ECE, 0 = calibrated) and the gaps "
        "between subgroups at the chosen operating point (0 = equal). A gap is the largest "
        "minus the smallest group's rate, so its interval lies above 0 even when the groups "
        "do not differ: p_no_gap (a permutation test over patients) says whether there is one, "
        "p_no_gap_adj the same adjusted for the attributes tested (robustness.multiplicity)."
    ),
    "comparison": (
        "One row per debiasing variant of the comparison pipeline, to compare with erm, the "
        "model that learned the shortcut: the first table is the study's training seed "
        "(training.seed, 0 by default), whose CIs show test sampling only; the tables over "
        "training seeds show how the results move when every model is retrained; trust a "
        "paired difference from erm whose adjusted p (adj.) is small, not the uncorrected p."
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
    "headline_table_seeds": "data/08_reporting/comparison/headline_table_seeds.csv",
    "headline_paired_differences": "data/08_reporting/comparison/headline_paired_differences.csv",
    "sweep_summary": "data/08_reporting/sweep/sweep_summary.csv",
    "shortcut_detection": "data/08_reporting/sweep/shortcut_detection.csv",
}
#: The pipeline that writes each optional table (named in the note on an old one).
WRITTEN_BY: dict[str, str] = {
    "headline_table": "comparison",
    "headline_table_seeds": "comparison",
    "headline_paired_differences": "comparison",
    "sweep_summary": "sweep",
    "shortcut_detection": "sweep",
}

MISSING: dict[str, str] = {
    "comparison": (
        "Debiasing comparison: headline_table, headline_table_seeds and "
        "headline_paired_differences have not been written "
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
        headline_table_seeds: ``headline_table_seeds`` (the comparison over training
            seeds) or ``None``.
        headline_paired_differences: ``headline_paired_differences`` (each variant minus
            erm, paired over seeds) or ``None``.
        sweep_summary: ``sweep_summary`` or ``None``.
        shortcut_detection: ``shortcut_detection`` or ``None``.
        model_digests: Each study model's ``model_digest`` as its ``test_metrics`` reads
            now; a findings or robustness summary row with another one describes an
            earlier training of that model and gets a note (rows and models without a
            digest are not checked).
        model_fingerprints: Each study model's ``model_fingerprint`` as its
            ``test_metrics`` reads now; a localization row of a set computed from another
            training of its model gets a note.
        written: When the files of ``study_findings`` and of the optional tables
            (``headline_table``, ``headline_table_seeds``, ``headline_paired_differences``,
            ``sweep_summary``, ``shortcut_detection``) were last
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
    headline_table_seeds: pd.DataFrame | None = None
    headline_paired_differences: pd.DataFrame | None = None
    sweep_summary: pd.DataFrame | None = None
    shortcut_detection: pd.DataFrame | None = None
    written: Mapping[str, datetime | None] = field(default_factory=dict)
    model_digests: Mapping[str, str | None] = field(default_factory=dict)
    model_fingerprints: Mapping[str, str | None] = field(default_factory=dict)


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


#: Findings columns that count (maps, bootstrap replicates, test images): printed whole.
COUNT_COLUMN = re.compile(r"(^n_|_n$|_n_maps$|_n_nonzero$|_n_boot$)")


def _findings(inputs: StudyReportInputs, max_rows: int) -> str:
    findings = inputs.study_findings.copy()
    _require(findings, ["model"], "study_findings")
    # counts as whole numbers (transposed, a model's column mixes them with metrics, and
    # 223 would print as "223.0"); metrics with fixed decimals ("1.00 [1.00, 1.00]", not "1")
    for col in [c for c in findings.columns if COUNT_COLUMN.search(str(c))]:
        values = pd.to_numeric(findings[col], errors="coerce")
        findings[col] = ["" if pd.isna(v) else str(int(round(v))) for v in values]
    wide = with_cis(findings, fixed=True).set_index("model").T.reset_index(names="measure")
    wide.columns = [str(c) for c in wide.columns]
    source = f"{SOURCES['study_findings']} (one row per model there)"
    table = table_html(wide.astype(str).replace({"nan": ""}), max_rows=max_rows, source=source)
    note = _retrained_note(
        inputs.study_findings,
        inputs.model_digests,
        "the findings",
        # every stage after training: its saliency and localization outputs, which the
        # findings also read, were computed from the earlier model too (``--pipeline study``
        # alone would mix the new model's AUROCs with the old model's saliency)
        RERUN_AFTER_RETRAINING,
    )
    return note + table


def retrained_models(
    table: pd.DataFrame, current: Mapping[str, str | None], column: str = MODEL_DIGEST_COLUMN
) -> dict[str, tuple[str, str]]:
    """Models whose rows in ``table`` (``study_findings``, ``robustness_summary``: a
    ``model`` and a ``model_digest`` column) describe another training than the one on disk
    now: ``{model: (row's model_digest, current one)}`` (rows or models without a digest
    are not compared); ``column`` = ``model_fingerprint`` compares the model artifacts of
    the localization rows likewise."""
    if column not in table or "model" not in table:
        return {}
    out = {}
    for model, recorded in zip(table["model"], table[column]):
        now = current.get(str(model))
        if isinstance(recorded, str) and recorded and now and recorded != now:
            out[str(model)] = (recorded, now)
    return out


def _retrained_note(
    table: pd.DataFrame,
    current: Mapping[str, str | None],
    what: str,
    rerun: str,
    column: str = MODEL_DIGEST_COLUMN,
) -> str:
    """A "Stale rows" note (and a console warning) when rows of ``table`` describe an
    earlier training of their model; ``what`` names the rows, ``rerun`` the command."""
    stale = retrained_models(table, current, column)
    if not stale:
        return ""
    # digests are 16 characters, fingerprints 64: 16 tell them apart on the page
    which = "; ".join(
        f"{m} (row {old[:16]}, model now {new[:16]})" for m, (old, new) in stale.items()
    )
    logger.warning(
        "study report: %s of %s describe an earlier training of the model; run %s before "
        "reading them",
        what,
        which,
        rerun,
    )
    return paragraph(
        f"Stale rows: {what} of {which} describe an earlier training of the model than the "
        f"one trained since (its settings, data or code differ). Run {rerun} before reading "
        "them.",
        "note",
    )


def _overlays(inputs: StudyReportInputs) -> str:
    if not inputs.overlays:
        return paragraph("No overlay figures were drawn (no heatmap sets).", "note")
    models = [str(m) for m in inputs.study_findings.get("model", [])]

    def order(name: str) -> tuple[int, str]:  # the findings' model order, then by name
        model = name.split(".", 1)[0]
        return (models.index(model) if model in models else len(models), name)

    drawn_from = []  # what each overlay PNG recorded of its model (io.png_text)
    for png in inputs.overlays.values():
        try:
            text = read_png_text(bytes(png))
        except (ContractError, TypeError):  # not a PNG: figure_html names it below
            text = {}
        model, fingerprint = text.get("model"), text.get(MODEL_FINGERPRINT_KEY)
        if model and fingerprint:
            drawn_from.append({"model": model, MODEL_FINGERPRINT_KEY: fingerprint})
    note = _retrained_note(
        pd.DataFrame(drawn_from, columns=["model", MODEL_FINGERPRINT_KEY]),
        inputs.model_fingerprints,
        "the overlays",
        RERUN_AFTER_RETRAINING,
        column=MODEL_FINGERPRINT_KEY,
    )
    return note + "".join(
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
        _retrained_note(
            summary,
            inputs.model_fingerprints,
            "the localization rows",
            RERUN_AFTER_RETRAINING,
            column=MODEL_FINGERPRINT_KEY,
        ),
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
    summary = inputs.robustness_summary
    parts = [
        heading("Robustness summary"),
        _retrained_note(
            summary,
            inputs.model_digests,
            "the robustness summary rows (and the calibration and fairness tables of the same run)",
            "kedro run --pipeline robustness, then report",
        ),
        table_html(
            with_cis(summary.drop(columns=[MODEL_DIGEST_COLUMN], errors="ignore")),
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


#: The comparison's tables, in the order its section shows them.
COMPARISON_TABLES: tuple[str, ...] = (
    "headline_table",
    "headline_table_seeds",
    "headline_paired_differences",
)
#: The column of a comparison table that says what its intervals (and p-values) are.
CI_NOTE = "ci_note"
#: Columns of the comparison tables that count seeds, or list them ("0,1,2"; a lone seed
#: is read back from the CSV as a number): shown as they are written, not as "0.00".
SEED_COUNTS: tuple[str, ...] = ("n_seeds", "n_pairs", "seeds")


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def paired_cell(
    ci: str,
    p: object = None,
    p_adj: object = None,
    n: object = None,
    n_pairs: object = None,
) -> str:
    """One metric of a paired difference as one cell: ``0.90 [0.72, 1.08], p = 0.002 (adj. 0.023)``.

    Args:
        ci: The mean difference with its interval (``with_cis``); empty: the metric is not
            defined for the row, and the cell is empty.
        p: The paired test's p-value as ``report.html.p_text`` writes it (three decimals,
            more where three would round it up to 0.05; ``p < 0.001`` below ``P_FLOOR``);
            left out when not a finite number.
        p_adj: The p-value adjusted for multiplicity, shown as ``(adj. ...)`` only when it
            is a finite number (tables written before the adjustment have none).
        n: The pairs where the metric is defined, and ``n_pairs`` all the row's pairs:
            ``2 of 3 pairs`` is added when ``n`` is fewer.
    """
    if not ci:
        return ""
    parts = [ci]
    p_number = _finite(p)
    if p_number is not None:
        text = f"p {p_text(p_number)}"
        adjusted = _finite(p_adj)
        if adjusted is not None:
            text += f" (adj. {p_text(adjusted, '')})"
        parts.append(text)
    k, total = _finite(n), _finite(n_pairs)
    if k is not None and total is not None and k < total:
        parts.append(f"{k:g} of {total:g} pairs")
    return ", ".join(parts)


def _count_text(values: pd.Series) -> list[str]:
    """Seed counts and seed lists as written: ``3``, ``0``, ``0,1,2`` (not ``0.00``)."""
    out = []
    for v in values:
        number = _finite(v)
        if number is not None and number.is_integer():
            out.append(str(int(number)))
        else:
            out.append("" if pd.isna(v) else str(v))
    return out


def _with_count_text(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return table.assign(**{c: _count_text(table[c]) for c in columns if c in table.columns})


def _one_note(table: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The table without its ``ci_note`` column and that note, when every row has the same
    one (the note is then said once under the table); else the table as it is."""
    if CI_NOTE not in table.columns:
        return table, None
    notes = {str(v).strip() for v in table[CI_NOTE].dropna()} - {""}
    if len(notes) > 1:  # rows with their own notes keep them in the table
        return table, None
    return table.drop(columns=CI_NOTE), (notes.pop() if notes else None)


def _note_line(note: str | None) -> str:
    return paragraph(f"The table's note (ci_note): {note}", "written") if note else ""


def headline_seeds_table(table: pd.DataFrame) -> pd.DataFrame:
    """``headline_table_seeds`` as the page shows it: each metric's mean over seeds with its
    interval in one cell (``with_cis``, every number with two decimals); a ``<m>_n`` column
    (the seeds where ``<m>`` is defined) only when it is below ``n_seeds`` in some row."""
    columns = [str(c) for c in table.columns]
    counts = [c for c in columns if c.endswith("_n") and c[: -len("_n")] in columns]
    n_seeds = pd.to_numeric(table["n_seeds"], errors="coerce") if "n_seeds" in columns else None
    full = [
        c
        for c in counts
        if n_seeds is not None and bool((pd.to_numeric(table[c], errors="coerce") >= n_seeds).all())
    ]
    shown = with_cis(table.drop(columns=full), fixed=True)
    return _with_count_text(shown, [*SEED_COUNTS, *(c for c in counts if c not in full)])


def paired_differences_table(table: pd.DataFrame) -> pd.DataFrame:
    """``headline_paired_differences`` as the page shows it: one cell per metric
    (``paired_cell``: the mean difference, its interval, p and the adjusted p).

    The metrics are the columns ``<m>`` with ``<m>_lo``, ``<m>_hi`` and ``<m>_p``; their
    ``<m>_p_adj`` (absent in tables written before the adjustment) and ``<m>_n`` go into the
    cell. Other columns are kept as they are; a table with no such metric is shown through
    ``with_cis``.
    """
    columns = [str(c) for c in table.columns]
    metrics = [
        c[: -len("_p")]
        for c in columns
        if c.endswith("_p") and {c[:-2], f"{c[:-2]}_lo", f"{c[:-2]}_hi"} <= set(columns)
    ]
    if not metrics:
        return _with_count_text(with_cis(table, fixed=True), list(SEED_COUNTS))
    suffixes = ("", "_lo", "_hi", "_p", "_p_adj", "_n")
    derived = {f"{m}{s}" for m in metrics for s in suffixes}
    cis = with_cis(table[[f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi")]], fixed=True)
    out = table[[c for c in table.columns if c not in derived]]
    out = _with_count_text(out, list(SEED_COUNTS))
    none = [None] * len(table)

    def column(name: str) -> list[object]:
        return list(table[name]) if name in columns else none

    cells = {
        m: [
            paired_cell(*values)
            for values in zip(
                cis[m],
                column(f"{m}_p"),
                column(f"{m}_p_adj"),
                column(f"{m}_n"),
                column("n_pairs"),
            )
        ]
        for m in metrics
    }
    return out.assign(**cells)


def _seed_heading(table: pd.DataFrame) -> str:
    """The heading of ``headline_table``: its seed when the table has one ``seed``."""
    seeds = _count_text(table["seed"].dropna()) if "seed" in table.columns else []
    if len(set(seeds)) == 1:
        return f"Training seed {seeds[0]}"
    return "The study's training seed (training.seed)"


def _comparison_block(
    name: str,
    title: str,
    table: pd.DataFrame,
    shown: pd.DataFrame,
    note: str | None,
    inputs: StudyReportInputs,
    max_rows: int,
) -> list[str]:
    """One comparison table: its heading, when its file was written, the table as shown and
    its ``ci_note``."""
    return [
        heading(title),
        _written(name, table, inputs),
        table_html(shown, max_rows=max_rows, source=SOURCES[name]),
        _note_line(note),
    ]


def _comparison(inputs: StudyReportInputs, max_rows: int) -> str:
    """The comparison section: the tables of ``COMPARISON_TABLES`` that exist, each with when
    its file was written and its ``ci_note``; empty when none exists."""
    parts: list[str] = []
    table = inputs.headline_table
    if table is not None:
        shown, note = _one_note(table)
        parts += _comparison_block(
            "headline_table", _seed_heading(table), table, with_cis(shown), note, inputs, max_rows
        )
    table = inputs.headline_table_seeds
    if table is not None:
        shown, note = _one_note(table)
        parts += _comparison_block(
            "headline_table_seeds",
            "Over training seeds",
            table,
            headline_seeds_table(shown),
            note,
            inputs,
            max_rows,
        )
    table = inputs.headline_paired_differences
    if table is not None:
        shown, note = _one_note(table)
        references = (
            {str(v) for v in table["reference"].dropna()} if "reference" in table.columns else set()
        )
        reference = references.pop() if len(references) == 1 else None
        if reference is not None:
            shown = shown.drop(columns="reference")
        parts += _comparison_block(
            "headline_paired_differences",
            f"Each variant minus {reference or 'its reference'} (paired over seeds)",
            table,
            paired_differences_table(shown),
            note,
            inputs,
            max_rows,
        )
        if any(str(c).endswith("_p") for c in table.columns) and not any(
            str(c).endswith("_p_adj") for c in table.columns
        ):
            parts.append(
                paragraph(
                    "This file has no adjusted p-values (written before they were added): "
                    "kedro run --pipeline comparison, then kedro run --pipeline report, adds "
                    "them.",
                    "note",
                )
            )
    if parts:
        missing = [SOURCES[n] for n in COMPARISON_TABLES if getattr(inputs, n) is None]
        if missing:
            parts.append(
                paragraph(
                    f"Not written: {', '.join(missing)} (kedro run --pipeline comparison, "
                    "then kedro run --pipeline report).",
                    "note",
                )
            )
    return "".join(parts)


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
    comparison = _comparison(inputs, max_rows)
    if comparison:
        bodies["comparison"] = comparison
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
