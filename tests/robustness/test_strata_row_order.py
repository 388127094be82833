"""Hidden strata do not depend on the order the rows come in.

k-means++ seeding (and a mixture's initialisation) and the silhouette choice of k follow the
row order; on a weakly clustered class the same images in another order gave another k and
other flags under the same seed. ``find_strata`` now clusters each class in a canonical
order (image ids, else the embedding rows) and maps the labels back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.robustness.strata import canonical_order, find_strata

N = 400


def _weak_strata() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A weakly separated hidden subgroup (30 %) among positives, 32-dimensional noise."""
    rng = np.random.default_rng(0)
    y = (rng.random(N) < 0.5).astype(float)
    hidden = rng.random(N) < 0.3
    x = rng.normal(size=(N, 32))
    x[:, 0] += 1.2 * hidden
    x[:, 1] += 1.0 * (rng.random(N) < 0.5)
    p = np.where(y == 1, np.where(hidden, 0.45, 0.65), 0.35) + rng.normal(0, 0.15, N)
    ids = np.array([f"img{k:04d}" for k in range(N)])
    return y, np.clip(p, 0, 1), x, ids


def _run(order: np.ndarray, clusterer: str, with_ids: bool) -> tuple[np.ndarray, pd.DataFrame]:
    """Clusters per image (in the original order) and the table, for rows given in ``order``."""
    y, p, x, ids = _weak_strata()
    kw = {"image_ids": ids[order]} if with_ids else {}
    labels, coords, table = find_strata(
        y[order], p[order], x[order], 0.5, clusterer=clusterer, seed=0, **kw
    )  # type: ignore[arg-type]
    back = np.empty(N, dtype=np.int64)
    back[order] = labels
    assert np.isfinite(coords).all()
    return back, table


@pytest.mark.parametrize(
    ("clusterer", "with_ids"), [("kmeans", True), ("kmeans", False), ("gmm", True)]
)
def test_same_images_in_another_order_give_the_same_strata(clusterer: str, with_ids: bool) -> None:
    base, table = _run(np.arange(N), clusterer, with_ids)
    for seed in (101, 103):  # orders that gave another k and more flags before (k-means)
        order = np.random.default_rng(seed).permutation(N)
        labels, other = _run(order, clusterer, with_ids)
        np.testing.assert_array_equal(labels, base)
        pd.testing.assert_frame_equal(other, table)


def test_canonical_order_sorts_by_id_or_by_rows_and_refuses_repeated_ids() -> None:
    x = np.array([[2.0, 0.0], [1.0, 5.0], [1.0, 2.0]])
    np.testing.assert_array_equal(canonical_order(x, ["c", "a", "b"]), [1, 2, 0])
    np.testing.assert_array_equal(canonical_order(x), [2, 1, 0])  # by first column, then next
    with pytest.raises(ValueError, match="one unique id per row"):
        canonical_order(x, ["a", "a", "b"])
    with pytest.raises(ValueError, match="one unique id per row"):
        canonical_order(x, ["a", "b"])
