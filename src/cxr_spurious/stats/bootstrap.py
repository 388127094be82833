"""The project's one bootstrap: percentile confidence intervals, optionally clustered.

Resampling units are rows, or clusters (e.g. patients) when ``clusters`` is given: a
cluster is drawn with replacement and brings all its rows. Every function takes a seed
and gives the same numbers for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from cxr_spurious.errors import ParameterError


@dataclass(frozen=True)
class BootstrapResult:
    """A point estimate with its percentile CI and the replicate values."""

    estimate: float
    lo: float
    hi: float
    replicates: np.ndarray

    @property
    def replicate_mean(self) -> float:
        """Mean of the finite replicates (NaN if none)."""
        finite = self.replicates[np.isfinite(self.replicates)]
        return float(finite.mean()) if finite.size else float("nan")

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``{prefix: estimate, prefix_lo: lo, prefix_hi: hi}`` (names without a leading '_')."""
        name = prefix or "estimate"
        return {name: self.estimate, f"{name}_lo": self.lo, f"{name}_hi": self.hi}


def bootstrap_indices(
    n: int,
    n_boot: int,
    seed: int,
    clusters: Sequence[object] | np.ndarray | None = None,
) -> list[np.ndarray]:
    """Draw ``n_boot`` bootstrap samples of row indices.

    Args:
        n: Number of rows.
        n_boot: Number of replicates (>= 1).
        seed: Seed of the local generator.
        clusters: Optional cluster label per row; clusters are resampled whole.

    Returns:
        One index array per replicate.
    """
    if n_boot < 1:
        raise ParameterError("n_boot", f"must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    if clusters is None:
        return [rng.integers(0, n, size=n) for _ in range(n_boot)]
    labels = np.asarray(clusters)
    if labels.shape[0] != n:
        raise ValueError(f"clusters has {labels.shape[0]} labels for {n} rows")
    uniques, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(uniques.size + 1))
    starts, sizes = bounds[:-1], np.diff(bounds)
    out = []
    for _ in range(n_boot):
        picked = rng.integers(0, uniques.size, size=uniques.size)
        # The picked clusters' members, concatenated in picked order (a vectorised ragged range).
        lens = sizes[picked]
        offsets = np.repeat(starts[picked] - (np.cumsum(lens) - lens), lens)
        out.append(order[np.arange(lens.sum()) + offsets])
    return out


def bootstrap_count_matrix(
    n: int,
    n_boot: int,
    seed: int,
    clusters: Sequence[object] | np.ndarray | None = None,
) -> np.ndarray:
    """How often each row is drawn in each replicate: an ``(n_boot, n)`` float matrix.

    The same replicates as ``bootstrap_indices`` (same arguments, same draws), in a form
    that turns replicate means of many columns into matrix products:
    ``(counts @ values) / (counts @ ~isnan(values))``.
    """
    samples = bootstrap_indices(n, n_boot, seed, clusters)
    counts = np.zeros((n_boot, n), dtype=np.float64)
    for r, idx in enumerate(samples):
        counts[r] = np.bincount(idx, minlength=n)
    return counts


def replicate_nanmeans(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of the finite ``values`` in each replicate of ``counts`` (NaN where none)."""
    v = np.asarray(values, dtype=float)
    finite = np.isfinite(v)
    sums = counts @ np.where(finite, v, 0.0)
    hits = counts @ finite.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(hits > 0, sums / np.maximum(hits, 1e-300), np.nan)


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN, NaN when none are finite)."""
    if not 0 < level < 1:
        raise ParameterError("ci_level", f"must be in (0, 1), got {level}")
    finite = np.asarray(replicates, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    clusters: Sequence[object] | np.ndarray | None = None,
    level: float = 0.95,
    progress: bool = False,
    desc: str = "bootstrap",
) -> BootstrapResult:
    """Bootstrap ``statistic`` (a function of a row-index array) over ``n`` rows.

    Args:
        statistic: Maps an index array to a float; may return NaN (e.g. one class only).
        n: Number of rows.
        n_boot: Number of replicates.
        seed: Seed.
        clusters: Optional cluster label per row (resample clusters, e.g. patients).
        level: Confidence level of the percentile interval.
        progress: Show a progress bar.
        desc: Progress bar label.

    Returns:
        The estimate on all rows, the percentile CI and the replicates.
    """
    estimate = float(statistic(np.arange(n)))
    samples = bootstrap_indices(n, n_boot, seed, clusters)
    iterator = tqdm(samples, desc=desc, leave=False, disable=not progress)
    reps = np.array([float(statistic(idx)) for idx in iterator], dtype=float)
    lo, hi = percentile_ci(reps, level)
    return BootstrapResult(estimate, lo, hi, reps)


def paired_bootstrap(
    statistic_a: Callable[[np.ndarray], float],
    statistic_b: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    clusters: Sequence[object] | np.ndarray | None = None,
    level: float = 0.95,
) -> tuple[BootstrapResult, float]:
    """Bootstrap the difference ``a - b`` on the same resampled rows.

    Returns:
        The result for the difference and a two-sided p-value (twice the smaller share of
        replicates on either side of zero, capped at 1).
    """
    estimate = float(statistic_a(np.arange(n)) - statistic_b(np.arange(n)))
    samples = bootstrap_indices(n, n_boot, seed, clusters)
    reps = np.array([float(statistic_a(i) - statistic_b(i)) for i in samples], dtype=float)
    lo, hi = percentile_ci(reps, level)
    finite = reps[np.isfinite(reps)]
    if finite.size == 0:
        p_value = float("nan")
    else:
        p_value = float(min(1.0, 2 * min((finite <= 0).mean(), (finite >= 0).mean())))
    return BootstrapResult(estimate, lo, hi, reps), p_value


def legacy_bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Replicate row indices drawn like CheXlocalize's ``eval.py`` (legacy ``RandomState``).

    The reference seeds numpy's global generator and calls ``np.random.choice(n, n)`` per
    replicate; a local ``RandomState(seed)`` gives the same draws without global state,
    so bootstrap tables match the reference files number for number.

    Args:
        n: Number of rows.
        n_boot: Number of replicates (>= 1).
        seed: Seed of the local legacy generator.

    Returns:
        An (n_boot, n) integer array.
    """
    if n_boot < 1:
        raise ParameterError("n_boot", f"must be >= 1, got {n_boot}")
    rs = np.random.RandomState(seed)
    return np.stack([rs.choice(n, size=n, replace=True) for _ in range(n_boot)]) if n else np.zeros((n_boot, 0), dtype=int)
