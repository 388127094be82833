"""Atomic writes leave nothing half-written."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cxr_spurious.io.atomic import (
    atomic_dir,
    atomic_path,
    current_umask,
    remove_stale_old_folders,
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


def test_an_interrupt_between_the_two_renames_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "heatmaps"
    with atomic_dir(target) as tmp:
        (tmp / "old.txt").write_text("previous good output")
    real = os.replace
    calls: list[tuple[object, object]] = []

    def interrupted_second_rename(src: object, dst: object) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # final -> old done; tmp -> final is interrupted
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_second_rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new complete output")
    monkeypatch.setattr(os, "replace", real)
    assert len(calls) >= 2
    assert (target / "old.txt").read_text() == "previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heatmaps"]


def test_a_leftover_old_folder_of_this_pid_neither_blocks_nor_stays(tmp_path: Path) -> None:
    """An interrupted removal left ``.<name>.old.<pid>`` non-empty; a later process that gets
    the same pid (a container entrypoint) must still swap, and the leftover goes."""
    target = tmp_path / "heatmaps"
    with atomic_dir(target) as tmp:
        (tmp / "v1.txt").write_text("v1")
    stale = tmp_path / f".heatmaps.old.{os.getpid()}"
    stale.mkdir()
    (stale / "junk").write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "v2.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["v2.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heatmaps"]


def test_stale_old_folders_of_ended_processes_are_removed_others_kept(tmp_path: Path) -> None:
    target = tmp_path / "out"
    dead = tmp_path / f".out.old.{_dead_pid()}.0a1b2c3d"
    legacy = tmp_path / f".out.old.{_dead_pid()}"  # the name before the random suffix
    live = tmp_path / f".out.old.{os.getppid()}.deadbeef"  # a running process's swap
    other = tmp_path / f".other.old.{_dead_pid()}.0a1b2c3d"  # another folder's
    sibling = tmp_path / f".out.old.{_dead_pid()}.tmp.x1y2"  # temporary folder of "out.old.N"
    for path in (dead, legacy, live, other, sibling):
        path.mkdir()
        (path / "f").write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert not dead.exists() and not legacy.exists()
    assert live.exists() and other.exists() and sibling.exists()


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed): file text, link target or ``dir``."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = path.read_text()
    return out


def test_atomic_dir_on_a_symlinked_folder_replaces_the_target(tmp_path: Path) -> None:
    """``data/heatmaps -> ../bigdisk/heatmaps``: the new folder lands on the big disk."""
    (tmp_path / "bigdisk" / "heatmaps").mkdir(parents=True)
    (tmp_path / "bigdisk" / "heatmaps" / "a.txt").write_text("old")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "heatmaps").symlink_to(Path("..", "bigdisk", "heatmaps"))
    with atomic_dir(tmp_path / "data" / "heatmaps") as tmp:
        (tmp / "b.txt").write_text("new")
    assert _tree(tmp_path) == {
        "bigdisk": "dir",
        "bigdisk/heatmaps": "dir",
        "bigdisk/heatmaps/b.txt": "new",
        "data": "dir",
        "data/heatmaps": "-> ../bigdisk/heatmaps",
    }


def test_atomic_path_on_a_symlinked_file_writes_the_target(tmp_path: Path) -> None:
    (tmp_path / "bigdisk").mkdir()
    (tmp_path / "bigdisk" / "report.txt").write_text("old")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "report.txt").symlink_to(Path("..", "bigdisk", "report.txt"))
    write_text_atomic(tmp_path / "data" / "report.txt", "new")
    assert _tree(tmp_path) == {
        "bigdisk": "dir",
        "bigdisk/report.txt": "new",
        "data": "dir",
        "data/report.txt": "-> ../bigdisk/report.txt",
    }


def test_a_stale_old_symlink_goes_and_its_target_stays(tmp_path: Path) -> None:
    """A swap before the fix moved the link itself aside as ``.<name>.old.<pid>.<hex>``."""
    (tmp_path / "bigdisk" / "heatmaps").mkdir(parents=True)
    (tmp_path / "bigdisk" / "heatmaps" / "a.txt").write_text("kept")
    stale = tmp_path / "data" / f".heatmaps.old.{_dead_pid()}.0a1b2c3d"
    stale.parent.mkdir()
    stale.symlink_to(Path("..", "bigdisk", "heatmaps"))
    with atomic_dir(tmp_path / "data" / "heatmaps") as tmp:
        (tmp / "b.txt").write_text("new")
    assert _tree(tmp_path) == {
        "bigdisk": "dir",
        "bigdisk/heatmaps": "dir",
        "bigdisk/heatmaps/a.txt": "kept",
        "data": "dir",
        "data/heatmaps": "dir",
        "data/heatmaps/b.txt": "new",
    }


def test_a_file_where_the_folder_goes_is_replaced_without_a_leftover(tmp_path: Path) -> None:
    # the file was moved aside as ".out.old.<pid>.<hex>" and never removed (rmtree of a file
    # does nothing with ignore_errors, and the stale-folder cleanup skipped files)
    final = tmp_path / "out"
    final.write_text("an older run wrote a file here")
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("ok")
    assert final.is_dir() and (final / "new").read_text() == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a leftover file of an ended process is cleaned like a leftover folder
    stale = tmp_path / ".out.old.999999999.abc"
    stale.write_text("left by a crash")
    assert remove_stale_old_folders(final) == [stale] and not stale.exists()
