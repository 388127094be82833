"""Artefact assignment: exact quotas per (split, label), test independent of the label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.sweep.confounding import assign_artefacts, quota

TASK = "Pneumothorax"
# (split, label) -> number of images
SIZES = {
    ("train", 1): 40,
    ("train", 0): 60,
    ("val", 1): 11,
    ("val", 0): 9,
    ("test", 1): 25,
    ("test", 0): 31,
}


def _manifest() -> pd.DataFrame:
    rows = []
    for (split, label), n in SIZES.items():
        rows += [
            {"image_id": f"{split}{label}_{i:03d}", "split": split, TASK: label} for i in range(n)
        ]
    return pd.DataFrame(rows)


def _assign(manifest: pd.DataFrame, seed: int = 0) -> pd.Series:
    return assign_artefacts(
        manifest, task=TASK, p_given_ptx=0.9, p_given_no_ptx=0.1, test_p=0.5, seed=seed
    )


def _counts(manifest: pd.DataFrame, has: pd.Series) -> dict[tuple[str, int], int]:
    table = manifest.assign(has=manifest["image_id"].map(has))
    return {k: int(v) for k, v in table.groupby(["split", TASK])["has"].sum().items()}


def test_exact_quotas_per_split_and_label() -> None:
    manifest = _manifest()
    has = _assign(manifest)
    assert has.dtype == bool and has.index.name == "image_id"
    assert set(has.index) == set(manifest["image_id"])
    expected = {
        ("train", 1): 36,
        ("train", 0): 6,
        ("val", 1): 10,
        ("val", 0): 1,
        ("test", 1): 13,
        ("test", 0): 16,
    }
    assert _counts(manifest, has) == expected
    assert quota(11, 0.9) == 10 and quota(25, 0.5) == 13 and quota(9, 0.1) == 1


def test_test_split_is_independent_of_the_label() -> None:
    manifest = _manifest()
    counts = _counts(manifest, _assign(manifest))
    share_pos = counts[("test", 1)] / SIZES[("test", 1)]
    share_neg = counts[("test", 0)] / SIZES[("test", 0)]
    # only rounding separates the two shares (half an image per group)
    assert abs(share_pos - share_neg) <= 0.5 / SIZES[("test", 1)] + 0.5 / SIZES[("test", 0)]
    confounded = counts[("train", 1)] / 40 - counts[("train", 0)] / 60
    assert confounded == pytest.approx(0.8)


def test_deterministic_and_independent_of_row_order() -> None:
    manifest = _manifest()
    first = _assign(manifest, seed=3)
    shuffled = manifest.sample(frac=1.0, random_state=7)
    pd.testing.assert_series_equal(first, _assign(shuffled, seed=3))
    pd.testing.assert_series_equal(first, _assign(manifest, seed=3))


def test_different_seeds_choose_different_images() -> None:
    manifest = _manifest()
    a, b = _assign(manifest, seed=0), _assign(manifest, seed=1)
    assert not a.equals(b)
    assert _counts(manifest, a) == _counts(manifest, b)


def _carriers(has: pd.Series, manifest: pd.DataFrame, split: str) -> set[str]:
    ids = set(manifest.loc[manifest["split"] == split, "image_id"])
    return {i for i in ids if has[i]}


def test_a_test_seed_fixes_the_test_carriers_for_every_seed() -> None:
    manifest = _manifest()

    def assign(seed: int, test_seed: int | None) -> pd.Series:
        return assign_artefacts(
            manifest, task=TASK, p_given_ptx=0.9, p_given_no_ptx=0.1, test_p=0.5,
            seed=seed, test_seed=test_seed,
        )  # fmt: skip

    # without a test seed, the seed re-draws the test carriers too
    a, b = assign(0, None), assign(1, None)
    assert _carriers(a, manifest, "test") != _carriers(b, manifest, "test")
    pd.testing.assert_series_equal(a, _assign(manifest, seed=0))
    # with one, the test carriers are the same for every seed; train and val still move
    fixed = [assign(seed, 7) for seed in range(4)]
    assert len({frozenset(_carriers(h, manifest, "test")) for h in fixed}) == 1
    assert len({frozenset(_carriers(h, manifest, "train")) for h in fixed}) == 4
    assert all(_counts(manifest, h) == _counts(manifest, a) for h in fixed)
    # and another test seed draws other test carriers
    assert _carriers(assign(0, 8), manifest, "test") != _carriers(fixed[0], manifest, "test")
    with pytest.raises(ParameterError, match="sweep.test_seed"):
        assign(0, 1.5)  # type: ignore[arg-type]


def test_bad_probability_names_the_key() -> None:
    with pytest.raises(ParameterError) as err:
        assign_artefacts(_manifest(), task=TASK, p_given_ptx=1.5, p_given_no_ptx=0.1, seed=0)
    assert err.value.key == "p_given_ptx"


def test_labels_must_be_binary() -> None:
    manifest = _manifest()
    manifest.loc[3, TASK] = np.nan
    with pytest.raises(ContractError, match="train1_003"):
        _assign(manifest)
    with pytest.raises(ContractError, match="missing column"):
        assign_artefacts(manifest, task="Edema", p_given_ptx=0.9, p_given_no_ptx=0.1, seed=0)


@pytest.mark.parametrize(
    ("n", "p", "expected"), [(45, 0.7, 32), (85, 0.7, 60), (90, 0.35, 32), (45, 0.3, 14)]
)
def test_a_half_rounds_up_exactly_as_documented(n: int, p: float, expected: int) -> None:
    # floor(p * n + 0.5) in binary floating point: 0.7 * 45 = 31.499999999999996 -> 31
    assert quota(n, p) == expected


def test_a_half_quota_rounds_up_on_both_sides_of_the_label() -> None:
    manifest = pd.DataFrame(
        {
            "image_id": [f"x{i:03d}" for i in range(90)],
            "split": "train",
            TASK: [1] * 45 + [0] * 45,
        }
    )
    has = assign_artefacts(manifest, task=TASK, p_given_ptx=0.7, p_given_no_ptx=0.3, seed=0)
    assert _counts(manifest, has) == {("train", 0): 14, ("train", 1): 32}
