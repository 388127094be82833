"""Nodes and a slow dataset for the DaskRunner stopping test (light imports: the workers load
this module to run them)."""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from kedro.io import AbstractDataset


class SlowLines(AbstractDataset):
    """Text lines saved one at a time with a pause: a slow save that is not atomic.

    Its ``_fs`` and ``_filepath`` follow ``kedro_datasets``' file datasets.
    """

    def __init__(self, path: str, pause_s: float = 0.0) -> None:
        self._path, self._pause = Path(path), pause_s
        self._fs, self._filepath = fsspec.filesystem("file"), PurePosixPath(path)

    def _save(self, lines: list[str]) -> None:
        with self._path.open("w", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
                out.flush()
                time.sleep(self._pause)

    def _load(self) -> list[str]:
        return self._path.read_text(encoding="utf-8").splitlines()

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class DiesMidSave(SlowLines):
    """Saves the first half of its lines, then its process dies: a worker killed mid-save
    (by the out-of-memory killer, say), leaving a partial file."""

    def _save(self, lines: list[str]) -> None:
        with self._path.open("w", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in lines[: len(lines) // 2])
        os._exit(1)


ROWS = 50


def fails_while_b_saves(_x: Any, folder: str) -> list[str]:
    """Node a: fails (until ``a_fixed`` exists) once node b has begun its slow save."""
    root = Path(folder)
    deadline = time.monotonic() + 30
    while not (root / "b_out.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not (root / "a_fixed").exists():
        raise ValueError("boom (a bug fixed before the rerun)")
    return ["a"]


def rows(_x: Any) -> list[str]:
    return [f"row {i}" for i in range(ROWS)]


def count_rows(lines: list[str]) -> list[str]:
    return [str(len(lines))]
