"""Every library folder is a regular package, so a non-editable install ships it."""

from __future__ import annotations

from pathlib import Path

import pytest
from setuptools import find_packages

SRC = Path(__file__).resolve().parents[2] / "src"


def test_every_folder_with_modules_is_found_by_setuptools() -> None:
    found = set(find_packages(where=str(SRC)))  # what pyproject's `namespaces = false` ships
    folders = {
        ".".join(p.relative_to(SRC).parts)
        for p in (SRC / "cxr_spurious").rglob("*")
        if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))
    } | {"cxr_spurious"}
    missing = sorted(folders - found)
    assert not missing, f"folders with modules but no __init__.py (left out of a wheel): {missing}"


@pytest.mark.parametrize(
    "module", ["cxr_spurious.training.engine", "cxr_spurious.training.distributed"]
)
def test_training_modules_import_from_the_package(module: str) -> None:
    import importlib

    assert importlib.import_module(module).__file__.startswith(
        str(SRC / "cxr_spurious" / "training")
    )
