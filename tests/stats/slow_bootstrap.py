"""An obviously-correct, slow patient bootstrap: the reference the reference tests compare to.

One replicate draws as many patients as there are, with replacement (numpy's
``default_rng(seed)``, patients in sorted order, ``integers(0, P, P)``), and takes all the
rows of every drawn patient. Written with Python lists, independently of
``cxr_spurious.stats.bootstrap``; only the random draws are shared (same generator, same
calls), so the replicates are the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def patient_draws(patients: Sequence[object], n_boot: int, seed: int) -> list[list[int]]:
    """Row indices of each replicate: all rows of each drawn patient."""
    rng = np.random.default_rng(seed)
    labels = sorted({str(p) for p in patients})
    rows_of = {p: [i for i, q in enumerate(patients) if str(q) == p] for p in labels}
    draws = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(labels), size=len(labels))
        draws.append([i for k in picked for i in rows_of[labels[k]]])
    return draws


def patient_replicates(
    statistic: Callable[[list[int]], float], patients: Sequence[object], n_boot: int, seed: int
) -> np.ndarray:
    """``statistic`` (a function of a list of row indices) on each replicate."""
    return np.array([statistic(rows) for rows in patient_draws(patients, n_boot, seed)])


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates."""
    kept = [r for r in replicates if np.isfinite(r)]
    alpha = (1 - level) / 2
    return float(np.quantile(kept, alpha)), float(np.quantile(kept, 1 - alpha))


def two_sided_p(replicates: np.ndarray) -> float:
    """Twice the smaller share of finite replicates on either side of zero, capped at 1;
    with none on the smaller side, 2 / (finite replicates + 1)."""
    kept = [r for r in replicates if np.isfinite(r)]
    smaller = min(sum(r <= 0 for r in kept), sum(r >= 0 for r in kept))
    share = smaller / len(kept) if smaller else 1 / (len(kept) + 1)
    return min(1.0, 2 * share)
