"""Thin nodes of the report pipeline; the page is built by ``cxr_spurious.report``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from cxr_spurious.datasets.optional import WRITTEN_ATTR
from cxr_spurious.report.html import check_row_limit
from cxr_spurious.report.study import (
    HUMAN_TABLES,
    StudyReportInputs,
    build_study_report,
    stack_per_model,
)
from cxr_spurious.training.provenance import (
    MODEL_DIGEST_COLUMN,
    MODEL_FINGERPRINT_KEY,
    model_digest,
    recorded_fingerprint,
)

logger = logging.getLogger(__name__)


def stack_calibration(**tables: pd.DataFrame) -> pd.DataFrame:
    """Every model's ``<m>.calibration`` in one table (keyword = model name)."""
    return stack_per_model(tables)


def stack_fairness_gaps(**tables: pd.DataFrame) -> pd.DataFrame:
    """Every model's ``<m>.fairness_gaps`` in one table (keyword = model name)."""
    return stack_per_model(tables)


def current_model_digests(
    **test_metrics: Mapping[str, Any],
) -> dict[str, dict[str, str | None]]:
    """Which training of each study model is on disk now, as its ``<m>.test_metrics``
    reads (keyword = model name): ``{"model_digest": {model: digest}, "model_fingerprint":
    {model: fingerprint}}``. The report checks the findings and robustness rows against
    the digests and the localization rows against the fingerprints."""
    return {
        MODEL_DIGEST_COLUMN: {name: model_digest(m) for name, m in test_metrics.items()},
        MODEL_FINGERPRINT_KEY: {name: recorded_fingerprint(m) for name, m in test_metrics.items()},
    }


def _loaded(partitions: Mapping[str, Callable[[], Any]], keep: Callable[[str], bool]) -> dict:
    """The partitions of a ``PartitionedDataset`` whose id ``keep`` accepts, loaded."""
    return {key: load() for key, load in sorted(partitions.items()) if keep(key)}


def _written(table: pd.DataFrame | None) -> datetime | None:
    """When an optional table's file was written (``OptionalDataset``'s ``attrs``)."""
    return None if table is None else table.attrs.get(WRITTEN_ATTR)


def build_report(
    dataset_report: pd.DataFrame,
    example_grid: bytes,
    study_findings: pd.DataFrame,
    study_findings_figure: bytes,
    localization_overlays: Mapping[str, Callable[[], bytes]],
    localization_summary: pd.DataFrame,
    chexlocalize_reports: Mapping[str, Callable[[], pd.DataFrame]],
    regression_forest_plot: bytes,
    robustness_summary: pd.DataFrame,
    calibration: pd.DataFrame,
    fairness_gaps: pd.DataFrame,
    headline_table: pd.DataFrame | None,
    headline_table_seeds: pd.DataFrame | None,
    headline_paired_differences: pd.DataFrame | None,
    sweep_summary: pd.DataFrame | None,
    shortcut_detection: pd.DataFrame | None,
    title: str,
    max_rows: int,
    study_findings_written: datetime | None = None,
    model_digests: Mapping[str, str | None] | None = None,
) -> str:
    """The study report (``report``): one HTML page of the stages' reporting datasets.

    Args:
        dataset_report: Counts per split, label and subgroup.
        example_grid: PNG of the example images.
        study_findings: The findings table (one row per model).
        study_findings_figure: PNG of the findings figure.
        localization_overlays: Overlay PNG per heatmap set (partitions, loaded here).
        localization_summary: Localization per heatmap set.
        chexlocalize_reports: CheXlocalize report tables (partitions; only the human
            benchmark comparisons are loaded).
        regression_forest_plot: PNG of the regression forest plot.
        robustness_summary: Robustness per model.
        calibration: Calibration of every model (``stack_calibration``).
        fairness_gaps: Fairness gaps of every model (``stack_fairness_gaps``).
        headline_table: The comparison's table, ``None`` when it has not been run (when
            its file was written in ``attrs["written_utc"]``, as for the four below).
        headline_table_seeds: The comparison over training seeds, ``None`` when it has not
            been written.
        headline_paired_differences: Each comparison variant minus erm, paired over seeds,
            ``None`` likewise.
        sweep_summary: The sweep's summary, ``None`` when it has not been run.
        shortcut_detection: The sweep's detection table, ``None`` likewise.
        title: ``params:report.title``.
        max_rows: ``params:report.max_table_rows``, an integer >= 1.
        study_findings_written: When ``study_findings``'s file was written
            (``report_study_findings_written``); an optional table older than it gets a
            note.
        model_digests: ``current_model_digests``' output (which training of each model is
            on disk now); a findings, robustness or localization row that describes another
            training of its model (retrained since) gets a note.

    Returns:
        The HTML page.

    Raises:
        ParameterError: ``report.max_table_rows`` is not an integer >= 1.
    """
    max_rows = check_row_limit(max_rows, "report.max_table_rows")
    inputs = StudyReportInputs(
        dataset_report=dataset_report,
        example_grid=example_grid,
        study_findings=study_findings,
        study_findings_figure=study_findings_figure,
        overlays=_loaded(localization_overlays, lambda key: True),
        localization_summary=localization_summary,
        human_benchmark=_loaded(
            chexlocalize_reports, lambda key: key.rpartition("/")[2] in HUMAN_TABLES
        ),
        regression_forest_plot=regression_forest_plot,
        robustness_summary=robustness_summary,
        calibration=calibration,
        fairness_gaps=fairness_gaps,
        headline_table=headline_table,
        headline_table_seeds=headline_table_seeds,
        headline_paired_differences=headline_paired_differences,
        sweep_summary=sweep_summary,
        shortcut_detection=shortcut_detection,
        model_digests=_current(model_digests, MODEL_DIGEST_COLUMN),
        model_fingerprints=_current(model_digests, MODEL_FINGERPRINT_KEY),
        written={
            "study_findings": study_findings_written,
            "headline_table": _written(headline_table),
            "headline_table_seeds": _written(headline_table_seeds),
            "headline_paired_differences": _written(headline_paired_differences),
            "sweep_summary": _written(sweep_summary),
            "shortcut_detection": _written(shortcut_detection),
        },
    )
    page = build_study_report(inputs, title=title, max_rows=max_rows)
    logger.info("study report: %.1f MB of HTML", len(page.encode()) / 1e6)
    return page


def _current(recorded: Mapping[str, Any] | None, key: str) -> dict[str, str | None]:
    """One kind of ``current_model_digests``' record: ``{model: value}``."""
    return dict((recorded or {}).get(key) or {})
