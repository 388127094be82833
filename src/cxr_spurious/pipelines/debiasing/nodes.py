"""Nodes of the ``debiasing`` pipeline (thin wrappers of ``cxr_spurious.debiasing``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.debiasing.features import embedding_matrix, thumbnails
from cxr_spurious.debiasing.groups import assign_groups, check_groups, group_keys
from cxr_spurious.debiasing.jtt import error_set
from cxr_spurious.debiasing.report import group_count_table, plot_group_counts
from cxr_spurious.debiasing.resampling import jtt_upweight_value, resample_manifest
from cxr_spurious.errors import ParameterError
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.stats.seed_param import check_seed

logger = logging.getLogger(__name__)


def _primary_task(tasks: list[str]) -> str:
    if not tasks:
        raise ParameterError(
            "debiasing.tasks", "needs at least one task (the label used for grouping)"
        )
    return str(tasks[0])


def assign_row_groups(
    manifest: pd.DataFrame,
    group_by: list[str],
    age_bins: list[float],
    cross_label: bool,
    tasks: list[str],
    strategy: str,
    min_patients: int,
) -> pd.DataFrame:
    """Group id and key of every manifest row (``group_balance`` always crosses the label).

    Returns:
        ``image_id, group, group_key`` in manifest order.
    """
    task = _primary_task(tasks)
    keys = group_keys(
        manifest,
        group_by,
        task=task,
        cross_label=cross_label or strategy == "group_balance",
        age_edges=age_bins,
    )
    if strategy != "none":
        check_groups(manifest, keys, task, min_patients=int(min_patients))
    ids, _ = assign_groups(keys)
    logger.info("debiasing: %d groups over %s", int(ids.max()) + 1, group_by)
    return pd.DataFrame(
        {
            "image_id": manifest["image_id"].to_numpy(),
            "group": ids.to_numpy(),
            "group_key": keys.to_numpy(),
        }
    )


def compute_thumbnail_features(
    manifest: pd.DataFrame, image_cache: ImageCache, strategy: str, size: int
) -> pd.DataFrame:
    """Thumbnail pixels of the train images (``image_id, e0..``); empty unless clustering."""
    if strategy != "cluster_downsample":
        return pd.DataFrame({"image_id": pd.Series(dtype=str)})
    ids = manifest.loc[manifest["split"] == "train", "image_id"].astype(str).tolist()
    feats = thumbnails(np.asarray(image_cache.images[image_cache.rows(ids)]), int(size))
    return pd.DataFrame({"image_id": ids, **{f"e{i}": feats[:, i] for i in range(feats.shape[1])}})


def resample_train_rows(
    manifest: pd.DataFrame,
    groups: pd.DataFrame,
    features: pd.DataFrame,
    strategy: str,
    target: int | str,
    seed: int,
    n_clusters: int,
) -> pd.DataFrame:
    """The resampled manifest (train rows resampled; ``weight``, ``augment``, ``group``)."""
    seed = check_seed(seed, "debiasing.seed")
    x = (
        embedding_matrix(manifest, features, split="train")
        if strategy == "cluster_downsample"
        else None
    )
    out = resample_manifest(
        manifest,
        groups["group"].to_numpy(),
        strategy,
        target=target,
        seed=seed,
        features=x,
        n_clusters=int(n_clusters),
    )
    out.attrs["tasks"] = list(manifest.attrs.get("tasks", []))
    logger.info(
        "debiasing %s: %d -> %d train rows",
        strategy,
        int((manifest["split"] == "train").sum()),
        int((out["split"] == "train").sum()),
    )
    return out


def upweight_erm_errors(
    manifest: pd.DataFrame,
    groups: pd.DataFrame,
    erm_predictions: pd.DataFrame,
    tasks: list[str],
    threshold: float,
    upweight: float,
    mode: str,
) -> pd.DataFrame:
    """JTT: the resampled manifest where the ERM model's train errors are upweighted.

    ``upweight`` is checked for ``mode`` before anything is read: a whole number of copies
    in ``duplicate`` mode, kept as a float weight in ``weight`` mode (never truncated).

    Raises:
        ParameterError: a bad threshold, upweight or mode (``debiasing.jtt_*``).
    """
    if mode in ("duplicate", "weight"):
        upweight = jtt_upweight_value(upweight, mode)
    errors = error_set(manifest, erm_predictions, _primary_task(tasks), threshold=float(threshold))
    logger.info("jtt (%s): %d train errors upweighted x%g", mode, int(errors.sum()), upweight)
    out = resample_manifest(
        manifest,
        groups["group"].to_numpy(),
        "jtt",
        errors=errors,
        jtt_upweight=upweight,
        jtt_mode=mode,  # type: ignore[arg-type]
    )
    out.attrs["tasks"] = list(manifest.attrs.get("tasks", []))
    return out


def summarise_group_counts(
    manifest: pd.DataFrame, groups: pd.DataFrame, resampled_manifest: pd.DataFrame
) -> pd.DataFrame:
    """Rows, patients and weight per train group before and after."""
    names = (
        groups.loc[groups["group"] >= 0]
        .drop_duplicates("group")
        .set_index("group")["group_key"]
        .to_dict()
    )
    return group_count_table(
        manifest.assign(group=groups["group"].to_numpy()), resampled_manifest, names
    )


def plot_group_count_bars(group_counts: pd.DataFrame, strategy: str) -> Figure:
    """Bar chart of the group counts before and after."""
    return plot_group_counts(group_counts, title=f"train group sizes: {strategy}")
