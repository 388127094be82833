"""The paired bootstrap's two-sided p-value: exact values on scripted replicates, and the
formula on real replicates checked against a slow patient bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from tests.stats.slow_bootstrap import patient_replicates, two_sided_p

from cxr_spurious.stats.bootstrap import paired_bootstrap

N = 10


def _scripted(values: list[float]):
    """A statistic returning 0.5 on the full sample and ``values`` on the replicates, in turn."""
    queue = list(values)

    def statistic(idx: np.ndarray) -> float:
        if len(idx) == N and np.array_equal(idx, np.arange(N)):
            return 0.5
        return queue.pop(0)

    return statistic


@pytest.mark.parametrize(
    ("replicates", "expected"),
    [
        ([-1.0, 1.0, 2.0, 3.0], 0.5),  # 2 * min(1/4, 3/4)
        ([0.0, 1.0, 2.0, 3.0], 0.5),  # a zero counts on both sides: 2 * min(1/4, 4/4)
        ([-3.0, -2.0, -1.0, 1.0], 0.5),
        ([-1.0, -2.0, 1.0, 2.0], 1.0),
        ([0.0, 0.0, 0.0, 0.0], 1.0),  # 2 * 1 capped at 1
        ([1.0, 2.0, 3.0, 4.0], 0.4),  # none below zero: 2 / (4 + 1), not 0
        ([-1.0, -2.0, np.nan, -4.0], 0.5),  # none above: 2 / (3 defined + 1)
        ([-1.0, 1.0, np.nan, 2.0, 3.0], 0.5),  # the undefined replicate is left out
    ],
)
def test_p_value_is_twice_the_smaller_tail_share(replicates: list[float], expected: float) -> None:
    res, p = paired_bootstrap(
        _scripted(replicates), lambda idx: 0.0, N, n_boot=len(replicates), seed=0
    )
    np.testing.assert_array_equal(res.replicates, np.array(replicates))
    assert p == pytest.approx(expected, abs=1e-12)


def test_p_value_of_a_clustered_difference_matches_the_slow_reference() -> None:
    rng = np.random.default_rng(3)
    patients = [f"p{i // 3:02d}" for i in range(60)]  # 20 patients, 3 rows each
    a = rng.normal(0.0, 1.0, 60)
    b = a + rng.normal(0.05, 0.5, 60)  # a small difference: replicates on both sides of zero
    res, p = paired_bootstrap(
        lambda i: float(a[i].mean()),
        lambda i: float(b[i].mean()),
        60,
        n_boot=400,
        seed=9,
        clusters=np.array(patients),
    )
    reps = patient_replicates(
        lambda rows: sum(a[r] for r in rows) / len(rows) - sum(b[r] for r in rows) / len(rows),
        patients,
        400,
        9,
    )
    expected = two_sided_p(reps)
    assert 0.05 < expected < 0.95  # the case where halving the p-value would show
    assert p == pytest.approx(expected, abs=1e-12)
