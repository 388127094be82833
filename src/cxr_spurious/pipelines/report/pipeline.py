"""Wiring of the report pipeline (see README.md in this folder).

Its inputs are the other stages' reporting datasets, so it runs after them in the default
``kedro run``; the comparison's and the sweep's tables come through ``report_*`` entries
that read their files when they exist (``OptionalDataset``), so the default run does not
depend on those pipelines; ``report_study_findings_written`` is when ``study_findings``'s
file was written (the page notes an optional table older than it).
"""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines.report import nodes
from cxr_spurious.variants import STUDY_MODELS

P = "params:report"


def create_pipeline(**kwargs: Any) -> Pipeline:
    """Per-model tables stacked, then the page ``report``."""
    return Pipeline(
        [
            Node(
                func=nodes.stack_calibration,
                inputs={m: f"{m}.calibration" for m in STUDY_MODELS},
                outputs="report_calibration",
                name="stack_calibration",
            ),
            Node(
                func=nodes.stack_fairness_gaps,
                inputs={m: f"{m}.fairness_gaps" for m in STUDY_MODELS},
                outputs="report_fairness_gaps",
                name="stack_fairness_gaps",
            ),
            Node(
                func=nodes.current_model_digests,
                inputs={m: f"{m}.test_metrics" for m in STUDY_MODELS},
                outputs="report_model_digests",
                name="current_model_digests",
            ),
            Node(
                func=nodes.build_report,
                inputs={
                    "dataset_report": "dataset_report",
                    "example_grid": "example_grid",
                    "study_findings": "study_findings",
                    "study_findings_written": "report_study_findings_written",
                    "model_digests": "report_model_digests",
                    "study_findings_figure": "study_findings_figure",
                    "localization_overlays": "localization_overlays",
                    "localization_summary": "localization_summary",
                    "chexlocalize_reports": "chexlocalize_reports",
                    "regression_forest_plot": "regression_forest_plot",
                    "robustness_summary": "robustness_summary",
                    "calibration": "report_calibration",
                    "fairness_gaps": "report_fairness_gaps",
                    "headline_table": "report_headline_table",
                    "headline_table_seeds": "report_headline_table_seeds",
                    "headline_paired_differences": "report_headline_paired_differences",
                    "sweep_summary": "report_sweep_summary",
                    "shortcut_detection": "report_shortcut_detection",
                    "title": f"{P}.title",
                    "max_rows": f"{P}.max_table_rows",
                },
                outputs="report",
                name="build_report",
            ),
        ],
        tags=["report"],
    )
