"""Study nodes: per-model findings rows (``summarise_findings``) and the compiled table."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.errors import ParameterError
from cxr_spurious.stats.bootstrap import check_ci_level, check_max_dropped_share, check_n_boot
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.study.counterfactual import counterfactual_findings
from cxr_spurious.study.figures import plot_findings
from cxr_spurious.study.findings import (
    assemble_findings,
    check_same_model,
    findings_metrics,
    model_row,
    saliency_findings,
    training_ci_settings,
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
    ci_level: float = 0.95,
    training_ci_level: float = 0.95,
    training_n_boot: int = 1000,
) -> dict[str, Any]:
    """All findings of one model as a flat row.

    Every CI of the row is at ``ci_level``: the study's own CIs are computed at it, and the
    AUROC CIs copied from ``test_metrics`` must have been computed at it too (checked
    before any bootstrap). The row records ``ci_level``, ``test_n_boot`` (replicates of the
    AUROC, robust and reverse AUROC CIs) and ``study_n_boot`` (those of the study's own).

    Args:
        test_metrics: ``<model>.test_metrics`` from training.
        counterfactual_predictions: ``<model>.counterfactual_predictions``.
        manifest: The manifest.
        localization_per_cxr: Per-map localisation outcomes of every heatmap set.
        human_benchmark: Human-benchmark outcomes (may be empty).
        variant: ``training.variants.<model>`` (name, method, architecture).
        task: The study's task (e.g. Pneumothorax).
        n_boot: Bootstrap replicates of the study's own CIs (``study.n_boot``).
        seed: Seed.
        max_dropped_share: Largest share of undefined bootstrap replicates of a CI; above it
            ``BootstrapDropError`` names the model and metric. Each CI's count is
            ``<metric>_dropped``.
        ci_level: The level of every CI of the table (``study.ci_level``).
        training_ci_level: ``training.ci_level`` (the test metrics' level unless the
            variant's block or the test metrics say otherwise).
        training_n_boot: ``training.n_boot`` (likewise).

    Returns:
        One row of ``study_findings``.

    Raises:
        ParameterError: ``study.ci_level`` outside (0, 1) or not the level of the test
            metrics' CIs (naming both keys); ``study.seed`` not an integer in
            [0, 2**32 - 1]; ``study.n_boot`` not an integer >= 1 or
            ``study.max_dropped_share`` not a number in [0, 1] (booleans refused: ``True``
            would otherwise read as a share of 1 and switch the dropped-replicate guard
            off). All checked before any bootstrap.
        StaleOutputError: the model's localization rows come from the maps of another
            training of it (``study.findings.check_same_model``).
    """
    model = str(variant["name"])
    level = check_ci_level(ci_level, "study.ci_level")
    seed = check_seed(seed, "study.seed")
    n_boot = check_n_boot(n_boot, "study.n_boot")
    share = check_max_dropped_share(max_dropped_share, "study.max_dropped_share")
    test_level, test_n_boot, test_key = training_ci_settings(
        model, variant, test_metrics, training_ci_level, training_n_boot
    )
    if not np.isclose(level, test_level, rtol=0.0, atol=1e-12):
        raise ParameterError(
            "study.ci_level",
            f"is {level:g} but the AUROC / robust / reverse AUROC CIs of {model} come from "
            f"{model}.test_metrics at {test_key}={test_level:g}; one findings table cannot mix "
            f"two CI levels: set study.ci_level and {test_key} to the same value",
        )
    row = model_row(model, variant, test_metrics, task)
    row.update({"ci_level": level, "test_n_boot": test_n_boot, "study_n_boot": n_boot})
    sets = localization_per_cxr[
        (localization_per_cxr["model"] == model) & (localization_per_cxr["task"] == task)
    ]
    check_same_model(model, sets, test_metrics)
    human = human_benchmark[human_benchmark["task"] == task] if len(human_benchmark) else None
    for method, per_map in sets.groupby("method", sort=True):
        prefix = str(method).replace("+", "p")
        metrics = saliency_findings(
            per_map,
            manifest,
            human,
            n_boot=n_boot,
            seed=seed,
            level=level,
            max_dropped_share=share,
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
            level=level,
            max_dropped_share=share,
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
