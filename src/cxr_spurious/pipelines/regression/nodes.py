"""Thin nodes of the regression pipeline; the work lives in ``cxr_spurious.regression``."""

from __future__ import annotations

import logging
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from cxr_spurious.regression import features as feat
from cxr_spurious.regression import models

logger = logging.getLogger(__name__)

#: Forest-plot colours: Bonferroni-significant fits, and the others.
SIGNIFICANT_COLOUR = "C3"
OTHER_COLOUR = "C0"


def compute_geometric_features(
    gt_segmentations: dict[str, Any], gt_annotations: dict[str, Any]
) -> pd.DataFrame:
    """Per positive (CXR, task): instances, area ratio, elongation, irrectangularity."""
    return feat.geometric_features(gt_segmentations, gt_annotations)


def build_regression_table(
    localization_per_cxr: pd.DataFrame, features: pd.DataFrame, human_benchmark: pd.DataFrame
) -> pd.DataFrame:
    """Per-map outcomes joined with the gt features and the human-benchmark gap.

    The true-positive slice keeps IoU > NaN; ``iou_gap`` / ``hit_gap`` are benchmark minus
    saliency (NaN without a benchmark). Lesions without an annotated instance
    (``n_instances`` 0) are left out, as the reference does (``models.annotated_lesions``).
    """
    cols = ["set", "image_id", "task", "prob", "iou_tp", "iou_full", "hit"]
    table = localization_per_cxr[cols].merge(
        models.annotated_lesions(features), on=["image_id", "task"], how="inner"
    )
    return models.with_human_gap(table, human_benchmark)


def regress_on_features(
    table: pd.DataFrame, cluster_robust: bool, min_clusters: int = models.MIN_CLUSTERS
) -> pd.DataFrame:
    """Reference pooled OLS (and per-task, optionally cluster-robust by CXR) per set.

    Outcomes: ``iou_tp`` and ``hit``, plus the human-benchmark gaps ``iou_gap`` and
    ``hit_gap`` where a benchmark scored the same maps. Cluster-robust errors need
    ``min_clusters`` CXRs (else OLS errors, logged); fits on fewer CXRs are never flagged.
    ``min_clusters`` is checked as given (``models.check_min_clusters``), never truncated.
    """
    min_clusters = models.check_min_clusters(min_clusters)
    frames = []
    for name, group in table.groupby("set", sort=True):
        outcomes = ["iou_tp", "hit"] + [
            gap for gap in models.GAP_OUTCOMES if gap in group and group[gap].notna().any()
        ]
        for by_task in (False, True):
            res = models.feature_regressions(
                group,
                outcomes,
                cluster="image_id" if cluster_robust else None,
                by_task=by_task,
                min_clusters=min_clusters,
            )
            frames.append(res.assign(set=name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def regress_on_confidence(
    localization_per_cxr: pd.DataFrame, min_clusters: int = models.MIN_CLUSTERS
) -> pd.DataFrame:
    """Probability -> IoU (full dataset) and hit, per task and pooled, per set (OLS errors).

    As the reference's ``regression_model_assurance.py``: OLS of the outcome on the model's
    raw probability (``feature`` = ``prob``, not rescaled), so pooled and per-task
    coefficients are all the outcome's change per unit of probability; Bonferroni over one
    predictor (p < 0.05). ``min_clusters`` is checked as given, never truncated.
    """
    min_clusters = models.check_min_clusters(min_clusters)
    frames = []
    for name, group in localization_per_cxr[localization_per_cxr["in_gt"].astype(bool)].groupby(
        "set", sort=True
    ):
        for by_task in (False, True):
            frames.append(
                models.feature_regressions(
                    group,
                    ["iou_full", "hit"],
                    features=["prob"],
                    by_task=by_task,
                    min_clusters=min_clusters,
                    normalise=False,
                ).assign(set=name)
            )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def fit_joint_models(table: pd.DataFrame) -> pd.DataFrame:
    """Logistic hit/miss model and a mixed model (random intercept per CXR), per set.

    ``converged`` / ``fit_warnings`` record statsmodels' convergence problems per fit
    instead of console warnings (in a single-task study each CXR has one row, so the mixed
    model's random intercept sits on the boundary and its coefficients equal OLS). A term
    without an estimate (a feature with one value, or aliased with others; a model that
    cannot be fitted) keeps its row, its ``note`` says why, and a log line names the set.
    """
    frames = []
    for name, group in table.groupby("set", sort=True):
        frames += [
            models.logistic_hit(group).assign(set=name),
            models.mixed_effects(group, "iou_tp").assign(set=name),
        ]
    frames = [f for f in frames if len(f)]
    for frame in frames:
        _log_unestimated_terms(frame)
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=[*models.JOINT_COLUMNS, "set"])
    )


def _log_unestimated_terms(frame: pd.DataFrame) -> None:
    """One log line per joint model with terms left without estimates, naming the set and
    the features: a warning for an aliased term or a model statsmodels could not fit, an
    info line for the expected cases (a feature or outcome with one value, too few rows)."""
    noted = frame[frame["note"].astype(str) != ""]
    if noted.empty:
        return
    serious = noted["note"].str.startswith("aliased") | noted["note"].str.contains(
        "statsmodels failed", regex=False
    )
    logger.log(
        logging.WARNING if serious.any() else logging.INFO,
        "regression set %s, %s: no estimate for %s",
        frame["set"].iloc[0],
        frame["model"].iloc[0],
        "; ".join(f"{r.term} [{r.note}]" for r in noted.itertuples()),
    )


def plot_forest(feature_regressions: pd.DataFrame) -> plt.Figure:
    """Forest plot of pooled feature coefficients with their unadjusted 95% CIs.

    A point is red when ``bonferroni_significant`` (p < 0.05 / k over the k features the
    study tests, ``bonferroni_k``, on a fit of at least ``regression.min_clusters`` CXRs),
    blue otherwise; the legend says so, with the k the flag used. Features that could not
    be fitted (no estimate) are not drawn.
    """
    pooled = (
        feature_regressions[feature_regressions.get("task", pd.Series(dtype=str)) == "pooled"]
        if len(feature_regressions)
        else feature_regressions
    )
    if len(pooled) and "coef" in pooled:  # features not fitted (one value) have no estimate
        pooled = pooled[pooled["coef"].notna()]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(pooled), 4) + 1.4), constrained_layout=True)
    labels = (
        [f"{r.set} | {r.outcome} ~ {r.feature}" for r in pooled.itertuples()] if len(pooled) else []
    )
    for i, r in enumerate(pooled.itertuples()):
        ax.errorbar(
            r.coef,
            i,
            xerr=[[r.coef - r.coef_lo], [r.coef_hi - r.coef]],
            fmt="o",
            color=SIGNIFICANT_COLOUR if r.bonferroni_significant else OTHER_COLOUR,
            capsize=3,
        )
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("coefficient (min-max-normalised feature), unadjusted 95% CI")
    ks = sorted({int(v) for v in pooled.get("bonferroni_k", pd.Series(dtype=float)).dropna()})
    k = "/".join(str(v) for v in ks) if ks else str(len(models.FEATURES))  # the flag's own k
    handles = [
        Line2D([], [], color=SIGNIFICANT_COLOUR, marker="o", ls="none"),
        Line2D([], [], color=OTHER_COLOUR, marker="o", ls="none"),
    ]
    fig.legend(
        handles,
        [
            f"Bonferroni-significant: p < 0.05/{k}, fit on >= regression.min_clusters CXRs",
            "not significant, or too few CXRs to flag",
        ],
        loc="outside lower center",
        fontsize=7,
        frameon=False,
    )
    return fig
