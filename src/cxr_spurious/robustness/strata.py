"""Hidden stratification (Oakden-Rayner et al. 2020): cluster a model's embeddings within
each true class and look for clusters the model fails on.

Per class: PCA (seeded) -> k-means or a Gaussian mixture (k fixed, or chosen by the
silhouette score over a range) -> per cluster: size, error rate at the operating point,
mean score, AUROC of the cluster against all rows of the other class; a cluster is flagged
when it has at least ``min_stratum_size`` rows and its error rate exceeds the class's by
``margin`` (k-means readily gives an outlier its own cluster, and one misclassified image
is an error rate of 1, not a hidden stratum). A class with fewer than ``MIN_CLASS_SIZE``
rows is not clustered, with a warning. Adjusted mutual information (AMI) between clusters
and known attributes tells whether the clusters recover them.

Row order does not matter: each class's rows are put in a canonical order (by image id
where the caller gives them, else by their embedding values) before reduction and
clustering, and the labels are mapped back. k-means++ seeding and the silhouette choice of
k otherwise depend on the order the rows come in, so the same images listed in another
order (a reordered manifest) could give another k and other flags under the same seed.
k-means keeps the best of ``KMEANS_N_INIT`` seedings and the Gaussian mixture the best of
``GMM_N_INIT`` initialisations, so that the seed matters less too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_mutual_info_score, silhouette_score
from sklearn.mixture import GaussianMixture

from cxr_spurious.errors import ParameterError, check_integer, unknown_name_error
from cxr_spurious.stats.metrics import auroc

logger = logging.getLogger(__name__)

REDUCERS = ("pca", "umap")
CLUSTERERS = ("kmeans", "gmm")
#: Default fewest rows of a cluster that can be flagged (``robustness.strata.min_stratum_size``).
MIN_STRATUM_SIZE = 5
#: Fewest rows of a class that is clustered (fewer cannot be split into scored clusters).
MIN_CLASS_SIZE = 3
#: k-means initialisations kept the best of (was 4: on a weakly clustered class the chosen
#: k then followed the seeding as much as the data).
KMEANS_N_INIT = 20
#: Gaussian-mixture initialisations kept the best of (each costs a k-means and an EM fit).
GMM_N_INIT = 5


def reduce(
    x: np.ndarray, *, reducer: str = "pca", n_components: int = 10, seed: int = 0
) -> np.ndarray:
    """Reduce embeddings to ``n_components`` (capped by the data) with PCA or UMAP.

    Raises:
        ParameterError: unknown reducer, or ``umap`` without umap-learn installed.
    """
    if reducer not in REDUCERS:
        raise unknown_name_error("reducer", reducer, REDUCERS, key="robustness.strata.reducer")
    dims = max(1, min(n_components, x.shape[1], x.shape[0] - 1))
    if reducer == "umap":
        try:
            import umap  # type: ignore[import-not-found]
        except ModuleNotFoundError as exc:
            raise ParameterError(
                "robustness.strata.reducer",
                "umap needs the umap-learn package, which is not installed; use 'pca'",
            ) from exc
        return umap.UMAP(n_components=dims, random_state=seed).fit_transform(x)
    return PCA(n_components=dims, random_state=seed).fit_transform(x)


def cluster(
    z: np.ndarray,
    *,
    clusterer: str = "kmeans",
    k: int | Sequence[int] = (2, 3, 4, 5),
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Cluster ``z``; ``k`` fixed or the silhouette-best of a range.

    The result depends on the order of the rows of ``z`` (k-means++ seeding, the mixture's
    initialisation); ``find_strata`` passes them in a canonical order.

    Returns:
        Labels and the chosen k.
    """
    if clusterer not in CLUSTERERS:
        raise unknown_name_error(
            "clusterer", clusterer, CLUSTERERS, key="robustness.strata.clusterer"
        )
    candidates = [int(k)] if isinstance(k, int | np.integer) else [int(v) for v in k]
    candidates = [c for c in candidates if 1 <= c < len(z)] or [1]
    best: tuple[float, np.ndarray, int] | None = None
    for c in candidates:
        if clusterer == "kmeans":
            labels = KMeans(n_clusters=c, n_init=KMEANS_N_INIT, random_state=seed).fit_predict(z)
        else:
            labels = (
                GaussianMixture(n_components=c, n_init=GMM_N_INIT, random_state=seed)
                .fit(z)
                .predict(z)
            )
        score = silhouette_score(z, labels) if 1 < np.unique(labels).size < len(z) else -1.0
        if best is None or score > best[0]:
            best = (score, labels, c)
    assert best is not None
    return best[1], best[2]


