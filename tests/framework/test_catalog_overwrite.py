"""A catalog entry that deletes its folder before saving must not hold another entry's files."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from kedro.config import OmegaConfigLoader

from cxr_spurious.settings import CONFIG_LOADER_ARGS


def _catalog(env: str) -> dict:
    args = {
        k: v for k, v in CONFIG_LOADER_ARGS.items() if k in ("merge_strategy", "config_patterns")
    }
    return OmegaConfigLoader(conf_source="conf", base_env="base", default_run_env=env, **args)[
        "catalog"
    ]


def _location(entry: dict) -> str | None:
    where = entry.get("path") or entry.get("filepath")
    if where is None and isinstance(entry.get("dataset"), dict):
        where = entry["dataset"].get("path") or entry["dataset"].get("filepath")
    return where


@pytest.mark.parametrize("env", ["base", "chexlocalize"])
def test_overwriting_folders_hold_no_other_dataset(env: str) -> None:
    catalog = {
        k: v for k, v in _catalog(env).items() if isinstance(v, dict) and not k.startswith("_")
    }
    overwriting = {
        k: PurePosixPath(_location(v))
        for k, v in catalog.items()
        if v.get("overwrite") is True and _location(v)
    }
    assert "localization_segmentations" in overwriting  # the check has something to check
    for name, folder in overwriting.items():
        for other, entry in catalog.items():
            where = _location(entry)
            if other == name or where is None:
                continue
            inside = PurePosixPath(where) == folder or folder in PurePosixPath(where).parents
            assert not inside, f"{env}: {name} (overwrite: true) would delete {other} at {where}"


def test_figure_folders_are_not_previewed_by_kedro_viz() -> None:
    """A ``MatplotlibDataset`` saving a folder of figures (a path without a file suffix) is
    not a figure kedro-viz can preview: without ``preview: false`` every ``kedro viz
    build --include-previews`` warns for it (``IsADirectoryError``)."""
    folders = {
        name: entry
        for name, entry in _catalog("base").items()
        if isinstance(entry, dict)
        and entry.get("type") == "matplotlib.MatplotlibDataset"
        and not PurePosixPath(str(_location(entry))).suffix
    }
    assert "{variant}.saliency_overlays" in folders  # the check has something to check
    for name, entry in folders.items():
        viz = entry.get("metadata", {}).get("kedro-viz", {})
        assert viz.get("preview") is False, f"{name}: a folder of figures, set preview: false"
