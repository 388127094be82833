"""Atomic writes leave nothing half-written."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cxr_spurious.io.atomic import (
    atomic_dir,
    atomic_path,
    current_umask,
    write_bytes_atomic,
    write_text_atomic,
)


def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    write_text_atomic(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_path_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "cache"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)],
)
def test_new_files_and_folders_get_the_mode_of_a_plain_write(
    tmp_path: Path, umask: Callable[[int], None], mask: int, file_mode: int, dir_mode: int
) -> None:
    umask(mask)
    assert current_umask() == mask
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert stat.S_IMODE(plain.stat().st_mode) == file_mode  # what open() gives, the reference
    write_text_atomic(tmp_path / "seg.json", "{}")
    write_bytes_atomic(tmp_path / "blob.bin", b"x")
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.unlink()  # a writer that recreates the file itself
        tmp.write_bytes(b"y")
    for name in ("seg.json", "blob.bin", "model.pt"):
        assert oct(stat.S_IMODE((tmp_path / name).stat().st_mode)) == oct(file_mode), name
    with atomic_dir(tmp_path / "cache") as tmp:
        (tmp / "a").write_text("1")
    assert oct(stat.S_IMODE((tmp_path / "cache").stat().st_mode)) == oct(dir_mode)
    assert oct(stat.S_IMODE((tmp_path / "cache" / "a").stat().st_mode)) == oct(file_mode)


def test_replacing_a_file_keeps_its_mode(tmp_path: Path, umask: Callable[[int], None]) -> None:
    umask(0o022)
    target = tmp_path / "shared.csv"
    target.write_text("old")
    target.chmod(0o664)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o664
