"""The project's one bootstrap: percentile confidence intervals, optionally clustered.

Resampling units are rows, or clusters (e.g. patients) when ``clusters`` is given: a
cluster is drawn with replacement and brings all its rows. Every function takes a seed
and gives the same numbers for the same seed.

Undefined replicates: a replicate whose statistic is NaN (e.g. no positive drawn) is left
out of the percentile interval and counted (``BootstrapResult.n_dropped``); when more than
``max_dropped_share`` of the replicates are undefined while the full-sample estimate is
defined, ``percentile_ci`` raises ``BootstrapDropError`` instead of returning an interval
computed from a conditioned subset of the replicates. ``bootstrap_or_note`` is the variant
for statistics of small groups: a NaN CI and a note instead of the error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, check_integer, check_number
from cxr_spurious.progress import progress_bar

logger = logging.getLogger(__name__)

#: Largest share of undefined (NaN) replicates a percentile CI may leave out before it is an error.
MAX_DROPPED_SHARE = 0.05


class BootstrapDropError(ContractError):
    """Too many bootstrap replicates are undefined for the interval to mean what it says."""


@dataclass(frozen=True)
class BootstrapResult:
    """A point estimate with its percentile CI and the replicate values."""

    estimate: float
    lo: float
    hi: float
    replicates: np.ndarray

    @property
    def n_dropped(self) -> int:
        """Replicates left out of the interval because the statistic was undefined (NaN)."""
        return count_dropped(self.replicates)

    @property
    def replicate_mean(self) -> float:
        """Mean of the finite replicates (NaN if none)."""
        finite = self.replicates[np.isfinite(self.replicates)]
        return float(finite.mean()) if finite.size else float("nan")

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``{prefix: estimate, prefix_lo: lo, prefix_hi: hi}`` (names without a leading '_')."""
        name = prefix or "estimate"
        return {name: self.estimate, f"{name}_lo": self.lo, f"{name}_hi": self.hi}


