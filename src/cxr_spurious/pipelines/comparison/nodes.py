"""Nodes of the ``comparison`` pipeline.

The across-seed statistics are ``cxr_spurious.stats.seeds``'s (the sweep's too).
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from cxr_spurious.debiasing.dfr import fit_dfr
from cxr_spurious.debiasing.groups import assign_groups, group_keys
from cxr_spurious.errors import ContractError
from cxr_spurious.stats.seeds import SEED_COLUMN, paired_over_seeds, summarise_over_seeds

logger = logging.getLogger(__name__)

HEADLINE_METRICS: tuple[str, ...] = (
    "auroc",
    "worst_group_auroc",
    "robust_tube_auroc",
    "fnr_gap",
    "equalized_odds_difference",
)
#: The variant every other one is compared with on the same seed (the study's ERM).
ERM_VARIANT = "erm"


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


def seed_overrides(*, seed: int, name: str) -> dict[str, Any]:
    """The training template's overrides of one variant on a seed other than the study's:
    ``training.seed`` and the variant's name (its checkpoints, model file and MLflow run)."""
    return {"variant": {"seed": int(seed), "name": name}}


def resampling_seed(*, seed: int) -> int:
    """The debiasing template's resampling seed on a seed other than the study's."""
    return int(seed)


def stack_seed_tables(**tables: pd.DataFrame) -> pd.DataFrame:
    """``headline_table_per_seed``: each seed's headline table (keyword ``s<seed>``), with
    a ``seed`` column first."""
    frames = []
    for key, table in tables.items():
        if not key.startswith("s") or not key[1:].isdigit():
            raise ContractError(f"stack_seed_tables: keyword '{key}' is not s<seed>")
        frames.append(table.assign(seed=int(key[1:])))
    out = pd.concat(frames, ignore_index=True)
    return out[[SEED_COLUMN, *(c for c in out.columns if c != SEED_COLUMN)]]


def summarise_headline_seeds(
    per_seed: pd.DataFrame, level: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``headline_table_seeds`` and ``headline_paired_differences`` from the per-seed rows.

    ``headline_table_seeds``: one row per variant and task, each headline metric's mean over
    the training seeds with a Student t interval across seeds (``stats.seeds.t_interval``),
    ``n_seeds`` and ``ci_note``. ``headline_paired_differences``: every variant minus
    ``erm`` on the same seed and task, with a paired t interval and p-value.
    """
    metrics = list(HEADLINE_METRICS)
    source = "headline_table_per_seed"
    summary = summarise_over_seeds(
        per_seed, ["variant", "task"], metrics, level=level, source=source
    )
    summary["ci_note"] = [_ci_note(row, metrics, level) for row in summary.to_dict("records")]
    paired = paired_over_seeds(
        per_seed, "variant", ERM_VARIANT, ["task"], metrics, level=level, source=source
    )
    paired["ci_note"] = (
        f"{level:.0%} paired t interval over training seeds of variant - {ERM_VARIANT} "
        "(same seed and task); p: paired t-test; <metric>_n: the pairs where the metric is "
        "defined on both sides (n_pairs counts every paired seed)"
    )
    logger.info(
        "headline table over seeds:\n%s",
        summary[["variant", "n_seeds", *metrics]].round(3).to_string(index=False),
    )
    return summary, paired


def _ci_note(row: dict[str, Any], metrics: list[str], level: float) -> str:
    n = int(row["n_seeds"])
    if n < 2:
        note = (
            f"one training seed ({row['seeds']}): no across-seed interval; "
            "the test-sampling CI is in headline_table_per_seed"
        )
    else:
        note = (
            f"{level:.0%} t interval across {n} training seeds ({row['seeds']}); "
            "test-sampling CIs of each seed are in headline_table_per_seed"
        )
    short = [f"{m}: {row[f'{m}_n']} of {n}" for m in metrics if row[f"{m}_n"] < n]
    return note + ("; defined on " + ", ".join(short) if short else "")
