"""MlflowChildRunDataset against a temporary SQLite tracking store."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io.core import DatasetError
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from cxr_spurious.datasets.mlflow_run import (
    MODEL_ARTIFACT,
    MlflowChildRunDataset,
    MlflowRunArtifactDataset,
    load_model_artifact,
    load_model_from_run,
)
from cxr_spurious.errors import DataFormatError
from cxr_spurious.models import build_model

CONFIG = {"architecture": "unet_small", "tasks": ["Pneumothorax"], "base_channels": 4}


def _artifact() -> dict:
    """What the catalog's ``TorchModelDataset`` saves for a trained model."""
    torch.manual_seed(0)
    return {"state_dict": build_model(CONFIG).state_dict(), "config": dict(CONFIG)}


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
        "model": _artifact() if with_model else None,
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


def _all_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(_all_artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return out


def test_top_level_run_in_the_study_experiment_with_model(tracking: str, tmp_path: Path) -> None:
    ds = MlflowChildRunDataset(experiment="study_x", tracking_uri=tracking)
    ds.save(_record(with_model=True))
    run_id = ds.load()["run_id"]
    client = MlflowClient(tracking)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "study_x"
    assert "mlflow.parentRunId" not in run.data.tags
    # the model is the catalog's artifact, readable without unpickling code
    files = _all_artifacts(client, run_id)
    assert sorted(f for f in files if f.startswith("model/")) == [
        "model/config.json",
        MODEL_ARTIFACT,
    ]
    local = client.download_artifacts(run_id, MODEL_ARTIFACT, str(tmp_path))
    raw = torch.load(io.BytesIO(Path(local).read_bytes()), weights_only=True)
    expected = _artifact()
    assert raw["config"] == expected["config"]
    assert raw["state_dict"].keys() == expected["state_dict"].keys()
    assert all(torch.equal(raw["state_dict"][k], v) for k, v in expected["state_dict"].items())
    assert load_model_artifact(run_id, tracking)["config"] == CONFIG
    model = load_model_from_run(run_id, tracking)
    assert model.tasks == ["Pneumothorax"] and model.is_dense and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected["state_dict"].items())


def test_no_artifact_is_a_pickled_mlflow_model(tracking: str, tmp_path: Path) -> None:
    ds = MlflowChildRunDataset(experiment="study_x", tracking_uri=tracking)
    ds.save(_record(with_model=True))
    run_id = ds.load()["run_id"]
    client = MlflowClient(tracking)
    files = _all_artifacts(client, run_id)
    assert not [f for f in files if Path(f).name == "MLmodel" or f.endswith((".pkl", ".pth"))]
    for name in files:
        local = Path(client.download_artifacts(run_id, name, str(tmp_path)))
        if local.suffix == ".pt":  # a torch zip: weights_only=True refuses any pickled object
            torch.load(io.BytesIO(local.read_bytes()), weights_only=True)


def test_a_module_instead_of_the_artifact_is_refused(tracking: str) -> None:
    ds = MlflowChildRunDataset(experiment="study_x", tracking_uri=tracking)
    record = {**_record(), "model": build_model(CONFIG)}
    with pytest.raises(DatasetError, match=r"record\['model'\] must be the model artifact"):
        ds.save(record)
    bad = {**_record(), "model": {"state_dict": {"x": torch.zeros(1)}, "config": dict(CONFIG)}}
    with pytest.raises(
        DatasetError, match=r"record\['model'\]: weights do not fit architecture 'unet_small'"
    ):
        ds.save(bad)


def test_loading_a_run_without_a_model_names_the_run(tracking: str) -> None:
    ds = MlflowChildRunDataset(experiment="study_x", tracking_uri=tracking)
    ds.save(_record())
    run_id = ds.load()["run_id"]
    with pytest.raises(
        DataFormatError, match=f"runs:/{run_id}/model/model.pt: the run has no model"
    ):
        load_model_from_run(run_id, tracking)


