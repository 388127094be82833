"""``FigureDataset``: saves like Kedro's ``MatplotlibDataset`` and loads the PNG back."""

from __future__ import annotations

import builtins
import errno
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kedro.io.core import DatasetError
from kedro_datasets.partitions import PartitionedDataset
from matplotlib.figure import Figure

from cxr_spurious.datasets.figures import PNG_SIGNATURE, FigureDataset


def _figure() -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_saves_a_png_and_loads_its_bytes(tmp_path):
    ds = FigureDataset(filepath=str(tmp_path / "f.png"), save_args={"dpi": 50})
    with pytest.raises(DatasetError, match="does not exist; run the node that draws it"):
        ds.load()
    ds.save(_figure())
    data = ds.load()
    assert data == (tmp_path / "f.png").read_bytes() and data.startswith(PNG_SIGNATURE)


def test_a_folder_of_figures_is_refused_and_partitions_load(tmp_path):
    ds = FigureDataset(filepath=str(tmp_path / "many"))
    ds.save({"a.png": _figure(), "b.png": _figure()})
    with pytest.raises(DatasetError, match="is a folder of several figures"):
        ds.load()
    parts = PartitionedDataset(
        path=str(tmp_path / "parts"),
        dataset={"type": "cxr_spurious.datasets.figures.FigureDataset"},
        filename_suffix=".png",
    )
    parts.save({"erm.gradcam": _figure()})
    loaded = parts.load()
    assert list(loaded) == ["erm.gradcam"] and loaded["erm.gradcam"]().startswith(PNG_SIGNATURE)


class _DiskFullAfterHalf:
    """A file opened for writing whose ``write`` stores half the data, then fails (ENOSPC)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def write(self, data: bytes) -> int:
        self._raw.write(bytes(data)[: len(data) // 2])
        self._raw.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> _DiskFullAfterHalf:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``disk_full(name)``: from now on, writing the PNG file ``name`` (or a temporary file
    for it, ``.name.*``) stores half its bytes and fails as a full disk does."""
    real_open = builtins.open

    def arm(name: str) -> None:
        def failing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            raw = real_open(file, mode, *args, **kwargs)
            base = os.path.basename(os.fspath(file)) if not isinstance(file, int) else ""
            if "w" in mode and (base == name or base.startswith(f".{name}.")):
                return _DiskFullAfterHalf(raw)
            return raw

        monkeypatch.setattr(builtins, "open", failing_open)
        monkeypatch.setattr(io, "open", failing_open)

    return arm


def test_a_failed_write_keeps_the_previous_complete_figure(
    tmp_path: Path, disk_full: Callable[[str], None]
) -> None:
    ds = FigureDataset(filepath=str(tmp_path / "grid.png"))
    ds.save(_figure())
    good = ds.load()
    disk_full("grid.png")
    with pytest.raises((DatasetError, OSError), match="No space left"):
        ds.save(_figure())
    assert ds.load() == good  # not a truncated PNG that load and the report would accept
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_failed_write_of_several_figures_keeps_the_previous_folder(
    tmp_path: Path, disk_full: Callable[[str], None], overwrite: bool
) -> None:
    ds = FigureDataset(filepath=str(tmp_path / "many"), overwrite=overwrite)
    ds.save({"a.png": _figure(), "b.png": _figure()})
    before = {p.name: p.read_bytes() for p in (tmp_path / "many").iterdir()}
    disk_full("b.png")
    with pytest.raises((DatasetError, OSError), match="No space left"):
        ds.save({"a.png": _figure(), "b.png": _figure(), "c.png": _figure()})
    assert {p.name: p.read_bytes() for p in (tmp_path / "many").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["many"]


def test_several_figures_replace_or_add_to_the_folder_as_matplotlib_dataset(
    tmp_path: Path,
) -> None:
    for overwrite, expected in ((False, ["0.png", "1.png", "x.png"]), (True, ["0.png"])):
        folder = tmp_path / f"o{overwrite}"
        ds = FigureDataset(filepath=str(folder), overwrite=overwrite)
        ds.save({"x.png": _figure(), "sub/y.png": _figure()} if not overwrite else [_figure()])
        ds.save([_figure(), _figure()] if not overwrite else [_figure()])
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        assert names == expected, overwrite
    with pytest.raises(DatasetError, match="outside"):
        FigureDataset(filepath=str(tmp_path / "f")).save({"../escape.png": _figure()})


def test_remote_filesystems_save_as_before() -> None:
    ds = FigureDataset(filepath="memory://figs/one.png")
    ds.save(_figure())
    assert ds.load().startswith(PNG_SIGNATURE)
    many = FigureDataset(filepath="memory://figs/many")
    many.save({"a.png": _figure()})
    part = FigureDataset(filepath="memory://figs/many/a.png").load()
    assert part.startswith(PNG_SIGNATURE)
