"""What a person sees after ``kedro run`` (ingestion, debiasing and one variant's training
on the tiny phantom, output not a terminal): the console, the log file and MLflow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tests.conftest import kedro_env
from tests.conftest import kedro_project as _kedro_project

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("e2e")]

PIPELINES = ("ingestion", "debiasing", "training")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    project = _kedro_project.__wrapped__(tmp_path_factory.mktemp("run"))
    env = kedro_env()
    env.pop("COLUMNS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kedro",
            "run",
            "--pipelines",
            ",".join(PIPELINES),
            "--env",
            "test",
            "--params",
            "training.only=erm",
        ],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return project, proc.stdout, proc.stderr


def test_console_shows_one_line_per_node_and_the_log_file_the_rest(tiny_run) -> None:
    project, stdout, stderr = tiny_run
    console = stdout + stderr
    assert "Loading data from" not in console and "Saving data to" not in console
    assert "Running node:" not in console and "Completed 1 out of" not in console
    assert "Warning:" not in stdout.split("Kedro project cxr_spurious", 1)[1]  # library ones
    assert "ConvergenceWarning" not in console and "register_new_resolver" not in console
    # MLflow's own handler (its import re-configures its loggers after conf/logging.yml):
    # gone, so its INFO lines about the fresh mlflow.db do not reach the console
    assert "Creating initial MLflow database tables" not in console
    assert " INFO mlflow." not in console
    for node in ("generate_phantom", "build_manifest", "resample_train_rows", "erm.train_model"):
        lines = [ln for ln in stdout.splitlines() if f"Node {node} done in " in ln]
        assert len(lines) == 1, (node, lines)
        assert re.search(rf"Node {re.escape(node)} done in \d+\.\d s \(\w+\)$", lines[0])
    assert "Wall time by stage: ingestion" in stdout
    assert re.search(r"\d+ warning\(s\) from libraries \(.*\) are in logs/info\.log", stdout)
    assert "epoch 1" in stderr  # the progress bars
    log = (project / "logs" / "info.log").read_text(encoding="utf-8")
    assert "kedro.io.data_catalog: Loading data from params:ingestion.seed" in log
    assert "kedro.pipeline.node: Running node: generate_phantom" in log
    assert "register_new_resolver() is deprecated" in log  # library warnings: file only


def test_mlflow_runs_say_what_ran_and_what_each_variant_is(tiny_run) -> None:
    project, _, _ = tiny_run
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cxr_spurious_study")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 1
    parent, child = parents[0], children[0]
    assert re.fullmatch(
        r"ingestion\+debiasing\+training \d{4}-\d\d-\d\d \d\d:\d\d", parent.info.run_name
    ), parent.info.run_name
    assert parent.data.tags["mlflow.note.content"] == (
        "The pipeline(s) ingestion, debiasing, training (env test, training.only=erm)."
    )
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    note = child.data.tags["mlflow.note.content"]
    assert re.fullmatch(
        r"erm: trained on image labels only \(ERM\); unet_small from scratch; "
        r"\d+ training images \(resampling none\), seed 0",
        note,
    ), note
