"""MlflowChildRunDataset against a temporary SQLite tracking store."""

from __future__ import annotations

import mlflow
import pytest
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from cxr_spurious.datasets.mlflow_run import MlflowChildRunDataset
from cxr_spurious.models import build_model


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store per module (creating its tables takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # artifacts under root/mlruns
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        yield uri
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


def _record(with_model: bool = False) -> dict:
    fig = Figure()
    fig.subplots().plot([1, 2], [0.6, 0.8])
    return {
        "run_name": "seg-seg-unet_small-none-seed0",
        "tags": {"variant": "seg"},
        "params": {"method": "seg", "architecture": "unet_small", "seed": 0},
        "metric_history": {"train_loss": [0.9, 0.5, 0.4], "val_auroc": [0.6, 0.7, 0.8]},
        "metrics": {"test_Pneumothorax_auroc": 0.91, "test_Pneumothorax_robust_auroc": 0.7},
        "figures": {"training_curves.png": fig},
        "model": build_model(
            {"architecture": "unet_small", "tasks": ["Pneumothorax"], "base_channels": 4}
        )
        if with_model
        else None,
    }


def test_child_run_nested_under_the_active_run(tracking: str) -> None:
    mlflow.set_experiment("session_exp")
    with mlflow.start_run(run_name="kedro-session") as parent:
        ds = MlflowChildRunDataset(experiment="ignored_when_nested")
        ds.save(_record())
        child_id = ds.load()["run_id"]
        assert mlflow.active_run().info.run_id == parent.info.run_id  # parent untouched
    client = MlflowClient(tracking)
    run = client.get_run(child_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.info.experiment_id == parent.info.experiment_id and run.info.status == "FINISHED"
    assert (
        run.info.run_name == "seg-seg-unet_small-none-seed0" and run.data.tags["variant"] == "seg"
    )
    assert (
        run.data.params["method"] == "seg"
        and run.data.params["seed"] == "0"
        and "git_commit" in run.data.params
    )
    history = client.get_metric_history(child_id, "val_auroc")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (1, 0.6),
        (2, 0.7),
        (3, 0.8),
    ]
    assert run.data.metrics["test_Pneumothorax_robust_auroc"] == 0.7
    assert "training_curves.png" in [a.path for a in client.list_artifacts(child_id)]


def test_top_level_run_in_the_study_experiment_with_model(tracking: str) -> None:
    ds = MlflowChildRunDataset(experiment="study_x", tracking_uri=tracking)
    ds.save(_record(with_model=True))
    run_id = ds.load()["run_id"]
    client = MlflowClient(tracking)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "study_x"
    assert "mlflow.parentRunId" not in run.data.tags
    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert loaded.tasks == ["Pneumothorax"] and loaded.is_dense
