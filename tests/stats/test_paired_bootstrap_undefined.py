"""``paired_bootstrap``: a difference undefined on the full sample (NaN estimate, e.g. an
AUROC of a set with one class) has no CI and no p-value, even when most resamples define
it."""

from __future__ import annotations

import numpy as np

from cxr_spurious.stats.bootstrap import paired_bootstrap


def test_an_undefined_difference_gets_no_ci_and_no_p_value() -> None:
    values = np.arange(20, dtype=float)

    def a(idx: np.ndarray) -> float:  # undefined on all rows, defined on most resamples
        return float("nan") if np.array_equal(np.sort(idx), np.arange(20)) else values[idx].mean()

    def b(idx: np.ndarray) -> float:
        return 0.0

    res, p = paired_bootstrap(a, b, 20, n_boot=200, seed=0)
    assert np.isnan(res.estimate)
    assert np.isfinite(res.replicates).sum() > 150  # most replicates are defined
    assert np.isnan(res.lo) and np.isnan(res.hi) and np.isnan(p)