def find_strata(
    y: np.ndarray,
    p: np.ndarray,
    x: np.ndarray,
    threshold: float,
    *,
    reducer: str = "pca",
    n_components: int = 10,
    clusterer: Literal["kmeans", "gmm"] = "kmeans",
    k: int | Sequence[int] = (2, 3, 4, 5),
    margin: float = 0.1,
    min_stratum_size: int = MIN_STRATUM_SIZE,
    seed: int = 0,
    image_ids: Sequence[object] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Cluster each true class and score the clusters.

    The rows of each class are reduced and clustered in a canonical order (``image_ids``
    sorted, else the embedding rows sorted) and the results mapped back to the caller's
    rows, so the same images in another row order give the same clusters and flags.

    Args:
        y: Labels 1 / 0 (NaN rows get cluster -1).
        p: Scores.
        x: Embeddings ``(n, d)``.
        threshold: Operating point (positive when ``p >= threshold``).
        reducer: ``pca`` or ``umap``.
        n_components: Reduced dimensions.
        clusterer: ``kmeans`` or ``gmm``.
        k: Number of clusters per class, or candidates for the silhouette.
        margin: Flag a cluster when its error rate > class error rate + margin.
        min_stratum_size: Fewest rows of a flagged cluster (>= 1); smaller clusters keep
            their row in the table but are never flagged.
        seed: Seed of reduction and clustering.
        image_ids: Unique id of each row (the canonical order); None: the rows are ordered
            by their embedding values (identical rows are interchangeable).

    Returns:
        ``(cluster id per row (class * 100 + cluster), 2-D coordinates per row, table)``;
        table rows: ``class, cluster, size, error_rate, class_error_rate, mean_score,
        auroc, flagged``. A class with fewer than ``MIN_CLASS_SIZE`` rows has no rows
        (cluster id -1, NaN coordinates) and a warning.

    Raises:
        ParameterError: ``min_stratum_size`` < 1.
        ValueError: ``image_ids`` not one unique id per row.
    """
    # the fewest rows of a flagged cluster
    min_stratum_size = check_integer(min_stratum_size, "robustness.strata.min_stratum_size", low=1)
    yy = np.asarray(y, dtype=float)
    x = np.asarray(x)
    order = canonical_order(x, image_ids)
    pred = np.asarray(p, dtype=float) >= threshold
    ids = np.full(len(yy), -1, dtype=np.int64)
    coords = np.full((len(yy), 2), np.nan)
    rows = []
    for cls in (0, 1):
        members = order[yy[order] == cls]  # the class's rows in canonical order
        other = order[yy[order] == 1 - cls]
        if members.size < MIN_CLASS_SIZE:
            logger.warning(
                "hidden strata: class %d (%s) has %d labelled row(s), fewer than %d; not "
                "clustered (no cluster rows, no flags for it)",
                cls,
                "positives" if cls else "negatives",
                members.size,
                MIN_CLASS_SIZE,
            )
            continue
        z = reduce(x[members], reducer=reducer, n_components=n_components, seed=seed)
        coords[members, : min(2, z.shape[1])] = z[:, :2]
        labels, _ = cluster(z, clusterer=clusterer, k=k, seed=seed)
        ids[members] = cls * 100 + labels
        wrong = pred[members] != bool(cls)
        class_err = float(wrong.mean())
        for c in np.unique(labels):
            sel = members[labels == c]
            err = float(wrong[labels == c].mean())
            both = np.r_[sel, other]
            rows.append(
                {
                    "class": cls,
                    "cluster": int(cls * 100 + c),
                    "size": int(sel.size),
                    "error_rate": err,
                    "class_error_rate": class_err,
                    "mean_score": float(np.mean(np.asarray(p)[sel])),
                    "auroc": auroc(yy[both], np.asarray(p, dtype=float)[both]),
                    "flagged": bool(sel.size >= min_stratum_size and err > class_err + margin),
                }
            )
    return (
        ids,
        coords,
        pd.DataFrame(
            rows,
            columns=[
                "class",
                "cluster",
                "size",
                "error_rate",
                "class_error_rate",
                "mean_score",
                "auroc",
                "flagged",
            ],
        ),
    )


def canonical_order(
    x: np.ndarray, image_ids: Sequence[object] | np.ndarray | None = None
) -> np.ndarray:
    """Row indices in an order that does not depend on the order the rows come in.

    By ``image_ids`` (as text) where given, else lexicographically by the rows of ``x``
    (rows that are equal are interchangeable for clustering).

    Raises:
        ValueError: ``image_ids`` has another length than ``x`` or repeats an id.
    """
    if image_ids is None:
        return np.lexsort(np.asarray(x, dtype=float).T[::-1]) if len(x) else np.arange(0)
    ids = np.asarray(image_ids).astype(str)
    if ids.shape != (len(x),) or np.unique(ids).size != ids.size:
        raise ValueError(
            f"image_ids: need one unique id per row ({len(x)} rows); got {ids.size} ids, "
            f"{np.unique(ids).size} distinct"
        )
    return np.argsort(ids, kind="stable")


def attribute_ami(clusters: np.ndarray, y: np.ndarray, attributes: pd.DataFrame) -> pd.DataFrame:
    """AMI between the clusters and each attribute, within each class.

    Returns:
        Rows ``class, attribute, ami, n``.
    """
    rows = []
    for cls in (0, 1):
        in_cls = (np.asarray(y, dtype=float) == cls) & (clusters >= 0)
        for attr in attributes.columns:
            vals = attributes[attr].to_numpy()
            ok = in_cls & pd.notna(vals)
            if ok.sum() < 2:
                continue
            ami = adjusted_mutual_info_score(vals[ok].astype(str), clusters[ok])
            rows.append({"class": cls, "attribute": attr, "ami": float(ami), "n": int(ok.sum())})
    return pd.DataFrame(rows, columns=["class", "attribute", "ami", "n"])


def plot_strata(
    coords: np.ndarray,
    clusters: np.ndarray,
    y: np.ndarray,
    colour_by: pd.DataFrame,
    title: str = "",
) -> Figure:
    """Scatter of the 2-D coordinates per class, coloured by cluster and by each attribute."""
    cols = ["cluster", *colour_by.columns]
    fig, axes = plt.subplots(2, len(cols), figsize=(3.2 * len(cols), 6.4), squeeze=False)
    for r, cls in enumerate((0, 1)):
        sel = np.asarray(y, dtype=float) == cls
        for c, name in enumerate(cols):
            ax = axes[r, c]
            values = clusters[sel] if name == "cluster" else colour_by[name].to_numpy()[sel]
            for v in sorted(pd.unique(values), key=str):
                pts = coords[sel][values == v] if pd.notna(v) else coords[sel][pd.isna(values)]
                ax.scatter(pts[:, 0], pts[:, 1], s=5, label=str(v))
            ax.set_title(f"y={cls}: {name}", fontsize=8)
            ax.legend(fontsize=6, markerscale=2)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_thumbnails(images: dict[int, np.ndarray], title: str = "") -> Figure:
    """A row of thumbnails per flagged cluster (``{cluster: (n, h, w) uint8}``)."""
    n_rows = max(1, len(images))
    n_cols = max([len(v) for v in images.values()] or [1])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.4 * n_cols, 1.5 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (cid, imgs) in enumerate(sorted(images.items())):
        for c, img in enumerate(imgs):
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[r, 0].set_title(f"cluster {cid}", fontsize=7, loc="left")
    if not images:
        axes[0, 0].text(0.5, 0.5, "no flagged cluster", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
