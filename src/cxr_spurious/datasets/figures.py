"""Figures that later nodes can read back: Kedro's ``MatplotlibDataset`` plus ``load``.

Kedro's ``matplotlib.MatplotlibDataset`` only saves, so a node cannot take a figure as an
input, and a node that embeds figures (the study report) would have no data dependency on
the nodes that draw them. ``FigureDataset`` saves exactly as ``MatplotlibDataset`` does
(same arguments, same files, same kedro-viz preview) and loads the saved PNG as bytes::

    example_grid:
      type: cxr_spurious.datasets.figures.FigureDataset
      filepath: data/08_reporting/example_grid.png
      save_args: {dpi: 120, bbox_inches: tight}

Inside a ``PartitionedDataset`` each partition loads as the bytes of its file.
"""

from __future__ import annotations

from kedro.io.core import DatasetError, get_filepath_str
from kedro_datasets.matplotlib import MatplotlibDataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FigureDataset(MatplotlibDataset):
    """Saves a figure like ``MatplotlibDataset``; loads the saved image file as bytes."""

    def load(self) -> bytes:  # type: ignore[override]
        """The bytes of the saved image (one file; a folder of several figures is refused).

        Raises:
            DatasetError: the file is missing or is a folder, naming its path.
        """
        path = get_filepath_str(self._get_load_path(), self._protocol)
        if not self._fs.exists(path):
            raise DatasetError(f"figure file {path} does not exist; run the node that draws it")
        if self._fs.isdir(path):
            raise DatasetError(
                f"figure path {path} is a folder of several figures; FigureDataset loads one file"
            )
        with self._fs.open(path, mode="rb") as f:
            return f.read()
