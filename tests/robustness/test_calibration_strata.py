"""Calibration (against scikit-learn's calibration_curve) and hidden stratification."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import adjusted_mutual_info_score
from tests.robustness.robust_fixtures import TASK, make_table

from cxr_spurious.errors import ParameterError
from cxr_spurious.robustness.calibration import (
    calibration_table,
    expected_calibration_error,
    plot_reliability,
    reliability_bins,
)
from cxr_spurious.robustness.strata import (
    attribute_ami,
    cluster,
    find_strata,
    plot_strata,
    plot_thumbnails,
    reduce,
)


def test_reliability_bins_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    p = np.r_[rng.random(300), 1.0, 0.0]
    y = (rng.random(302) < p).astype(float)
    bins = reliability_bins(y, p, 10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(bins["fraction_positive"], prob_true)
    np.testing.assert_allclose(bins["mean_score"], prob_pred)
    ece = expected_calibration_error(y, p, 10)
    assert np.isclose(ece, np.sum(bins["count"] / 302 * np.abs(prob_true - prob_pred)))
    assert expected_calibration_error(np.ones(10), np.zeros(10)) == 1.0
    with pytest.raises(ParameterError, match="calibration_bins"):
        reliability_bins(y, p, 0)


@pytest.mark.parametrize("n_bins", [10, 4, 8])
def test_scores_on_a_bin_edge_fall_in_the_lower_bin_as_in_sklearn(n_bins: int) -> None:
    # every inner edge of the bins (0.5 is a logit of 0), each next to scores inside bins
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    p = np.r_[edges, edges[1:-1] - 0.01, edges[1:-1] + 0.01, 0.5, 0.5]
    y = (np.arange(p.size) % 3 == 0).astype(float)
    bins = reliability_bins(y, p, n_bins)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(bins["fraction_positive"], prob_true)
    np.testing.assert_allclose(bins["mean_score"], prob_pred)
    # bin m holds (m / n, (m + 1) / n]: the edge m / n sits in bin m - 1
    lower = reliability_bins(np.ones(1), np.array([edges[1]]), n_bins)
    assert lower["bin"].tolist() == [0]
    # two scores at 0.5 and one at 0.45 share a bin with 10 bins: ECE |2/3 - 0.4833...|
    ece = expected_calibration_error(np.array([1.0, 1.0, 0.0]), np.array([0.5, 0.5, 0.45]), 10)
    assert ece == pytest.approx(abs(2 / 3 - (0.5 + 0.5 + 0.45) / 3))


def test_calibration_table_and_figure() -> None:
    t = make_table()
    out = calibration_table(t, TASK, ["sex"], n_boot=20)
    assert list(out["group"]) == ["all", "F", "M"]
    assert np.isclose(out["ece"].iloc[0], expected_calibration_error(t[TASK], t[f"p_{TASK}"]))
    # ECE is biased upwards under resampling, so the estimate may sit below the interval
    assert (out["ece_lo"] < out["ece_hi"]).all() and out[["ece_lo", "ece_hi"]].notna().all().all()
    fig = plot_reliability(t, TASK, "sex")
    assert len(fig.axes[0].lines) == 3


def _strata_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positives: a hidden subgroup (drain=0) far away in embedding space and missed."""
    rng = np.random.default_rng(seed)
    n = 200
    y = (np.arange(n) % 2).astype(float)
    drain = (rng.random(n) < 0.6).astype(int)
    x = rng.normal(size=(n, 5))
    x[:, 0] += 6 * drain
    p = np.where(y == 1, np.where(drain == 1, 0.9, 0.3), 0.2) + rng.normal(0, 0.05, n)
    return y, p, x, drain


def test_find_strata_flags_hidden_subgroup() -> None:
    y, p, x, drain = _strata_data()
    ids, coords, table = find_strata(y, p, x, 0.5, k=[2, 3, 4], margin=0.1, seed=0)
    flagged = table[table["flagged"]]
    assert len(flagged) == 1 and flagged["class"].iloc[0] == 1
    members = ids == flagged["cluster"].iloc[0]
    assert drain[members].mean() < 0.05 and flagged["error_rate"].iloc[0] > 0.9
    assert table.groupby("class")["size"].sum().tolist() == [100, 100]
    ami = attribute_ami(ids, y, pd.DataFrame({"drain": drain}))
    pos = ids >= 100
    assert np.isclose(
        ami.query("`class` == 1")["ami"].iloc[0],
        adjusted_mutual_info_score(drain[pos].astype(str), ids[pos]),
    )
    assert ami.query("`class` == 1")["ami"].iloc[0] > 0.8
    again = find_strata(y, p, x, 0.5, k=[2, 3, 4], seed=0)
    np.testing.assert_array_equal(ids, again[0])
    assert np.isfinite(coords[y == 1]).all()
    fig = plot_strata(coords, ids, y, pd.DataFrame({"drain": drain}))
    assert len(fig.axes) == 4
    thumbs = plot_thumbnails({101: np.zeros((3, 8, 8), np.uint8)})
    assert len(thumbs.axes) == 3


def test_gmm_finds_the_planted_subgroup() -> None:
    """The Gaussian mixture, like k-means, separates the far-away drain=0 images and
    flags them (a mixture that ignores the data, e.g. one cluster for every row, fails)."""
    y, p, x, drain = _strata_data()
    labels, k = cluster(x, clusterer="gmm", k=3, seed=0)
    assert k == 3 and (np.bincount(labels, minlength=3) > 0).all()  # 3 non-empty clusters
    # drain is two blobs: 3 clusters split one of them, each cluster (nearly) pure
    shares = [drain[labels == c].mean() for c in range(3)]
    assert all(s <= 0.15 or s >= 0.85 for s in shares), shares
    assert adjusted_mutual_info_score(drain, labels) > 0.6
    ids, _, table = find_strata(y, p, x, 0.5, clusterer="gmm", k=[2, 3, 4], margin=0.1, seed=0)
    flagged = table[table["flagged"]]
    assert len(flagged) == 1 and flagged["class"].iloc[0] == 1
    members = ids == flagged["cluster"].iloc[0]
    assert drain[members].mean() < 0.05 and flagged["error_rate"].iloc[0] > 0.9
    assert members.sum() == ((y == 1) & (drain == 0)).sum()  # all of them, only them
    pos = ids >= 100
    assert adjusted_mutual_info_score(drain[pos].astype(str), ids[pos]) > 0.8


def test_reducer_errors() -> None:
    _, _, x, _ = _strata_data()
    with pytest.raises(ParameterError, match="umap-learn"):
        reduce(x, reducer="umap")
    with pytest.raises(ParameterError, match="valid names are: pca, umap"):
        reduce(x, reducer="tsne")
