"""SkippableDataset: SKIPPED is a no-op that keeps previous artifacts."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pandas as pd
import pytest
from kedro.io.core import DatasetError

from cxr_spurious.datasets.skippable import SKIPPED, SkippableDataset, is_skipped


def _csv(path: Path) -> SkippableDataset:
    return SkippableDataset(
        dataset={"type": "pandas.CSVDataset", "filepath": str(path), "save_args": {"index": False}}
    )


def test_delegates_and_skips(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    ds = _csv(path)
    assert not ds.exists()
    ds.save(pd.DataFrame({"a": [1, 2]}))
    before = path.read_bytes()
    ds.save(SKIPPED)
    assert path.read_bytes() == before
    assert ds.load()["a"].tolist() == [1, 2]  # previous artifact kept and loadable


def test_skipped_without_previous_artifact_loads_as_skipped(tmp_path: Path) -> None:
    ds = _csv(tmp_path / "none.csv")
    ds.save(SKIPPED)
    assert is_skipped(ds.load()) and not (tmp_path / "none.csv").exists()


def test_sentinel_survives_copies() -> None:
    assert copy.deepcopy(SKIPPED) is SKIPPED and pickle.loads(pickle.dumps(SKIPPED)) is SKIPPED
    assert not SKIPPED


def test_bad_config() -> None:
    with pytest.raises(DatasetError, match="type"):
        SkippableDataset(dataset={"filepath": "x"})


def test_saved_value_is_served_from_memory_for_write_only_datasets(tmp_path) -> None:
    import matplotlib.pyplot as plt

    from cxr_spurious.datasets.skippable import SkippableDataset

    ds = SkippableDataset(
        dataset={"type": "matplotlib.MatplotlibDataset", "filepath": str(tmp_path / "fig.png")}
    )
    fig, _ = plt.subplots()
    ds.save(fig)
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert ds.load() is fig  # MatplotlibDataset itself cannot load
    plt.close(fig)
