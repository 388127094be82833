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

A PNG carries the text a node recorded on its figure (``io.png_text.set_png_text``, e.g.
the model fingerprint of an overlay) as ``tEXt`` chunks; ``io.png_text.read_png_text``
reads it back from the loaded bytes.

On the local filesystem a save is atomic: a figure is written to a temporary file and
renamed (``atomic_path``), a list or dict of figures is written into a temporary folder that
replaces the folder once complete (``atomic_dir``), so a failure mid-write (a full disk, a
kill) never leaves a truncated PNG that ``load`` or the report would accept. Remote
filesystems save exactly as ``MatplotlibDataset`` does.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
from kedro.io.core import DatasetError, get_filepath_str
from kedro_datasets.matplotlib import MatplotlibDataset
from matplotlib.figure import Figure

from cxr_spurious.io.atomic import atomic_dir, write_bytes_atomic
from cxr_spurious.io.png_text import png_save_args

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FigureDataset(MatplotlibDataset):
    """Saves a figure like ``MatplotlibDataset``; loads the saved image file as bytes."""

    def save(self, data: Figure | list[Figure] | dict[str, Figure]) -> None:
        """Save like ``MatplotlibDataset``; atomically on the local filesystem."""
        if self._protocol != "file" or not isinstance(data, list | dict):
            # One figure (``_save_to_fs`` below is atomic locally) or a remote filesystem.
            MatplotlibDataset.save.__wrapped__(self, data)  # type: ignore[attr-defined]
            return
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        if isinstance(data, list):
            named = [(f"{index}.png", plot) for index, plot in enumerate(data)]
        else:
            named = [(_sub_path(name, save_path), plot) for name, plot in data.items()]
        with atomic_dir(save_path) as tmp:
            if not self._overwrite and os.path.isdir(save_path):
                # Without ``overwrite`` MatplotlibDataset adds to the folder: keep its files.
                shutil.copytree(save_path, tmp, dirs_exist_ok=True)
            for name, plot in named:
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self._png_bytes(plot, name))
        plt.close("all")
        self._invalidate_cache()

    def _save_to_fs(self, full_key_path: str, plot: Figure) -> None:
        if self._protocol != "file":
            super()._save_to_fs(full_key_path, plot)
            return
        write_bytes_atomic(full_key_path, self._png_bytes(plot, full_key_path))

    def _png_bytes(self, plot: Figure, path: str) -> bytes:
        buffer = io.BytesIO()
        plot.savefig(buffer, **png_save_args(plot, self._save_args, path))
        return buffer.getvalue()

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


def _sub_path(name: str, root: str) -> str:
    """``name`` relative to the folder; one that leaves it is refused (as MatplotlibDataset)."""
    relative = name.replace("\\", "/").lstrip("/")
    base = Path(root).resolve()
    if not (base / relative).resolve().is_relative_to(base):
        raise DatasetError(f"figure name {name!r} points outside the folder {root}")
    return relative
