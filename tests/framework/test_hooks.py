"""Project hooks: stage timing per stage, and the conf folder read without a session."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from kedro.pipeline import Node

from cxr_spurious import hooks
from cxr_spurious.hooks import StageTimingHooks, base_parameters, project_conf, stage_of


def _f(x):
    return x


def test_stage_of_uses_the_first_stage_tag() -> None:
    assert stage_of(Node(_f, "a", "b", name="n", tags=["figures", "training"])) == "training"
    assert stage_of(Node(_f, "a", "b", name="m")) == "other"


def test_times_are_summed_per_stage(caplog) -> None:
    hooks = StageTimingHooks()
    node = Node(_f, "a", "b", name="n", tags=["ingestion"])
    hooks.before_pipeline_run({})
    hooks.before_node_run(node)
    time.sleep(0.02)
    hooks.after_node_run(node)
    hooks.before_dataset_saved("b", node)
    time.sleep(0.03)
    hooks.after_dataset_saved("b", node)
    with caplog.at_level(logging.INFO, logger="cxr_spurious.hooks"):
        hooks.after_pipeline_run()
    assert hooks._totals["ingestion"] >= 0.05
    assert "Wall time by stage: ingestion 0 s" in caplog.text


def _project(root: Path, marker: int) -> Path:
    """A minimal Kedro project at ``root`` whose conf/base has one parameter."""
    (root / "conf" / "base").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "cxr_spurious"\n')
    (root / "conf" / "base" / "parameters.yml").write_text(f"marker: {marker}\n")
    return root


def test_base_parameters_come_from_the_project_holding_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _project(tmp_path / "study", 7)
    (project / "notebooks").mkdir()
    monkeypatch.chdir(project / "notebooks")  # a sub-folder: the project is found above it
    assert project_conf() == project / "conf"
    assert base_parameters() == {"marker": 7}


def test_base_parameters_fall_back_to_the_source_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no Kedro project here or above
    assert project_conf() == hooks.SOURCE_CONF
    assert "sweep" in base_parameters()


def test_no_conf_anywhere_names_both_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed copy of the package (no conf beside it) run outside a project."""
    monkeypatch.setattr(hooks, "SOURCE_CONF", tmp_path / "site-packages" / "conf")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no Kedro project.*site-packages/conf/base"):
        project_conf()
