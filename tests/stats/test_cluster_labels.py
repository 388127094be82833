"""Cluster (patient) labels of the bootstrap: a missing one is an error that says so."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_spurious.errors import ContractError
from cxr_spurious.robustness.fairness import permutation_p_values
from cxr_spurious.stats.bootstrap import (
    bootstrap,
    bootstrap_indices,
    nanmean_cis,
    paired_bootstrap,
)


@pytest.mark.parametrize(
    ("clusters", "count", "positions"),
    [
        # None among strings: the old code failed in np.unique with a bare TypeError
        (np.array(["a", None, "b", "b"], dtype=object), "1 of 4", "1"),
        # NaN floats: the old code merged them into one made-up cluster
        (np.array([1.0, np.nan, np.nan, 2.0]), "2 of 4", "1, 2"),
        (["p1", "p2", float("nan"), "p3"], "1 of 4", "2"),
    ],
)
def test_a_row_without_a_cluster_label_is_refused(clusters, count, positions) -> None:
    pattern = rf"clusters: {count} row\(s\) have no cluster label .* position\(s\) {positions};"
    with pytest.raises(ContractError, match=pattern + ".*a row without a patient label"):
        bootstrap_indices(4, 2, 0, clusters=clusters)
    with pytest.raises(ContractError, match=pattern):
        nanmean_cis({"v": np.arange(4.0)}, clusters, n_boot=2, seed=0)
    with pytest.raises(ContractError, match=pattern):
        bootstrap(lambda i: float(np.mean(i)), 4, n_boot=2, clusters=clusters)
    with pytest.raises(ContractError, match=pattern):
        paired_bootstrap(lambda i: 1.0, lambda i: 0.0, 4, n_boot=2, clusters=clusters)
    y, y_pred, codes = np.array([1, 0, 1, 0]), np.array([1, 0, 0, 0]), np.array([0, 0, 1, 1])
    with pytest.raises(ContractError, match=pattern):  # the fairness gaps' test of no gap
        permutation_p_values(y, y_pred, codes, 2, clusters, n_perm=2, seed=0)


def test_only_the_first_positions_are_listed() -> None:
    clusters = np.array([None] * 8 + ["a", "b"], dtype=object)
    with pytest.raises(
        ContractError, match=r"8 of 10 row\(s\) .* position\(s\) 0, 1, 2, 3, 4, \.\.\.;"
    ):
        bootstrap_indices(10, 1, 0, clusters=clusters)


def test_labelled_clusters_still_draw_as_before() -> None:
    clusters = np.array(["b", "a", "b", "c", "a", "b"], dtype=object)
    assert len(bootstrap_indices(6, 3, 0, clusters=clusters)) == 3
