"""Tests of every resampling strategy: counts, patient boundaries and determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.debiasing.debias_fixtures import TASK, make_manifest

from cxr_spurious.debiasing.groups import assign_groups, group_keys
from cxr_spurious.debiasing.resampling import (
    STRATEGIES,
    cluster_keep,
    resample_manifest,
    target_size,
)
from cxr_spurious.errors import ContractError, ParameterError


def _setup(cross_label: bool = False) -> tuple[pd.DataFrame, pd.Series]:
    m = make_manifest()
    ids, _ = assign_groups(group_keys(m, ["sex"], task=TASK, cross_label=cross_label))
    return m, ids


def _features(m: pd.DataFrame) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(len(m), 4))


def _run(
    strategy: str, seed: int = 0, **kw: object
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    m, g = _setup(cross_label=strategy == "group_balance")
    if strategy == "cluster_downsample":
        kw.setdefault("features", _features(m))
    if strategy == "jtt":
        kw.setdefault("errors", pd.Series(np.arange(len(m)) % 5 == 0))
    return m, resample_manifest(m, g, strategy, seed=seed, **kw), g


def _train_counts(df: pd.DataFrame) -> pd.Series:
    return df[df["split"] == "train"].groupby("group").size()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_val_test_unchanged_and_no_patient_leak(strategy: str) -> None:
    m, out, _ = _run(strategy)
    cols = list(m.columns)
    for split in ("val", "test"):
        pd.testing.assert_frame_equal(
            out.loc[out["split"] == split, cols].reset_index(drop=True),
            m.loc[m["split"] == split, cols].reset_index(drop=True),
        )
    train_patients = set(m.loc[m["split"] == "train", "patient_id"])
    assert set(out.loc[out["split"] == "train", "patient_id"]) <= train_patients
    assert out.groupby("patient_id")["split"].nunique().max() == 1
    assert {"weight", "augment", "group"} <= set(out.columns)
    assert out["augment"].dtype == bool and out["group"].dtype == np.int64


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_same_rows(strategy: str) -> None:
    _, a, _ = _run(strategy, seed=3)
    _, b, _ = _run(strategy, seed=3)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    "strategy",
    ["upsample", "downsample", "group_balance", "cluster_downsample", "augment_upsample"],
)
def test_different_seed_different_rows(strategy: str) -> None:
    _, a, _ = _run(strategy, seed=1)
    _, b, _ = _run(strategy, seed=2)
    assert a["image_id"].tolist() != b["image_id"].tolist()


def test_upsample_counts_to_max() -> None:
    m, out, g = _run("upsample", target="max")
    before = _train_counts(m.assign(group=g))
    after = _train_counts(out)
    assert (after == before.max()).all()
    assert not out["augment"].any()
    # every original train row is still there exactly once or more
    assert set(m.loc[m["split"] == "train", "image_id"]) <= set(out["image_id"])


def test_downsample_counts_to_min_without_duplicates() -> None:
    m, out, g = _run("downsample", target="min")
    before = _train_counts(m.assign(group=g))
    assert (_train_counts(out) == before.min()).all()
    assert not out["image_id"].duplicated().any()


def test_group_balance_equal_group_by_label_cells() -> None:
    _, out, _ = _run("group_balance", target=15)
    counts = _train_counts(out)
    assert len(counts) == 4 and (counts == 15).all()


def test_numeric_target_between_sizes() -> None:
    m, out, g = _run("downsample", target=20)
    before = _train_counts(m.assign(group=g))
    assert (_train_counts(out) == np.minimum(before, 20)).all()


def test_augment_upsample_flags_only_copies() -> None:
    m, out, g = _run("augment_upsample", target="max")
    train = out[out["split"] == "train"]
    n_copies = len(train) - int((m["split"] == "train").sum())
    assert int(train["augment"].sum()) == n_copies > 0
    first = ~train["image_id"].duplicated(keep="first")
    assert not train.loc[first, "augment"].any()


def test_reweight_rows_unchanged_weights_balance_groups() -> None:
    m, out, g = _run("reweight")
    pd.testing.assert_frame_equal(out[list(m.columns)], m)
    train = out[out["split"] == "train"]
    sums = train.groupby("group")["weight"].sum()
    assert np.allclose(sums, sums.iloc[0])
    assert np.isclose(train["weight"].mean(), 1.0)
    assert (out.loc[out["split"] != "train", "weight"] == 1.0).all()


def test_jtt_duplicates_errors() -> None:
    m, out, _ = _run("jtt", jtt_upweight=4)
    errors = np.arange(len(m)) % 5 == 0
    wrong_train = set(m.loc[errors & (m["split"] == "train").to_numpy(), "image_id"])
    counts = out[out["split"] == "train"]["image_id"].value_counts()
    assert all(counts[i] == 4 for i in wrong_train)
    assert all(counts[i] == 1 for i in counts.index if i not in wrong_train)


def test_jtt_weight_mode() -> None:
    m, out, _ = _run("jtt", jtt_upweight=3, jtt_mode="weight")
    errors = (np.arange(len(m)) % 5 == 0) & (m["split"] == "train").to_numpy()
    assert (out.loc[errors, "weight"] == 3.0).all() and (out.loc[~errors, "weight"] == 1.0).all()


def test_cluster_downsample_counts_and_spread() -> None:
    m, out, g = _run("cluster_downsample", target="min")
    assert (_train_counts(out) == _train_counts(m.assign(group=g)).min()).all()
    # two well separated blobs of unequal size keep equal shares
    x = np.r_[np.zeros((90, 2)), np.full((10, 2), 10.0)] + np.random.default_rng(0).normal(
        0, 0.1, (100, 2)
    )
    keep = cluster_keep(x, 20, n_clusters=2, seed=0)
    assert keep.size == 20 and np.sum(keep >= 90) == 10


def _separated_clusters(sizes: list[int]) -> np.ndarray:
    """Points in far-apart tight clusters of ``sizes`` (k-means finds each one)."""
    rng = np.random.default_rng(0)
    return np.vstack([rng.normal(100.0 * c, 0.1, size=(n, 2)) for c, n in enumerate(sizes)])


@pytest.mark.parametrize(
    ("sizes", "keep", "expected"),
    [
        ([7, 9, 7, 2], 14, [2, 4, 4, 4]),  # equal shares capped by size (was 2, 3, 4, 5)
        ([37, 4, 26, 9, 12, 30, 38], 145, [4, 9, 12, 26, 30, 32, 32]),
        ([5, 5, 5], 7, [2, 2, 3]),
    ],
)
def test_cluster_downsample_keeps_equal_shares_capped_by_cluster_size(
    sizes: list[int], keep: int, expected: list[int]
) -> None:
    x = _separated_clusters(sizes)
    kept = cluster_keep(x, keep, n_clusters=len(sizes), seed=0)
    starts = np.cumsum([0, *sizes])
    per_cluster = [int(((kept >= a) & (kept < b)).sum()) for a, b in zip(starts, starts[1:])]
    assert sorted(per_cluster) == expected and sum(per_cluster) == keep


def test_water_fill_is_max_min_fair_against_brute_force() -> None:
    """Any bin below its cap has at most one row less than any other bin."""
    from cxr_spurious.debiasing.resampling import _water_fill

    rng = np.random.default_rng(5)
    for _ in range(300):
        sizes = rng.integers(0, 15, size=rng.integers(1, 8))
        total = int(rng.integers(0, sizes.sum() + 1))
        quota = _water_fill(sizes, total)
        assert quota.sum() == total and (quota <= sizes).all() and (quota >= 0).all()
        below_cap = quota < sizes
        if below_cap.any():
            assert quota.max() - quota[below_cap].min() <= 1, (sizes, total, quota)


def test_ungrouped_train_rows_are_kept_once() -> None:
    m, g = _setup()
    g = g.copy()
    g.iloc[0] = -1
    assert m.loc[0, "split"] == "train"
    for strategy in ("downsample", "upsample"):
        out = resample_manifest(m, g, strategy, target="min" if strategy == "downsample" else "max")
        kept = out[out["image_id"] == m.loc[0, "image_id"]]
        assert len(kept) == 1 and kept["group"].iloc[0] == -1


@pytest.mark.parametrize("bad", [0, -3, "mean", 2.5, True])
def test_bad_target_size(bad: object) -> None:
    with pytest.raises(ParameterError, match="debiasing.target"):
        target_size([3, 5], bad)  # type: ignore[arg-type]


def test_target_size_names() -> None:
    assert (
        target_size([3, 5, 10], "min"),
        target_size([3, 5, 10], "median"),
        target_size([3, 6], "median"),
        target_size([3, 5, 10], "max"),
    ) == (3, 5, 5, 10)


def test_zero_target_in_resample() -> None:
    m, g = _setup()
    with pytest.raises(ParameterError, match="positive integer, got 0"):
        resample_manifest(m, g, "upsample", target=0)


def test_unknown_strategy_lists_valid() -> None:
    m, g = _setup()
    with pytest.raises(
        ParameterError, match="debiasing.strategy.*valid names are: augment_upsample"
    ):
        resample_manifest(m, g, "smote")


def test_misaligned_groups_and_missing_inputs() -> None:
    m, g = _setup()
    with pytest.raises(ContractError, match="groups has"):
        resample_manifest(m, g.iloc[:-1], "upsample")
    with pytest.raises(ParameterError, match="needs features"):
        resample_manifest(m, g, "cluster_downsample", target="min")
    with pytest.raises(ParameterError, match="erm.predictions"):
        resample_manifest(m, g, "jtt")


def test_jtt_refuses_errors_that_are_not_flags() -> None:
    # np.asarray(errors, dtype=bool) turned NaN (no ERM prediction) into an error
    m, g = _setup()
    train = np.flatnonzero((m["split"] == "train").to_numpy())
    for bad in (np.nan, 0.5, 2, None, "yes"):
        errors = pd.Series(np.arange(len(m)) % 5 == 0, dtype=object)
        errors.iloc[train[1]] = bad
        if bad is not None and not isinstance(bad, str):
            errors = errors.astype(float)
        with pytest.raises(ContractError, match="errors must be booleans"):
            resample_manifest(m, g, "jtt", errors=errors)
    with pytest.raises(ContractError, match="errors has shape"):
        resample_manifest(m, g, "jtt", errors=np.zeros(len(m) - 1, dtype=bool))


@pytest.mark.parametrize("dtype", [bool, np.int64, np.uint8, np.float64])
def test_jtt_takes_booleans_and_0_1_numbers_alike(dtype: type) -> None:
    m, g = _setup()
    flags = np.arange(len(m)) % 5 == 0
    expected = resample_manifest(m, g, "jtt", errors=flags, jtt_upweight=3)
    got = resample_manifest(m, g, "jtt", errors=pd.Series(flags.astype(dtype)), jtt_upweight=3)
    pd.testing.assert_frame_equal(got, expected)
