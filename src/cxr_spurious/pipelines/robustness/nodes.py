"""Nodes of the ``robustness`` pipeline (thin wrappers of ``cxr_spurious.robustness``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.debiasing.features import embedding_matrix
from cxr_spurious.errors import ContractError
from cxr_spurious.robustness.calibration import MIN_ROWS, calibration_table, plot_reliability
from cxr_spurious.robustness.evaluation import (
    SETTINGS_COLUMN,
    check_attribute_parameters,
    evaluation_table,
    grouping_columns,
    split_rows,
    summary_settings,
)
from cxr_spurious.robustness.fairness import choose_threshold, fairness_tables
from cxr_spurious.robustness.strata import (
    MIN_STRATUM_SIZE,
    attribute_ami,
    find_strata,
    plot_strata,
    plot_thumbnails,
)
from cxr_spurious.robustness.subgroups import subgroup_auroc
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.stats.bootstrap import check_n_boot
from cxr_spurious.stats.multiplicity import adjust_column, family_note, read_settings
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.training.checkpoints import code_digests
from cxr_spurious.training.provenance import MODEL_DIGEST_COLUMN, model_digest

logger = logging.getLogger(__name__)

#: The project modules whose source decides a model summary's numbers (``summarise_model``
#: and what feeds it: the evaluation table, subgroup AUROC, the operating point and the
#: fairness gaps); their digests (``training.checkpoints.code_digests``) are recorded in
#: each summary row, so that the comparison reuses a study summary only under the code that
#: wrote it. The import closure of this module, less the pipeline wiring it pulls in
#: (``pipelines._recipe``, ``pipelines.robustness.pipeline``) and the modules that feed only
#: other outputs (``robustness.calibration``, ``robustness.strata``, ``debiasing.features``).
#: A test keeps this list equal to that rule.
SUMMARY_MODULES: tuple[str, ...] = (
    "cxr_spurious.errors",
    "cxr_spurious.io.atomic",
    "cxr_spurious.io.images",
    "cxr_spurious.io.masks",
    "cxr_spurious.io.safe_pickle",
    "cxr_spurious.logging_filters",
    "cxr_spurious.pipelines.robustness.nodes",
    "cxr_spurious.progress",
    "cxr_spurious.robustness.evaluation",
    "cxr_spurious.robustness.fairness",
    "cxr_spurious.robustness.subgroups",
    "cxr_spurious.sources.cache",
    "cxr_spurious.sources.contract",
    "cxr_spurious.stats.bootstrap",
    "cxr_spurious.stats.metrics",
    "cxr_spurious.stats.multiplicity",
    "cxr_spurious.stats.seed_param",
    "cxr_spurious.training.checkpoints",
    "cxr_spurious.training.provenance",
    "cxr_spurious.variants",
)

#: The parameter every robustness node's ``n_boot`` comes from (named in its errors).
N_BOOT_KEY = "robustness.n_boot"


def build_evaluation_table(
    manifest: pd.DataFrame,
    predictions: pd.DataFrame,
    tasks: list[str],
    attributes: list[str],
    age_bins: list[float],
    spurious: str | None = None,
    worst_group_attributes: list[str] | None = None,
    fairness_attribute: str | None = None,
    reliability_attribute: str | None = None,
    ami_attributes: list[str] | None = None,
) -> pd.DataFrame:
    """Predictions joined with labels and attributes (one row per image).

    The first node of the pipeline, so every attribute name of the ``robustness`` block is
    checked here against ``robustness.attributes`` and the table's columns
    (``check_attribute_parameters``), before any bootstrap runs.

    Raises:
        ParameterError: an attribute or spurious column not in the manifest, or a summary,
            reliability or AMI attribute that was not evaluated (naming the key).
    """
    table = evaluation_table(
        manifest, predictions, tasks, attributes, age_edges=age_bins, spurious=spurious
    )
    check_attribute_parameters(
        attributes,
        grouping_columns(table, attributes),
        worst_group_attributes=worst_group_attributes,
        fairness_attribute=fairness_attribute,
        reliability_attribute=reliability_attribute,
        ami_attributes=ami_attributes,
    )
    return table


def compute_subgroup_auroc(
    table: pd.DataFrame,
    tasks: list[str],
    attributes: list[str],
    spurious: str,
    min_per_class: int,
    n_boot: int,
    seed: int,
    ci_level: float,
    max_dropped_share: float = 0.05,
) -> pd.DataFrame:
    """Test-split AUROC overall, per subgroup, worst group, robust / reverse (tube).

    ``n_dropped`` counts undefined replicates; above ``max_dropped_share`` the overall AUROC
    is an error and a group statistic gets a NaN CI with a ``ci_note``.
    """
    seed = check_seed(seed, "robustness.seed")
    test = split_rows(table, "test")
    parts = [
        subgroup_auroc(
            test,
            t,
            attributes,
            spurious=spurious,
            min_per_class=int(min_per_class),
            n_boot=check_n_boot(n_boot, N_BOOT_KEY),
            seed=seed,
            level=float(ci_level),
            max_dropped_share=float(max_dropped_share),
        )
        for t in tasks
    ]
    return pd.concat(parts, ignore_index=True)


def choose_operating_points(
    table: pd.DataFrame,
    tasks: list[str],
    rule: str,
    target: float,
    rows: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Thresholds chosen on the validation split, one per task.

    Args:
        table: The evaluation table.
        tasks: Label columns.
        rule: ``robustness.operating_point``.
        target: ``robustness.operating_target``.
        rows: None: every validation row. Else a table with ``image_id``: only those
            validation rows (DFR's held-out half of val, ``refit_last_layer``'s
            ``dfr_held_out_val``: a model fitted on validation rows must not choose its
            threshold on them).

    Returns:
        ``task, rule, target, threshold, val_rows`` (``all`` or ``held_out``) and ``n_val``
        (the labelled validation rows the threshold was chosen on).

    Raises:
        ContractError: ``rows`` names images that are not validation rows of the table, or
            the rows chosen on have a single class.
    """
    val = split_rows(table, "val")
    scope = "all"
    if rows is not None:
        val, scope = _operating_rows(val, rows), "held_out"
    out = []
    for t in tasks:
        y, p = val[t].to_numpy(dtype=float), val[f"p_{t}"].to_numpy()
        try:
            threshold = choose_threshold(y, p, rule, float(target))  # type: ignore[arg-type]
        except ContractError as err:
            if rows is None:
                raise
            raise ContractError(
                f"'{t}' on the {len(val)} held-out validation rows (the rows the model was "
                f"not fitted on): {err}"
            ) from err
        row = {"task": t, "rule": rule, "target": float(target), "threshold": threshold}
        out.append({**row, "val_rows": scope, "n_val": int(np.isfinite(y).sum())})
    return pd.DataFrame(out)


