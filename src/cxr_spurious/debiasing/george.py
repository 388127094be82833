"""Discovered groups (GEORGE, Sohoni et al. 2020): cluster ERM embeddings within each class.

A library function: no pipeline, node or parameter calls ``discover_groups`` (the
comparison's Group DRO uses the known groups of ``comparison.debiasing.group_by``). Its
ids have the form of the manifest's ``group`` column, so a caller can write them there for
Group DRO when the true groups are unknown. Its errors name its own arguments
(``n_clusters``, ``n_components``): no parameter feeds it (``debiasing.n_clusters`` is
``cluster_downsample``'s).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from cxr_spurious.errors import ParameterError

from .features import embedding_matrix
from .groups import NO_GROUP


def discover_groups(
    manifest: pd.DataFrame,
    embeddings: pd.DataFrame,
    task: str,
    *,
    n_clusters: int = 2,
    n_components: int = 8,
    seed: int = 0,
) -> pd.Series:
    """Per-class k-means clusters of the ERM embeddings, as group ids.

    The clusters are fitted on the train rows of each class and every labelled row (all
    splits) is assigned to its nearest centroid; group id = ``class * n_clusters +
    cluster``; rows with a missing label get ``-1``.

    Args:
        manifest: The manifest.
        embeddings: ``image_id, e0..`` for every manifest row.
        task: The label column.
        n_clusters: Clusters per class.
        n_components: PCA dimensions before clustering (capped by the data).
        seed: Seed of PCA and k-means.

    Returns:
        Group ids aligned with the manifest.

    Raises:
        ParameterError: ``n_clusters`` below 1, or above a class's number of train rows
            (the error names the argument ``n_clusters``); ``n_components`` not an integer
            >= 1 (naming ``n_components``).
    """
    if n_clusters < 1:
        raise ParameterError(
            "n_clusters", f"discover_groups needs n_clusters >= 1, got {n_clusters}"
        )
    if (
        isinstance(n_components, bool)
        or not isinstance(n_components, int | np.integer)
        or n_components < 1
    ):  # 0 or a negative count used to become 1 dimension without a word
        raise ParameterError(
            "n_components",
            f"discover_groups needs an integer n_components >= 1, got {n_components!r}",
        )
    x = embedding_matrix(manifest, embeddings)
    y = manifest[task].to_numpy(dtype=float)
    train = manifest["split"].to_numpy() == "train"
    out = np.full(len(manifest), NO_GROUP, dtype=np.int64)
    for cls in (0, 1):
        fit_rows = np.flatnonzero(train & (y == cls))
        all_rows = np.flatnonzero(y == cls)
        if fit_rows.size < n_clusters:
            raise ParameterError(
                "n_clusters",
                f"discover_groups: class {cls} of '{task}' has {fit_rows.size} train rows, "
                f"fewer than n_clusters={n_clusters}",
            )
        dims = max(1, min(n_components, x.shape[1], fit_rows.size - 1))
        pca = PCA(n_components=dims, random_state=seed).fit(x[fit_rows])
        km = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit(
            pca.transform(x[fit_rows])
        )
        out[all_rows] = cls * n_clusters + km.predict(pca.transform(x[all_rows]))
    return pd.Series(out, index=manifest.index, name="group")