def test_a_tracking_uri_of_another_store_leaves_the_session_store_alone(
    tracking: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run cannot have its parent in another store: the run is top-level there, and
    MLflow's process-wide URI (the session run's store) is not changed."""
    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_experiment("session_exp_other_store")
    with mlflow.start_run(run_name="kedro-session") as parent:
        ds = MlflowChildRunDataset(experiment="study_other", tracking_uri=other)
        ds.save(_record())
        assert mlflow.get_tracking_uri() == tracking
        mlflow.log_metric("after_the_save", 1.0)  # the session run is still reachable
    run = MlflowClient(other).get_run(ds.load()["run_id"])
    assert "mlflow.parentRunId" not in run.data.tags
    assert MlflowClient(other).get_experiment(run.info.experiment_id).name == "study_other"
    session = MlflowClient(tracking).get_run(parent.info.run_id)
    assert session.info.status == "FINISHED" and session.data.metrics["after_the_save"] == 1.0
    assert "is not the store of the session's run" in caplog.text


def test_an_untracked_pipeline_logs_no_run_here_or_in_a_worker(tracking: str) -> None:
    """mlflow.yml's disable_tracking: the hook records it (remember_session_run with
    untracked=True), and the datasets log nothing, also after pickling for a worker."""
    import pickle

    from cxr_spurious.datasets import mlflow_run

    client = MlflowClient(tracking)
    before = {e.experiment_id: len(client.search_runs([e.experiment_id])) for e in
              client.search_experiments()}  # fmt: skip
    ds = MlflowChildRunDataset(experiment="study_untracked")
    mlflow_run.remember_session_run(None, untracked=True)
    try:
        ds.save(_record())
        shipped = pickle.dumps(ds)
    finally:
        mlflow_run.remember_session_run(None)
    assert not ds.exists()
    pickle.loads(shipped).save(_record())  # in a worker process, no session state there
    after = {e.experiment_id: len(client.search_runs([e.experiment_id])) for e in
             client.search_experiments()}  # fmt: skip
    assert after == before and client.get_experiment_by_name("study_untracked") is None
    # a tracked session afterwards logs again
    ds.save(_record())
    assert ds.exists()


def test_a_model_config_torch_cannot_read_back_is_not_logged(tracking: str) -> None:
    """The run's model file goes through the same check as ``TorchModelDataset.save``."""
    ds = MlflowChildRunDataset(experiment="study_x", tracking_uri=tracking)
    record = _record(with_model=True)
    record["model"]["config"]["lr"] = np.float64(0.1)
    with pytest.raises(
        DatasetError, match=r"runs:/\w+/model/model\.pt: config\['lr'\] holds a numpy\.float64"
    ):
        ds.save(record)
    client = MlflowClient(tracking)
    run = client.search_runs(
        [client.get_experiment_by_name("study_x").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert run.info.status == "FAILED" and "model" not in {
        a.path for a in client.list_artifacts(run.info.run_id)
    }


@pytest.mark.parametrize("filepath", ["s3://bucket/t.csv", "memory://bucket/t.csv"])
def test_a_wrapped_file_that_is_not_local_is_refused(filepath: str) -> None:
    """Its ``_filepath`` is the path without the protocol (``bucket/t.csv``): save logged
    whatever local file had that relative path, or failed with a bare FileNotFoundError."""
    with pytest.raises(
        DatasetError,
        match=rf"CSVDataset's filepath '{filepath}' is not a local file .*must be a local file",
    ):
        MlflowRunArtifactDataset({"type": "pandas.CSVDataset", "filepath": filepath})


def test_a_local_wrapped_file_is_logged(tracking: str, tmp_path: Path) -> None:
    for filepath in (str(tmp_path / "a.csv"), f"file://{tmp_path / 'b.csv'}"):
        ds = MlflowRunArtifactDataset({"type": "pandas.CSVDataset", "filepath": filepath})
        with mlflow.start_run() as run:
            ds.save(pd.DataFrame({"a": [1]}))
        logged = [a.path for a in MlflowClient(tracking).list_artifacts(run.info.run_id)]
        assert logged == [Path(filepath).name]
