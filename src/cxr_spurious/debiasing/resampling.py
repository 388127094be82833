"""Resampling strategies over the train split (val / test rows are never touched).

Every strategy takes a manifest and per-row integer group ids and returns the
*resampled manifest*: train rows resampled (rows may repeat; duplicates stay next to their
original), val and test rows unchanged, plus ``weight``, ``augment`` and ``group``.
Train rows without a group (id ``-1``) are kept once with weight 1. Duplicates are copies
of train rows only, so no patient crosses a split boundary. The same seed gives the same
rows.

Strategies:

* ``none``: unchanged.
* ``upsample``: groups smaller than the target gain rows drawn with replacement.
* ``downsample``: groups larger than the target lose rows drawn without replacement.
* ``group_balance``: every group (meant to be crossed with the label) set to the target,
  down without replacement or up with replacement.
* ``cluster_downsample``: like ``downsample``, but the kept rows are spread over the
  k-means clusters of the group's features (each cluster keeps an equal share, capped by
  its size), so rare looks survive the cut.
* ``augment_upsample``: ``upsample`` with ``augment=True`` on the added copies.
* ``reweight``: no row changes; ``weight = n_grouped / (n_groups * n_group)``.
* ``jtt``: rows an ERM model got wrong are repeated ``jtt_upweight`` times in total
  (Liu et al. 2021), or weighted by it when ``jtt_mode='weight'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from cxr_spurious.errors import (
    ContractError,
    ParameterError,
    check_integer,
    check_number,
    unknown_name_error,
)

from .groups import NO_GROUP

STRATEGIES: tuple[str, ...] = (
    "none",
    "upsample",
    "downsample",
    "group_balance",
    "cluster_downsample",
    "augment_upsample",
    "reweight",
    "jtt",
)
TARGETS: tuple[str, ...] = ("min", "median", "max")
Target = int | Literal["min", "median", "max"]


def target_size(sizes: Sequence[int], target: Target) -> int:
    """Resolve the target group size from the train group sizes.

    Args:
        sizes: Row count of every group in the train split.
        target: ``"min"``, ``"median"``, ``"max"`` or a positive integer.

    Returns:
        The target size (the median is rounded half up).

    Raises:
        ParameterError: the target is zero, negative or an unknown name.
    """
    if isinstance(target, str):
        if target not in TARGETS:
            raise unknown_name_error("target size", target, TARGETS, key="debiasing.target")
        if not len(sizes):
            raise ParameterError("debiasing.target", "no train group to size against")
        arr = np.asarray(sizes, dtype=float)
        value = {"min": arr.min(), "max": arr.max(), "median": np.floor(np.median(arr) + 0.5)}[
            target
        ]
        return int(value)
    if isinstance(target, bool) or not isinstance(target, int | np.integer) or int(target) <= 0:
        raise ParameterError(
            "debiasing.target", f"must be min, median, max or a positive integer, got {target!r}"
        )
    return int(target)


def resample_manifest(
    manifest: pd.DataFrame,
    groups: pd.Series | np.ndarray,
    strategy: str,
    *,
    target: Target = "median",
    seed: int = 0,
    features: np.ndarray | None = None,
    errors: pd.Series | np.ndarray | None = None,
    n_clusters: int = 8,
    jtt_upweight: float = 6,
    jtt_mode: Literal["duplicate", "weight"] = "duplicate",
) -> pd.DataFrame:
    """Apply one strategy to the train rows of a manifest.

    Args:
        manifest: The manifest (``split`` column required).
        groups: Group id per manifest row (``-1`` = no group).
        strategy: One of ``STRATEGIES``.
        target: Target group size (``min`` / ``median`` / ``max`` / positive int).
        seed: Seed of the local generator.
        features: ``cluster_downsample`` only: one feature row per manifest row (val/test
            rows may hold anything; only train rows are read).
        errors: ``jtt`` only: per manifest row, True where the ERM model was wrong
            (booleans or 0 / 1; anything else, NaN included, is a ``ContractError``).
        n_clusters: ``cluster_downsample``: k-means clusters per over-represented group.
        jtt_upweight: ``jtt``: total copies (a whole number) or weight (any number) of an
            error row (lambda >= 1; ``jtt_upweight_value``).
        jtt_mode: ``duplicate`` (repeat rows) or ``weight`` (set ``weight``).

    Returns:
        The resampled manifest with a fresh RangeIndex; ``attrs["strategy"]`` names the
        strategy (kept by the Parquet files; the training runs' names read it).
    """
    out = _resample(
        manifest, groups, strategy, target=target, seed=seed, features=features,
        errors=errors, n_clusters=n_clusters, jtt_upweight=jtt_upweight, jtt_mode=jtt_mode,
    )  # fmt: skip
    out.attrs["strategy"] = strategy
    return out


def _resample(
    manifest: pd.DataFrame,
    groups: pd.Series | np.ndarray,
    strategy: str,
    *,
    target: Target,
    seed: int,
    features: np.ndarray | None,
    errors: pd.Series | np.ndarray | None,
    n_clusters: int,
    jtt_upweight: float,
    jtt_mode: Literal["duplicate", "weight"],
) -> pd.DataFrame:
    """``resample_manifest`` without the label."""
    if strategy not in STRATEGIES:
        raise unknown_name_error(
            "debiasing strategy", strategy, STRATEGIES, key="debiasing.strategy"
        )
    g = np.asarray(groups, dtype=np.int64)
    if g.shape[0] != len(manifest):
        raise ContractError(
            f"groups has {g.shape[0]} entries for a manifest of {len(manifest)} rows"
        )
    base = manifest.reset_index(drop=True).copy()
    base["group"] = g
    base["weight"] = 1.0
    base["augment"] = False
    train = np.flatnonzero(base["split"].to_numpy() == "train")
    rng = np.random.default_rng(seed)
    extra: list[np.ndarray] = []
    drop = np.zeros(len(base), dtype=bool)
    if strategy in ("none",):
        return base
    if strategy == "reweight":
        base.loc[train, "weight"] = _balanced_weights(g[train])
        return base
    if strategy == "jtt":
        return _jtt(base, train, errors, jtt_upweight, jtt_mode)
    members = _train_members(g, train)
    size = target_size([m.size for m in members.values()], target)
    for gid in sorted(members):
        rows = members[gid]
        if rows.size < size and strategy in ("upsample", "augment_upsample", "group_balance"):
            extra.append(rng.choice(rows, size=size - rows.size, replace=True))
        elif rows.size > size and strategy in ("downsample", "group_balance"):
            drop[np.setdiff1d(rows, rng.choice(rows, size=size, replace=False))] = True
        elif rows.size > size and strategy == "cluster_downsample":
            if features is None:
                raise ParameterError(
                    "debiasing.strategy",
                    "cluster_downsample needs features (embeddings or thumbnails)",
                )
            keep = cluster_keep(
                np.asarray(features)[rows],
                size,
                n_clusters=n_clusters,
                seed=int(rng.integers(2**31)),
            )
            drop[np.setdiff1d(rows, rows[keep])] = True
    return _assemble(base, drop, extra, augment_copies=strategy == "augment_upsample")


def cluster_keep(
    features: np.ndarray, n_keep: int, *, n_clusters: int = 8, seed: int = 0
) -> np.ndarray:
    """Pick ``n_keep`` rows spread over the k-means clusters of ``features``.

    Each cluster gets an equal share of ``n_keep`` capped by its size (water filling: what a
    small cluster cannot use goes to the others); rows inside a cluster are drawn at random.

    Args:
        features: ``(n, d)`` float features.
        n_keep: How many rows to keep (``<= n``).
        n_clusters: Number of clusters (reduced to ``n_keep`` when larger).
        seed: Seed of k-means and of the draws.

    Returns:
        Sorted indices of the kept rows.
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if not 0 < n_keep <= n:
        raise ParameterError("debiasing.target", f"cannot keep {n_keep} of {n} rows")
    n_clusters = check_integer(n_clusters, "debiasing.n_clusters", low=1)
    if not np.isfinite(x).all():
        raise ContractError("cluster features contain NaN or infinite values")
    k = min(n_clusters, n_keep, n)
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
    sizes = np.bincount(labels, minlength=k)
    quota = _water_fill(sizes, n_keep)
    rng = np.random.default_rng(seed)
    kept = [rng.choice(np.flatnonzero(labels == c), size=quota[c], replace=False) for c in range(k)]
    return np.sort(np.concatenate(kept))


def _water_fill(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` as equally as possible over bins capped by ``sizes``: every bin gets
    ``min(size, L)`` for the highest level ``L`` that fits, and the rows left over go one
    each to the first bins (in index order) that still have room; so no two bins below
    their cap differ by more than one."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = min(int(total), int(sizes.sum()))
    lo, hi = 0, int(sizes.max(initial=0))
    while lo < hi:  # the highest level L with sum(min(sizes, L)) <= total
        mid = (lo + hi + 1) // 2
        if int(np.minimum(sizes, mid).sum()) <= total:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(sizes, lo)
    rest = total - int(quota.sum())
    room = np.flatnonzero(sizes > quota)[:rest]  # rest < len(room): L + 1 did not fit
    quota[room] += 1
    return quota


def _train_members(g: np.ndarray, train: np.ndarray) -> dict[int, np.ndarray]:
    grouped = train[g[train] != NO_GROUP]
    if grouped.size == 0:
        raise ContractError("no train row has a group; check 'group_by' against the manifest")
    return {int(k): grouped[g[grouped] == k] for k in np.unique(g[grouped])}


def _balanced_weights(g: np.ndarray) -> np.ndarray:
    w = np.ones(g.shape[0], dtype=float)
    known = g != NO_GROUP
    if known.any():
        ids, counts = np.unique(g[known], return_counts=True)
        per = known.sum() / (ids.size * counts)
        w[known] = per[np.searchsorted(ids, g[known])]
    return w


def jtt_upweight_value(upweight: object, mode: str) -> float:
    """JTT's lambda, checked for its mode: a whole number of copies >= 1 in ``duplicate``
    mode (1.9 copies cannot be made, and truncating it to 1 would make JTT plain ERM), any
    finite number >= 1 in ``weight`` mode (kept as given: 2.5 weighs an error 2.5).

    Raises:
        ParameterError: naming ``debiasing.jtt_upweight``.
    """
    key = "debiasing.jtt_upweight"
    value = check_number(upweight, key, low=1)
    if mode == "duplicate" and not value.is_integer():
        raise ParameterError(
            key,
            f"must be a whole number of copies >= 1 with jtt_mode 'duplicate', got {upweight!r} "
            "(use jtt_mode 'weight' for a fractional weight)",
        )
    return value


def _jtt(
    base: pd.DataFrame,
    train: np.ndarray,
    errors: pd.Series | np.ndarray | None,
    upweight: float,
    mode: str,
) -> pd.DataFrame:
    if errors is None:
        raise ParameterError(
            "debiasing.strategy", "jtt needs the ERM model's errors (erm.predictions)"
        )
    err = _error_flags(errors, len(base))
    if mode not in ("duplicate", "weight"):
        raise unknown_name_error(
            "jtt mode", mode, ("duplicate", "weight"), key="debiasing.jtt_mode"
        )
    lam = jtt_upweight_value(upweight, mode)
    wrong = train[err[train]]
    if mode == "weight":
        base.loc[wrong, "weight"] = lam
        return base
    extra = [np.repeat(wrong, int(lam) - 1)]
    return _assemble(base, np.zeros(len(base), dtype=bool), extra, augment_copies=False)


def _error_flags(errors: pd.Series | np.ndarray, n_rows: int) -> np.ndarray:
    """``errors`` as a boolean array of ``n_rows``: booleans, or numbers that are all 0 or 1.

    Anything else is refused rather than cast: ``bool(nan)`` is True, so a row whose
    correctness is unknown (NaN, e.g. no ERM prediction after a merge) was upweighted as an
    ERM error.

    Raises:
        ContractError: not one entry per manifest row, or an entry that is not a boolean / 0
            / 1 (NaN, None, 0.5, 2, a string ...).
    """
    raw = np.asarray(errors)
    if raw.ndim != 1 or raw.shape[0] != n_rows:
        raise ContractError(
            f"errors has shape {raw.shape} for a manifest of {n_rows} rows (one flag per row)"
        )
    if raw.dtype.kind == "b":
        return raw
    if raw.dtype.kind in "iuf":
        flag = np.isin(raw, (0, 1))
        if flag.all():
            return raw == 1
        bad = np.flatnonzero(~flag)
        raise ContractError(
            f"errors must be booleans (or 0 / 1), got {bad.size} other value(s), e.g. "
            f"{raw[bad[:3]].tolist()} at row(s) {bad[:3].tolist()} (a NaN, e.g. an image "
            "without an ERM prediction, is neither an error nor a correct prediction)"
        )
    raise ContractError(
        f"errors must be booleans (or 0 / 1), got dtype {raw.dtype} "
        f"(e.g. {raw[:3].tolist()}); a missing flag is neither an error nor a correct one"
    )


def _assemble(
    base: pd.DataFrame, drop: np.ndarray, extra: list[np.ndarray], *, augment_copies: bool
) -> pd.DataFrame:
    """Rows kept once plus the extra copies, each copy right after its original row."""
    kept = np.flatnonzero(~drop)
    copies = np.concatenate(extra) if extra else np.empty(0, dtype=np.int64)
    order = np.concatenate([kept, copies])
    is_copy = np.concatenate([np.zeros(kept.size, bool), np.ones(copies.size, bool)])
    sort = np.lexsort((is_copy, order))
    out = base.iloc[order[sort]].reset_index(drop=True)
    out["augment"] = is_copy[sort] & augment_copies
    return out


def resampling_differences(manifest: pd.DataFrame, resampled: pd.DataFrame) -> list[str]:
    """How ``resampled`` differs from ``manifest`` left as it is (strategy ``none``).

    Args:
        manifest: The manifest.
        resampled: A resampled manifest (``weight``, ``augment`` and ``group`` beside the
            manifest's columns).

    Returns:
        One phrase per difference: train rows added or dropped (or another row order),
        a manifest column whose values differ, weights other than 1, rows marked for
        augmentation; empty when ``resampled`` is ``manifest`` unresampled.
    """
    out: list[str] = []
    ids = manifest["image_id"].astype(str).reset_index(drop=True)
    got = resampled["image_id"].astype(str).reset_index(drop=True)
    if len(got) != len(ids) or not got.equals(ids):
        n_train = int((manifest["split"] == "train").sum())
        n_got = int((resampled["split"] == "train").sum()) if "split" in resampled else len(got)
        out.append(
            f"its rows are not the manifest's ({n_train} train rows in the manifest, "
            f"{n_got} here{', in another order' if n_got == n_train else ''})"
        )
    else:
        left, right = manifest.reset_index(drop=True), resampled.reset_index(drop=True)
        for column in manifest.columns:
            if column not in right.columns:
                out.append(f"it has no column '{column}'")
            elif not left[column].equals(right[column]):
                a, b = left[column], right[column]
                n = int((a.ne(b) & ~(a.isna() & b.isna())).sum())
                if n:  # (equal values under another dtype are not a difference)
                    out.append(f"column '{column}' differs from the manifest's on {n} row(s)")
    if "weight" in resampled:
        n = int((pd.to_numeric(resampled["weight"], errors="coerce") != 1.0).sum())
        if n:
            out.append(f"{n} row(s) weighted other than 1")
    if "augment" in resampled:
        n = int(resampled["augment"].astype(bool).sum())
        if n:
            out.append(f"{n} row(s) marked for augmentation")
    return out
