"""Ctrl-C during ``kedro run``: the MLflow runs still open are closed as KILLED."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest


def test_an_interrupted_run_closes_its_mlflow_runs_as_killed(
    tracking: str, clean_root: logging.Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from cxr_spurious import cli

    started: list[str] = []

    def interrupted_run(**_: object) -> None:
        # what kedro-mlflow leaves open when Ctrl-C lands mid-pipeline: the session's run
        # and, inside it, a nested one
        started.append(mlflow.start_run(run_name="study").info.run_id)
        started.append(mlflow.start_run(run_name="inner", nested=True).info.run_id)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.kedro_run, "callback", interrupted_run)
    result = CliRunner().invoke(cli.cli, ["run"], obj=SimpleNamespace(project_path=tmp_path))
    assert result.exit_code != 0  # the interrupt still stops the command
    assert mlflow.active_run() is None
    client = MlflowClient(tracking)
    assert [client.get_run(run_id).info.status for run_id in started] == ["KILLED", "KILLED"]
    assert "is closed as KILLED" in (tmp_path / "logs" / "info.log").read_text()
