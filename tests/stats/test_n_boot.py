"""``n_boot`` is checked once (``check_n_boot``) by every bootstrap entry point.

Before, ``--params study.n_boot=1e4`` (parsed as ``10000.0``) crashed late with a
``TypeError`` traceback inside the bootstrap.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.stats.bootstrap import (
    bootstrap,
    bootstrap_count_matrix,
    bootstrap_indices,
    check_n_boot,
    legacy_bootstrap_indices,
    nanmean_cis,
    paired_bootstrap,
)

VALUES = np.array([0.1, 0.9, 0.4, 0.7, 0.3, 0.8])


def _by_hand(n: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """``bootstrap_indices`` without clusters: one ``integers(0, n, n)`` draw per replicate."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=n) for _ in range(n_boot)]


def test_an_integral_float_is_that_many_replicates() -> None:
    assert check_n_boot(1e4) == 10000 and isinstance(check_n_boot(1e4), int)
    assert check_n_boot(np.int64(7)) == 7 and check_n_boot(np.float32(3.0)) == 3
    expected = [VALUES[i].mean() for i in _by_hand(len(VALUES), 5, 3)]
    res = bootstrap(lambda i: VALUES[i].mean(), len(VALUES), n_boot=5.0, seed=3)
    np.testing.assert_allclose(res.replicates, expected)
    indices = bootstrap_indices(len(VALUES), 5.0, 3)
    assert len(indices) == 5
    counts = bootstrap_count_matrix(len(VALUES), 4.0, 3)
    np.testing.assert_array_equal(
        counts, [np.bincount(i, minlength=len(VALUES)) for i in _by_hand(len(VALUES), 4, 3)]
    )
    legacy = legacy_bootstrap_indices(5, 3.0, 0)
    rs = np.random.RandomState(0)
    np.testing.assert_array_equal(legacy, [rs.choice(5, size=5, replace=True) for _ in range(3)])
    res, _ = paired_bootstrap(
        lambda i: VALUES[i].mean(), lambda i: VALUES[i].min(), len(VALUES), n_boot=4.0, seed=1
    )
    assert res.replicates.shape == (4,)
    cis = nanmean_cis({"v": VALUES}, np.arange(len(VALUES)), n_boot=6.0, seed=0, min_clusters=1)
    assert cis["v"].replicates.shape == (6,)


@pytest.mark.parametrize("bad", [0, -3, 2.5, float("nan"), float("inf"), True, "100", None])
def test_anything_else_is_a_parameter_error_naming_the_value(bad: object) -> None:
    with pytest.raises(ParameterError, match=r"must be an integer >= 1, got"):
        check_n_boot(bad, "study.n_boot")
    entry_points = (
        lambda: bootstrap(lambda i: VALUES[i].mean(), len(VALUES), n_boot=bad),
        lambda: bootstrap_indices(len(VALUES), bad, 0),
        lambda: bootstrap_count_matrix(len(VALUES), bad, 0),
        lambda: legacy_bootstrap_indices(len(VALUES), bad, 0),
        lambda: paired_bootstrap(
            lambda i: VALUES[i].mean(), lambda i: VALUES[i].min(), len(VALUES), n_boot=bad
        ),
        lambda: nanmean_cis({"v": VALUES}, np.arange(len(VALUES)), n_boot=bad, seed=0),
    )
    for call in entry_points:
        with pytest.raises(ParameterError, match="'n_boot'"):
            call()