def _operating_rows(val: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The validation rows whose ``image_id`` ``rows`` lists (checked: all validation rows).

    Raises:
        ContractError: ``rows`` lacks ``image_id``, is empty, or names images that are not
            validation rows of the evaluation table.
    """
    if "image_id" not in rows.columns:
        raise ContractError(
            f"operating-point rows: need an 'image_id' column; got {list(rows.columns)}"
        )
    ids = rows["image_id"].astype(str)
    foreign = sorted(set(ids) - set(val["image_id"].astype(str)))
    if ids.empty or foreign:
        raise ContractError(
            f"operating-point rows: {len(foreign)} of {len(ids)} image ids are not validation "
            f"rows of the evaluation table (e.g. {foreign[:3]}); expected a non-empty subset "
            "of the val split"
        )
    return val[val["image_id"].astype(str).isin(set(ids))].reset_index(drop=True)


#: Columns of ``fairness_gaps`` that split a multiplicity family (``family: metric``): one
#: family per gap metric and task, over the attributes tested.
FAIRNESS_FAMILY: tuple[str, ...] = ("metric", "task")


def compute_fairness(
    table: pd.DataFrame,
    operating_points: pd.DataFrame,
    attributes: list[str],
    min_per_class: int,
    n_boot: int,
    seed: int,
    ci_level: float,
    max_dropped_share: float = 0.05,
    multiplicity: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group rates and gaps on the test split at the validation thresholds.

    Each gap row has the percentile bootstrap interval of the max - min gap (``lo`` /
    ``hi``, biased away from 0) and ``p_no_gap``, the permutation test of "no gap"
    (``n_boot`` permutations of the group labels over patients, seeded by ``seed``;
    ``fairness.fairness_tables``). ``p_no_gap_adj`` (after it) is that p-value adjusted
    for the attributes tested: ``robustness.multiplicity`` (``method`` holm | bonferroni |
    fdr_bh | none, ``family`` metric: each gap metric within each task, over the
    attributes | table: every row), Holm per metric and task when it is not set;
    ``p_adj_note`` says which. The model summary's ``*_p_no_gap`` stays unadjusted: it is
    the one test of the pre-specified ``robustness.fairness_attribute``.
    """
    method, family = read_settings(multiplicity, "robustness.multiplicity")
    seed = check_seed(seed, "robustness.seed")
    test = split_rows(table, "test")
    by, gaps = [], []
    for op in operating_points.itertuples():
        b, g = fairness_tables(
            test,
            op.task,
            op.threshold,
            attributes,
            min_per_class=int(min_per_class),
            n_boot=check_n_boot(n_boot, N_BOOT_KEY),
            seed=seed,
            level=float(ci_level),
            max_dropped_share=float(max_dropped_share),
        )
        by.append(b.assign(threshold=op.threshold))
        gaps.append(g.assign(threshold=op.threshold))
    table = adjust_column(
        pd.concat(gaps, ignore_index=True),
        "p_no_gap",
        method=method,
        family=family,
        groups=FAIRNESS_FAMILY,
        out_column="p_no_gap_adj",
        source="fairness_gaps",
    )
    table["p_adj_note"] = family_note(method, family, FAIRNESS_FAMILY).replace(
        "p_adj", "p_no_gap_adj", 1
    )
    return pd.concat(by, ignore_index=True), table


def compute_calibration(
    table: pd.DataFrame,
    tasks: list[str],
    attributes: list[str],
    n_bins: int,
    min_rows: int,
    n_boot: int,
    seed: int,
    ci_level: float,
    max_dropped_share: float = 0.05,
) -> pd.DataFrame:
    """ECE overall and per group on the test split, with CIs (and ``ece_dropped``)."""
    seed = check_seed(seed, "robustness.seed")
    test = split_rows(table, "test")
    return pd.concat(
        [
            calibration_table(
                test,
                t,
                attributes,
                n_bins=int(n_bins),
                min_rows=int(min_rows),
                n_boot=check_n_boot(n_boot, N_BOOT_KEY),
                seed=seed,
                level=float(ci_level),
                max_dropped_share=float(max_dropped_share),
            )
            for t in tasks
        ],
        ignore_index=True,
    )


def plot_reliability_diagram(
    table: pd.DataFrame,
    tasks: list[str],
    attribute: str,
    n_bins: int,
    min_rows: int = MIN_ROWS,
) -> Figure:
    """Reliability diagram of the first task on the test split, one line per group.

    ``min_rows`` (``robustness.calibration_min_rows``) leaves out the groups that
    ``compute_calibration`` gives no ECE, named under the plot.

    Raises:
        ParameterError: ``attribute`` (``robustness.reliability_attribute``) is not a column.
    """
    check_attribute_parameters([], grouping_columns(table, []), reliability_attribute=attribute)
    return plot_reliability(
        split_rows(table, "test"), tasks[0], attribute, n_bins=int(n_bins), min_rows=int(min_rows)
    )


def find_hidden_strata(
    table: pd.DataFrame,
    embeddings: pd.DataFrame,
    operating_points: pd.DataFrame,
    strata: dict,
    ami_attributes: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cluster the test embeddings of each true class of the first task.

    The rows are clustered in ``image_id`` order (``find_strata``'s ``image_ids``), so the
    clusters and flags do not depend on the order of the manifest.

    Returns:
        ``(assignments: image_id, class, cluster, x, y + attributes; clusters table; AMI table)``.

    Raises:
        ParameterError: an AMI attribute (``robustness.ami_attributes``) is not a column.
    """
    seed = check_seed(strata.get("seed", 0), "robustness.strata.seed")
    check_attribute_parameters([], grouping_columns(table, []), ami_attributes=ami_attributes)
    test = split_rows(table, "test")
    op = operating_points.iloc[0]
    task = str(op["task"])
    x = embedding_matrix(test, embeddings)
    y = test[task].to_numpy(dtype=float)
    ids, coords, clusters = find_strata(
        y,
        test[f"p_{task}"].to_numpy(),
        x,
        float(op["threshold"]),
        reducer=strata.get("reducer", "pca"),
        n_components=int(strata.get("n_components", 10)),
        clusterer=strata.get("clusterer", "kmeans"),
        k=strata.get("k", [2, 3, 4, 5]),
        margin=float(strata.get("margin", 0.1)),
        min_stratum_size=int(strata.get("min_stratum_size", MIN_STRATUM_SIZE)),
        seed=seed,
        image_ids=test["image_id"].to_numpy(),  # the canonical order: not the manifest's
    )
    present = list(ami_attributes)
    assign = test[["image_id", task, *present]].assign(cluster=ids, x=coords[:, 0], y=coords[:, 1])
    ami = attribute_ami(ids, y, test[present])
    logger.info(
        "hidden strata (%s): %d clusters, %d flagged",
        task,
        len(clusters),
        int(clusters["flagged"].sum()) if len(clusters) else 0,
    )
    return assign, clusters.assign(task=task), ami.assign(task=task)


def plot_hidden_strata(assignments: pd.DataFrame, ami_attributes: list[str]) -> Figure:
    """Embedding scatter per class coloured by cluster and by each attribute."""
    task = assignments.columns[1]
    present = [a for a in ami_attributes if a in assignments.columns]
    return plot_strata(
        assignments[["x", "y"]].to_numpy(),
        assignments["cluster"].to_numpy(),
        assignments[task].to_numpy(dtype=float),
        assignments[present],
        title=f"hidden strata: {task}",
    )


def plot_flagged_thumbnails(
    assignments: pd.DataFrame, clusters: pd.DataFrame, image_cache: ImageCache, per_cluster: int
) -> Figure:
    """Thumbnails of the first ``per_cluster`` images of each flagged cluster."""
    flagged = clusters.loc[clusters["flagged"], "cluster"].tolist() if len(clusters) else []
    images = {}
    for cid in flagged:
        ids = (
            assignments.loc[assignments["cluster"] == cid, "image_id"]
            .head(int(per_cluster))
            .tolist()
        )
        images[int(cid)] = np.asarray(image_cache.images[image_cache.rows(ids)])
    return plot_thumbnails(images, title="flagged clusters")


def summarise_model(
    subgroup: pd.DataFrame,
    gaps: pd.DataFrame,
    worst_attributes: list[str],
    fairness_attribute: str,
    attributes: list[str],
    settings: dict[str, Any] | None = None,
    test_metrics: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per task: overall, worst-group and robust AUROC, FNR gap, EOD (with CIs).

    The gaps (max - min over the groups of ``fairness_attribute``) come with the percentile
    interval of that max - min gap (``fnr_gap_lo`` / ``_hi``, biased away from 0: it
    excludes 0 even where the groups do not differ) and the permutation p-value of "no
    gap" (``fnr_gap_p_no_gap``, ``equalized_odds_difference_p_no_gap``; the gaps table's
    ``p_no_gap``, NaN where that table has none), which is the test of a disparity.

    The worst-group AUROC is the lowest per-attribute worst group over ``worst_attributes``.
    With ``settings`` (``params:robustness``) each row records the settings it was computed
    under (``robustness_settings``, ``evaluation.summary_settings``) and the source digests
    of ``SUMMARY_MODULES``, for runs that reuse the summary (the comparison's
    ``check_study_summaries``). With ``test_metrics`` (the model's) each row records which
    training of the model it describes (``model_digest``, ``training.outputs.model_digest``):
    a model retrained since (``kedro run --pipeline training``, ``torchrun``) no longer
    matches, and the comparison refuses to reuse the summary and the report says so.

    Args:
        subgroup: ``subgroup_auroc``.
        gaps: ``fairness_gaps``.
        worst_attributes: ``robustness.worst_group_attributes``.
        fairness_attribute: ``robustness.fairness_attribute``.
        attributes: ``robustness.attributes`` (the evaluated ones).
        settings: ``params:robustness``.
        test_metrics: ``test_metrics`` of the model the predictions came from.

    Raises:
        ParameterError: a worst-group or fairness attribute that was not evaluated.
    """
    check_attribute_parameters(
        attributes, worst_group_attributes=worst_attributes, fairness_attribute=fairness_attribute
    )
    rows = []
    for task in subgroup["task"].unique():
        s = subgroup[subgroup["task"] == task]
        row: dict[str, object] = {"task": task}
        row.update(_pick(s, (s["metric"] == "auroc") & (s["attribute"] == "all"), "auroc"))
        worst = s[(s["metric"] == "worst_group_auroc") & s["attribute"].isin(worst_attributes)]
        row.update(
            _pick(
                worst,
                worst["estimate"] == worst["estimate"].min()
                if len(worst)
                else worst["estimate"].notna(),
                "worst_group_auroc",
            )
        )
        row["worst_group"] = (
            worst.loc[worst["estimate"].idxmin(), "attribute"]
            if len(worst) and worst["estimate"].notna().any()
            else None
        )
        row.update(_pick(s, s["metric"] == "robust_auroc", "robust_tube_auroc"))
        g = gaps[(gaps["task"] == task) & (gaps["attribute"] == fairness_attribute)]
        for gap in ("fnr_gap", "equalized_odds_difference"):
            row.update(_pick(g, g["metric"] == gap, gap))
            row[f"{gap}{P_NO_GAP_SUFFIX}"] = _pick_p_no_gap(g, g["metric"] == gap)
        if settings is not None:
            row[SETTINGS_COLUMN] = summary_settings(settings, code=code_digests(SUMMARY_MODULES))
        if test_metrics is not None:
            row[MODEL_DIGEST_COLUMN] = model_digest(test_metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def combine_robustness_summary(**summaries: pd.DataFrame) -> pd.DataFrame:
    """Stack per-model summaries with a ``model`` column (keyword = model name); the
    settings record of each row stays in the per-model files."""
    return pd.concat(
        [s.assign(model=name) for name, s in summaries.items()], ignore_index=True
    ).pipe(lambda d: d[["model", *[c for c in d.columns if c not in ("model", SETTINGS_COLUMN)]]])


#: The summary column of a gap's permutation p-value: ``fnr_gap_p_no_gap``.
P_NO_GAP_SUFFIX = "_p_no_gap"


def _pick_p_no_gap(frame: pd.DataFrame, mask: pd.Series) -> float:
    """The ``p_no_gap`` of the first row of ``mask`` (NaN: no row, or a table without it)."""
    sel = frame[mask]
    if sel.empty or "p_no_gap" not in sel.columns:
        return float("nan")
    return float(sel["p_no_gap"].iloc[0])


def _pick(frame: pd.DataFrame, mask: pd.Series, name: str) -> dict[str, float]:
    sel = frame[mask]
    if sel.empty:
        return {name: np.nan, f"{name}_lo": np.nan, f"{name}_hi": np.nan}
    r = sel.iloc[0]
    return {name: float(r["estimate"]), f"{name}_lo": float(r["lo"]), f"{name}_hi": float(r["hi"])}
