"""``MlflowChildRunDataset.exists()`` finds the run an earlier process logged for the same
trained model (``model_filepath``: its ``variant`` and ``model_fingerprint`` tags), so
``kedro run --only-missing-outputs`` logs no second run of a model that already has one.
Before, it existed only after a save in the same process."""

from __future__ import annotations

import pickle
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from cxr_spurious.datasets.mlflow_run import MlflowChildRunDataset
from cxr_spurious.datasets.torch_model import TorchModelDataset
from cxr_spurious.models import build_model

CONFIG = {"architecture": "unet_small", "tasks": ["Pneumothorax"], "base_channels": 4}
FINGERPRINT = "ab" * 32


def _model_file(path: Path, fingerprint: str | None = FINGERPRINT, variant: str = "seg") -> str:
    artifact = {"state_dict": build_model(CONFIG).state_dict(), "config": dict(CONFIG)}
    artifact["variant"] = variant
    if fingerprint:
        artifact["fingerprint"] = fingerprint
    TorchModelDataset(filepath=str(path)).save(artifact)
    return str(path)


def _record(fingerprint: str = FINGERPRINT, variant: str = "seg") -> dict:
    return {
        "run_name": f"{variant}-{variant}-unet_small-none-seed0",
        "tags": {"variant": variant, "model_fingerprint": fingerprint},
        "params": {"seed": 0},
        "metrics": {"test_Pneumothorax_auroc": 0.9},
    }


def _runs(experiment: str, variant: str) -> list:
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], f"tags.variant = '{variant}'")


def test_a_second_session_finds_the_run_of_the_same_model(tracking: str, tmp_path: Path) -> None:
    model = _model_file(tmp_path / "seg" / "model.pt")
    mlflow.set_experiment("exists_nested")
    with mlflow.start_run(run_name="session 1"):
        first = MlflowChildRunDataset(model_filepath=model)
        assert not first.exists()  # no run of this model yet
        first.save(_record())
        logged = first.load()["run_id"]
    with mlflow.start_run(run_name="session 2"):  # a later `kedro run`: a fresh catalog
        second = MlflowChildRunDataset(model_filepath=model)
        assert second.exists()
        assert second.load()["run_id"] == logged
        # and so in a worker process that the dataset was pickled to
        assert pickle.loads(pickle.dumps(second)).exists()
    assert len(_runs("exists_nested", "seg")) == 1


def test_another_model_or_no_model_identity_has_no_run(tracking: str, tmp_path: Path) -> None:
    mlflow.set_experiment("exists_other")
    with mlflow.start_run(run_name="session 1"):
        MlflowChildRunDataset(model_filepath=_model_file(tmp_path / "a.pt")).save(_record())
    retrained = _model_file(tmp_path / "b.pt", fingerprint="cd" * 32)
    box = _model_file(tmp_path / "c.pt", variant="box")  # same fingerprint, other variant
    older = _model_file(tmp_path / "d.pt", fingerprint=None)
    with mlflow.start_run(run_name="session 2"):
        assert not MlflowChildRunDataset(model_filepath=retrained).exists()
        assert not MlflowChildRunDataset(model_filepath=box).exists()
        assert not MlflowChildRunDataset(model_filepath=older).exists()
        assert not MlflowChildRunDataset(model_filepath=str(tmp_path / "none.pt")).exists()
        assert not MlflowChildRunDataset().exists()  # no model_filepath: as before


def test_a_failed_run_of_the_model_does_not_count(tracking: str, tmp_path: Path) -> None:
    model = _model_file(tmp_path / "model.pt", fingerprint="ef" * 32)
    client = MlflowClient()
    experiment = client.create_experiment("exists_failed")
    run = client.create_run(experiment, tags=_record("ef" * 32)["tags"])
    client.set_terminated(run.info.run_id, "FAILED")
    mlflow.set_experiment("exists_failed")
    with mlflow.start_run(run_name="session"):
        assert not MlflowChildRunDataset(model_filepath=model).exists()


def test_top_level_runs_are_found_in_their_experiment(tracking: str, tmp_path: Path) -> None:
    model = _model_file(tmp_path / "model.pt", fingerprint="12" * 32)
    MlflowChildRunDataset(experiment="exists_top", model_filepath=model).save(_record("12" * 32))
    again = MlflowChildRunDataset(experiment="exists_top", model_filepath=model)
    assert again.exists()
    assert not MlflowChildRunDataset(experiment="exists_elsewhere", model_filepath=model).exists()
    # looking did not create the experiment it looked in
    assert MlflowClient().get_experiment_by_name("exists_elsewhere") is None


def test_the_catalog_entry_names_the_models_file() -> None:
    """conf/base declares the dataset with the model's path, so the check runs in a project."""
    repo = Path(__file__).resolve().parents[2]
    catalog = yaml.safe_load((repo / "conf" / "base" / "catalog_training.yml").read_text())
    assert (
        catalog["{variant}.mlflow_run"]["dataset"]["model_filepath"]
        == catalog["{variant}.model"]["dataset"]["filepath"]
    )
