"""Study nodes: per-model findings rows (``summarise_findings``) and the compiled table."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.study.counterfactual import counterfactual_findings
from cxr_spurious.study.figures import plot_findings
from cxr_spurious.study.findings import (
    assemble_findings,
    findings_metrics,
    model_row,
    saliency_findings,
)

logger = logging.getLogger(__name__)


def summarise_findings(
    test_metrics: dict[str, Any],
    counterfactual_predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    localization_per_cxr: pd.DataFrame,
    human_benchmark: pd.DataFrame,
    variant: dict[str, Any],
    task: str,
    n_boot: int,
    seed: int,
    max_dropped_share: float = 0.05,
) -> dict[str, Any]:
    """All findings of one model as a flat row.

    Args:
        test_metrics: ``<model>.test_metrics`` from training.
        counterfactual_predictions: ``<model>.counterfactual_predictions``.
        manifest: The manifest.
        localization_per_cxr: Per-map localisation outcomes of every heatmap set.
        human_benchmark: Human-benchmark outcomes (may be empty).
        variant: ``training.variants.<model>`` (name, method, architecture).
        task: The study's task (e.g. Pneumothorax).
        n_boot: Bootstrap replicates.
        seed: Seed.
        max_dropped_share: Largest share of undefined bootstrap replicates of a CI; above it
            ``BootstrapDropError`` names the model and metric. Each CI's count is
            ``<metric>_dropped``.

    Returns:
        One row of ``study_findings``.
    """
    model = str(variant["name"])
    row = model_row(model, variant, test_metrics, task)
    sets = localization_per_cxr[
        (localization_per_cxr["model"] == model) & (localization_per_cxr["task"] == task)
    ]
    human = human_benchmark[human_benchmark["task"] == task] if len(human_benchmark) else None
    for method, per_map in sets.groupby("method", sort=True):
        prefix = str(method).replace("+", "p")
        metrics = saliency_findings(
            per_map,
            manifest,
            human,
            n_boot=n_boot,
            seed=seed,
            max_dropped_share=float(max_dropped_share),
            label=f"{model}/{method}",
        )
        row.update({f"{prefix}_{k}": v for k, v in metrics.items()})
    row.update(
        counterfactual_findings(
            counterfactual_predictions,
            manifest,
            task,
            n_boot=n_boot,
            seed=seed,
            max_dropped_share=float(max_dropped_share),
            label=model,
        )
    )
    logger.info(
        "%s: AUROC %.3f, robust AUROC %.3f, tube-removal drop %.3f",
        model,
        row["auroc"],
        row["robust_auroc"],
        row.get("cf_drop_no_tube", float("nan")),
    )
    return row


def compile_findings(
    *rows: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, dict[str, float]], Figure]:
    """The findings table, its metrics for MLflow and the headline figure."""
    table = assemble_findings(rows)
    return table, findings_metrics(table), plot_findings(table)
