"""Atomic writes leave nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_spurious.io.atomic import atomic_dir, atomic_path, write_text_atomic


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
