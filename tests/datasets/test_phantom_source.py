"""PhantomSourceDataset: generates the phantom unless the folder holds the same phantom."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxr_spurious.datasets.phantom_source import PhantomRequest, PhantomSourceDataset
from cxr_spurious.errors import ParameterError
from cxr_spurious.phantom import PhantomConfig, generate_phantom

# small and fast: 24 images at 32 px, no counterfactuals or human benchmark
BASE = {
    "n_images": 24,
    "image_size": 32,
    "counterfactuals": {"splits": []},
    "human_benchmark": {"splits": []},
}
SITES = PhantomConfig().to_dict()["sites"]
RACE = PhantomConfig().to_dict()["demographics"]["race"]


def _reversed(mapping: dict) -> dict:
    return dict(reversed(list(mapping.items())))


def _save(path: Path, config: dict, seed: int = 0) -> bool:
    """Save the request; True when it generated (the sentinel left in the folder is gone)."""
    sentinel = path / "sentinel"
    if path.is_dir():
        sentinel.write_text("kept")
    PhantomSourceDataset(str(path), progress=False).save(PhantomRequest(True, config, seed))
    return not sentinel.exists()


def _column(path: Path, name: str) -> list[str]:
    return pd.read_csv(path / "attributes.csv")[name].tolist()


@pytest.mark.parametrize(
    ("listed", "other", "column"),
    [
        ({"sites": SITES}, {"sites": _reversed(SITES)}, "site"),
        (
            {"demographics": {"race": RACE}},
            {"demographics": {"race": _reversed(RACE)}},
            "race",
        ),
    ],
)
def test_listing_sites_or_groups_in_another_order_regenerates(
    tmp_path: Path, listed: dict, other: dict, column: str
) -> None:
    # the cohort draws sites and groups in the listed order: another order is another
    # phantom (the request digest sorted the keys, so it was skipped as up to date)
    path = tmp_path / "phantom"
    assert _save(path, {**BASE, **listed})
    first = _column(path, column)
    assert _save(path, {**BASE, **other})
    fresh = generate_phantom(
        PhantomConfig.from_dict({**BASE, **other}), tmp_path / "fresh", seed=0, progress=False
    )
    assert _column(path, column) == _column(fresh, column) != first


def test_the_same_phantom_spelt_otherwise_is_not_regenerated(tmp_path: Path) -> None:
    path = tmp_path / "phantom"
    assert _save(path, BASE)
    assert not _save(path, BASE)
    # keys in another order, a default spelt out, fixed-vocabulary and multiplier maps in
    # another order: the same resolved config, the same cohort
    multiplier = {"race": {"Black": 1.5, "Asian": 0.8}}
    spelt = {
        "human_benchmark": {"splits": []},
        "counterfactuals": {"splits": []},
        "image_size": 32,
        "n_images": 24,
        "split_fractions": {"test": 0.31, "val": 0.16, "train": 0.53},
        "tube": {"side": "ptx"},
        "demographics": {"prevalence_multiplier": multiplier},
    }
    assert _save(path, spelt)  # the multiplier is new
    multiplier["race"] = _reversed(multiplier["race"])
    assert not _save(path, spelt)


def test_the_digest_follows_what_is_generated() -> None:
    digest = PhantomRequest(True, BASE, 0).digest()
    assert PhantomRequest(True, BASE, 0, n_jobs=4).digest() == digest
    assert PhantomRequest(True, BASE, 1).digest() != digest
    assert PhantomRequest(True, {**BASE, "n_images": 25}, 0).digest() != digest
    listed = PhantomRequest(True, {**BASE, "sites": SITES}, 0).digest()
    assert listed == digest  # the default sites spelt out
    assert PhantomRequest(True, {**BASE, "sites": _reversed(SITES)}, 0).digest() != digest
    with pytest.raises(ParameterError) as info:
        PhantomRequest(True, {**BASE, "image_size": 20}, 0).digest()
    assert info.value.key == "ingestion.phantom.image_size"


def test_a_disabled_request_generates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "phantom"
    PhantomSourceDataset(str(path), progress=False).save(PhantomRequest(False, {"n_images": 0}))
    assert not path.exists()
