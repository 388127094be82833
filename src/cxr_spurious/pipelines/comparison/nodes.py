"""Nodes of the ``comparison`` pipeline."""

from __future__ import annotations

import logging

import pandas as pd

from cxr_spurious.debiasing.dfr import fit_dfr
from cxr_spurious.debiasing.groups import assign_groups, group_keys

logger = logging.getLogger(__name__)

HEADLINE_METRICS: tuple[str, ...] = (
    "auroc",
    "worst_group_auroc",
    "robust_tube_auroc",
    "fnr_gap",
    "equalized_odds_difference",
)


def refit_last_layer(
    manifest: pd.DataFrame,
    embeddings: pd.DataFrame,
    tasks: list[str],
    group_by: list[str],
    age_bins: list[float],
    c: float,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """DFR: logistic regression on the ERM embeddings, group-balanced on half the val split.

    Returns:
        ``(predictions, embeddings)`` in the training formats (the embeddings are ERM's).
    """
    ids, _ = assign_groups(group_keys(manifest, group_by, age_edges=age_bins))
    preds = fit_dfr(
        manifest, embeddings, ids.to_numpy(), tasks, c=float(c), seed=int(seed), model_name="dfr"
    )
    return preds, embeddings


def build_headline_table(**summaries: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (keyword = variant) and task with the headline metrics and CIs."""
    rows = []
    for variant, summary in summaries.items():
        for rec in summary.to_dict("records"):
            row = {"variant": variant, "task": rec["task"]}
            for m in HEADLINE_METRICS:
                row.update(
                    {m: rec.get(m), f"{m}_lo": rec.get(f"{m}_lo"), f"{m}_hi": rec.get(f"{m}_hi")}
                )
            rows.append(row)
    table = pd.DataFrame(rows)
    logger.info(
        "headline table:\n%s", table[["variant", *HEADLINE_METRICS]].round(3).to_string(index=False)
    )
    return table
