"""``FigureDataset``: saves like Kedro's ``MatplotlibDataset`` and loads the PNG back."""

from __future__ import annotations

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