def check_n_boot(value: object, key: str = "n_boot") -> int:
    """A number of bootstrap replicates as an ``int``: every entry point's one check.

    Accepts an integer >= 1, or a float with an integral value (``--params
    study.n_boot=1e4`` parses as ``10000.0``); refuses booleans, fractions and anything else.

    Raises:
        ParameterError: naming ``key`` and the value.
    """
    return check_integer(value, key, low=1)


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

    Raises:
        ParameterError: ``n_boot`` is not an integer >= 1 (``check_n_boot``).
        ContractError: a cluster label is None or NaN (``check_cluster_labels``).
    """
    n_boot = check_n_boot(n_boot)
    rng = np.random.default_rng(seed)
    if clusters is None:
        return [rng.integers(0, n, size=n) for _ in range(n_boot)]
    check_cluster_labels(clusters)
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


def check_cluster_labels(labels: Sequence[object] | np.ndarray) -> None:
    """Refuse cluster labels that are missing (None, NaN, ``pd.NA``, NaT).

    A row without a cluster (patient) label cannot be resampled with its cluster: a None
    among strings would break the sort with a bare ``TypeError``, and NaN labels would be
    merged into one made-up cluster.

    Raises:
        ContractError: naming how many rows lack a label and the first few positions.
    """
    # as objects: ``np.asarray`` of a list of strings would turn NaN into the string 'nan'
    missing = np.asarray(pd.isna(np.asarray(labels, dtype=object)), dtype=bool).reshape(-1)
    if missing.any():
        where = np.flatnonzero(missing)
        shown = ", ".join(str(int(i)) for i in where[:5]) + (", ..." if where.size > 5 else "")
        raise ContractError(
            f"clusters: {where.size} of {missing.size} row(s) have no cluster label (None or "
            f"NaN), at position(s) {shown}; a row without a patient label cannot be resampled "
            "with its cluster: give every row a label or leave those rows out"
        )


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
    n_boot = check_n_boot(n_boot)
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


def count_dropped(replicates: np.ndarray) -> int:
    """Number of undefined (non-finite) replicates."""
    return int((~np.isfinite(np.asarray(replicates, dtype=float))).sum())


def check_ci_level(level: object, key: str = "ci_level") -> float:
    """A CI level as a float in (0, 1): the one check of a ``ci_level`` parameter.

    Raises:
        ParameterError: naming ``key``.
    """
    return check_number(level, key, low=0, high=1, low_open=True, high_open=True)


def check_max_dropped_share(value: object, key: str = "max_dropped_share") -> float:
    """Validate a ``max_dropped_share`` parameter (a number in [0, 1]; booleans refused)."""
    return check_number(value, key, low=0, high=1)


def percentile_ci(
    replicates: np.ndarray,
    level: float = 0.95,
    *,
    max_dropped_share: float | None = MAX_DROPPED_SHARE,
    label: str = "bootstrap statistic",
) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN, NaN when none are finite).

    Args:
        replicates: Replicate values; NaN marks a replicate where the statistic is undefined.
        level: Confidence level.
        max_dropped_share: Largest share of NaN replicates that may be left out; above it
            ``BootstrapDropError`` is raised. ``None``: no check (only for replicates of a
            statistic that is undefined on the full sample too, see ``bootstrap``).
        label: What the replicates are, for the error message.

    Raises:
        ParameterError: ``level`` outside (0, 1) or ``max_dropped_share`` outside [0, 1].
        BootstrapDropError: more than ``max_dropped_share`` of the replicates are NaN.
    """
    level = check_ci_level(level)
    values = np.asarray(replicates, dtype=float)
    finite = values[np.isfinite(values)]
    if max_dropped_share is not None and values.size:
        limit = check_max_dropped_share(max_dropped_share)
        dropped = values.size - finite.size
        if dropped / values.size > limit:
            raise BootstrapDropError(
                f"{label}: {dropped} of {values.size} bootstrap replicates are undefined (NaN), "
                f"{dropped / values.size:.1%} > max_dropped_share {limit:.1%}; "
                "the percentile CI would describe only the resamples where the statistic "
                "exists. Use more data per group, drop the group, or raise max_dropped_share "
                "knowingly"
            )
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
    max_dropped_share: float | None = None,
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
        desc: Progress bar label (and the statistic's name in errors).
        max_dropped_share: Largest share of NaN replicates (see ``percentile_ci``); not
            checked when the estimate on all rows is NaN itself (then the CI is NaN).
            ``None`` (callers that do not surface ``n_dropped`` yet): a warning above
            ``MAX_DROPPED_SHARE`` instead of an error.

    Returns:
        The estimate on all rows, the percentile CI and the replicates.

    Raises:
        BootstrapDropError: too many undefined replicates.
        ParameterError: ``n_boot`` is not an integer >= 1 (``check_n_boot``).
    """
    n_boot = check_n_boot(n_boot)
    estimate = float(statistic(np.arange(n)))
    samples = bootstrap_indices(n, n_boot, seed, clusters)
    iterator = progress_bar(samples, desc=desc, disable=not progress)
    reps = np.array([float(statistic(idx)) for idx in iterator], dtype=float)
    if not np.isfinite(estimate):
        return BootstrapResult(estimate, float("nan"), float("nan"), reps)
    _warn_if_many_dropped(reps, max_dropped_share, desc)
    lo, hi = percentile_ci(reps, level, max_dropped_share=max_dropped_share, label=desc)
    return BootstrapResult(estimate, lo, hi, reps)


def bootstrap_or_note(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    max_dropped_share: float,
    desc: str = "bootstrap",
    **kwargs: object,
) -> tuple[BootstrapResult, str]:
    """``bootstrap`` for a statistic of a small group, where undefined replicates are legitimate.

    A rare group's AUROC is undefined in every replicate that drew none of its positives (or
    negatives). Instead of ``BootstrapDropError`` (which would stop a study on a legitimately
    small group), a defined estimate whose replicates are undefined more than
    ``max_dropped_share`` of the time gets a NaN CI and a note naming the count; never an
    interval of the surviving replicates only. The count stays in ``n_dropped`` either way.

    Args:
        statistic: See ``bootstrap``.
        n: Number of rows.
        max_dropped_share: Largest share of undefined replicates for a CI.
        desc: The statistic's name (logged with the note).
        **kwargs: Further ``bootstrap`` arguments (``n_boot``, ``seed``, ``clusters``, ``level``).

    Returns:
        The result (NaN ``lo``/``hi`` above the threshold) and the note (``""`` when the CI stands).
    """
    limit = check_max_dropped_share(max_dropped_share)
    res = bootstrap(statistic, n, desc=desc, max_dropped_share=1.0, **kwargs)  # type: ignore[arg-type]
    dropped, size = res.n_dropped, res.replicates.size
    if not np.isfinite(res.estimate) or not size or dropped / size <= limit:
        return res, ""
    note = (
        f"no CI: {dropped} of {size} bootstrap replicates undefined "
        f"({dropped / size:.1%} > max_dropped_share {limit:.1%})"
    )
    logger.warning("%s: %s", desc, note)
    return BootstrapResult(res.estimate, float("nan"), float("nan"), res.replicates), note


def _warn_if_many_dropped(reps: np.ndarray, max_dropped_share: float | None, label: str) -> None:
    dropped = count_dropped(reps)
    if max_dropped_share is None and reps.size and dropped / reps.size > MAX_DROPPED_SHARE:
        logger.warning(
            "%s: %d of %d bootstrap replicates are undefined (NaN) "
            "and left out of the CI (> %.0f%%)",
            label,
            dropped,
            reps.size,
            100 * MAX_DROPPED_SHARE,
        )


#: Fewest clusters (rows without clusters) for which a statistic gets a bootstrap CI or a
#: bootstrap p-value: a percentile interval over a handful of clusters says nothing.
MIN_CI_CLUSTERS = 5


def few_clusters_note(
    clusters: Sequence[object] | np.ndarray,
    *,
    unit: str = "patient",
    what: str = "",
    lacks: str = "CI",
    min_clusters: int = MIN_CI_CLUSTERS,
) -> str:
    """Why a statistic of these rows gets no ``lacks`` (a CI, or a CI and a p-value):
    ``no CI: 1 patient (fewer than 5)``, ``no CI: group F has 2 patients (fewer than 5)``.

    ``""`` when the rows come from at least ``min_clusters`` distinct clusters (the rule of
    ``nanmean_cis`` and ``paired_bootstrap``): a cluster bootstrap over fewer draws a
    handful of distinct resamples (one cluster: the same rows every time, a CI of width 0).

    Args:
        clusters: Cluster (patient, CXR) of each row the statistic uses.
        unit: What a cluster is, named in the note (``patient``, ``cxr``).
        what: What the rows are, named in the note (``group F``).
        lacks: What the statistic goes without (``CI``, ``CI or p-value``).
        min_clusters: Fewest clusters for a CI.
    """
    n = int(pd.unique(np.asarray(clusters, dtype=object)).size)
    if n >= min_clusters:
        return ""
    counted = f"{n} {unit}" + ("" if n == 1 else "s")
    return f"no {lacks}: {what + ' has ' if what else ''}{counted} (fewer than {min_clusters})"


def paired_bootstrap(
    statistic_a: Callable[[np.ndarray], float],
    statistic_b: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    clusters: Sequence[object] | np.ndarray | None = None,
    level: float = 0.95,
    max_dropped_share: float | None = None,
    label: str = "paired difference",
    min_clusters: int = MIN_CI_CLUSTERS,
) -> tuple[BootstrapResult, float]:
    """Bootstrap the difference ``a - b`` on the same resampled rows.

    Undefined replicates follow ``bootstrap`` (counted; an error above ``max_dropped_share``
    unless the full-sample difference is undefined too). Fewer than ``min_clusters``
    clusters (rows, without ``clusters``) give the difference without a CI and without a
    p-value (NaN): one patient's rows resampled give the same difference in every replicate,
    which read as p = 2 / (B + 1) for any nonzero difference.

    Returns:
        The result for the difference and a two-sided p-value: twice the smaller share of
        the defined replicates on either side of zero (a zero counts on both), capped at 1.
        Where no replicate lies on the smaller side it is ``2 / (B + 1)`` for ``B``
        defined replicates, not 0: ``B`` replicates cannot show a smaller p-value, and a
        0 would read as "< 0.001" at any ``n_boot`` (and stay 0 through Holm).

    Raises:
        ParameterError: ``n_boot`` is not an integer >= 1 (``check_n_boot``).
    """
    n_boot = check_n_boot(n_boot)
    estimate = float(statistic_a(np.arange(n)) - statistic_b(np.arange(n)))
    samples = bootstrap_indices(n, n_boot, seed, clusters)
    units = n if clusters is None else int(np.unique(np.asarray(clusters)).size)
    if units < max(int(min_clusters), 1):
        return BootstrapResult(estimate, float("nan"), float("nan"), np.array([])), float("nan")
    reps = np.array([float(statistic_a(i) - statistic_b(i)) for i in samples], dtype=float)
    if not np.isfinite(estimate):
        return BootstrapResult(estimate, float("nan"), float("nan"), reps), float("nan")
    _warn_if_many_dropped(reps, max_dropped_share, label)
    lo, hi = percentile_ci(reps, level, max_dropped_share=max_dropped_share, label=label)
    finite = reps[np.isfinite(reps)]
    if finite.size == 0:
        p_value = float("nan")
    else:
        smaller_side = min(int((finite <= 0).sum()), int((finite >= 0).sum()))
        share = smaller_side / finite.size if smaller_side else 1.0 / (finite.size + 1)
        p_value = float(min(1.0, 2 * share))
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

    Raises:
        ParameterError: ``n_boot`` is not an integer >= 1 (``check_n_boot``).
    """
    n_boot = check_n_boot(n_boot)
    rs = np.random.RandomState(seed)
    return (
        np.stack([rs.choice(n, size=n, replace=True) for _ in range(n_boot)])
        if n
        else np.zeros((n_boot, 0), dtype=int)
    )


def nanmean_cis(
    columns: dict[str, np.ndarray],
    clusters: Sequence[object] | np.ndarray,
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
    min_clusters: int = MIN_CI_CLUSTERS,
    label: str = "",
) -> dict[str, BootstrapResult]:
    """Mean of the finite values of each column with a cluster-bootstrap percentile CI.

    All columns share the rows, the clusters and therefore the replicates (the same draws
    as ``bootstrap_indices(n, n_boot, seed, clusters)``). A replicate's mean is NaN when it
    drew no finite value; those replicates are counted in ``n_dropped``.

    Args:
        columns: ``{name: (n,) values}`` (NaN = undefined for that row).
        clusters: Cluster (e.g. patient) of each row.
        n_boot: Replicates.
        seed: Seed.
        level: Confidence level.
        max_dropped_share: See ``percentile_ci``.
        min_clusters: A column whose finite values come from fewer clusters gets no CI
            (NaN bounds, no drop check): a percentile interval over a handful of clusters
            says nothing.
        label: Prefix of the statistic's name in errors (e.g. the table cell).

    Returns:
        ``{name: BootstrapResult}``.

    Raises:
        ParameterError: ``n_boot`` is not an integer >= 1 (``check_n_boot``).
        ContractError: a cluster label is None or NaN (``check_cluster_labels``).
    """
    n_boot = check_n_boot(n_boot)
    check_cluster_labels(clusters)
    labels = np.asarray(clusters)
    counts = bootstrap_count_matrix(len(labels), n_boot, seed, labels)
    out: dict[str, BootstrapResult] = {}
    for name, raw in columns.items():
        values = np.asarray(raw, dtype=float)
        finite = np.isfinite(values)
        estimate = float(values[finite].mean()) if finite.any() else float("nan")
        reps = replicate_nanmeans(counts, values)
        if np.unique(labels[finite]).size < max(int(min_clusters), 1):
            out[name] = BootstrapResult(estimate, float("nan"), float("nan"), reps)
            continue
        lo, hi = percentile_ci(
            reps, level, max_dropped_share=max_dropped_share, label=f"{label}{name}"
        )
        out[name] = BootstrapResult(estimate, lo, hi, reps)
    return out
