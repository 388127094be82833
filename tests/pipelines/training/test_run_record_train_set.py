"""The MLflow record of a model describes the data that model was trained on.

``kedro run --only-missing-outputs`` on a project where every output existed logged a run
for each model again, and ``assemble_run_record`` read the resampling and the train counts
from the training table of that day: after ``debiasing.strategy=group_balance`` and
``training.only=seg``, the ``box`` and ``erm`` runs said "resampling group_balance, 716
training images" of models trained on the unresampled table. The model artifact now records
its train split (``train_set``); an older artifact gets the table's values only when the
table is the data it trained on (its ``trained_on`` data digest), else none, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from tests.training.training_tiny_data import TASK, tiny_study

from cxr_spurious.datasets.mlflow_run import describe_variant
from cxr_spurious.datasets.torch_model import TorchModelDataset
from cxr_spurious.errors import ContractError
from cxr_spurious.pipelines.training.nodes import (
    UNKNOWN_RESAMPLING,
    assemble_run_record,
    prepare_training_table,
    resolve_config,
    train_model,
)
from cxr_spurious.training.checkpoints import training_data_digest
from cxr_spurious.training.data import split_training_table
from cxr_spurious.training.outputs import TRAIN_SET_KEY, recorded_train_set, train_set

VARIANT = {"name": "box", "supervision": "box", "architecture": "unet_small"}
METRICS = {"n_test": 8, "subgroup": "tube", "mean_auroc": 0.5, "mean_robust_auroc": 0.5}


def _config(tmp_path: Path) -> dict[str, Any]:
    training = {
        "tasks": [TASK], "batch_size": 8, "eval_batch_size": 16, "epochs": 1, "device": "cpu",
        "progress": False, "n_boot": 20, "base_channels": 4, "target_dilation": 0,
        "checkpoint_dir": str(tmp_path / "ckpt"), "variants": {"box": VARIANT},
    }  # fmt: skip
    return resolve_config(training, VARIANT)


def _resampled(manifest: pd.DataFrame) -> pd.DataFrame:
    """Table B's manifest: 12 of the 16 train images, 8 of them twice (20 train rows),
    labelled as the debiasing pipeline labels a resampled manifest."""
    train = manifest[manifest["split"] == "train"]
    rest = manifest[manifest["split"] != "train"]
    out = pd.concat([train.iloc[:12], train.iloc[:8], rest], ignore_index=True)
    out.attrs = {**manifest.attrs, "strategy": "group_balance"}
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``box`` trained on table A (the unresampled manifest), read back from its model file;
    table B (resampled) made from the same manifest and cache."""
    tmp_path = tmp_path_factory.mktemp("train_set")
    manifest, cache = tiny_study()
    config = _config(tmp_path)
    table_a = prepare_training_table(manifest, cache, config)
    table_b = prepare_training_table(_resampled(manifest), cache, config)
    artifact, history = train_model(table_a, cache, config)
    dataset = TorchModelDataset(filepath=str(tmp_path / "model.pt"), variant="box")
    dataset.save(artifact)
    return {
        "config": config,
        "cache": cache,
        "a": table_a,
        "b": table_b,
        "model": dataset.load(),  # through the file: the restricted loader keeps the record
        "history": history,
    }


def _record(trained: dict[str, Any], table: str, model: dict[str, Any]) -> dict[str, Any]:
    return assemble_run_record(
        trained["config"], trained[table], trained["history"], METRICS, model, trained["cache"]
    )


def test_the_model_file_records_the_train_split_it_was_fitted_on(trained) -> None:
    assert trained["model"][TRAIN_SET_KEY] == {
        "resampling": "none",
        "n_train_rows": 16,
        "n_train_images": 16,
    }
    # table B differs in every reported value
    assert train_set(trained["config"], trained["b"]) == {
        "resampling": "group_balance",
        "n_train_rows": 20,
        "n_train_images": 12,
    }


def test_a_model_trained_on_a_assembled_against_b_reports_a(trained) -> None:
    record = _record(trained, "b", trained["model"])
    assert record["run_name"] == "box-box-unet_small-none-seed0"
    params = record["params"]
    assert (params["resampling"], params["n_train_rows"], params["n_train_images"]) == (
        "none",
        16,
        16,
    )
    text = describe_variant(record["tags"], params)
    assert "group_balance" not in text and "16 training images (resampling none)" in text
    # the run names the trained model it logs
    assert record["tags"]["model_fingerprint"] == trained["model"]["fingerprint"]


def test_an_older_model_file_gets_the_tables_values_only_if_it_trained_on_it(
    trained, caplog: pytest.LogCaptureFixture
) -> None:
    older = {k: v for k, v in trained["model"].items() if k != TRAIN_SET_KEY}
    digest_a = training_data_digest(*split_training_table(trained["a"]), trained["cache"])
    assert older["trained_on"]["data"] == digest_a
    with caplog.at_level(logging.WARNING):
        same = _record(trained, "a", older)
    assert not caplog.records
    assert (same["params"]["resampling"], same["params"]["n_train_rows"]) == ("none", 16)

    with caplog.at_level(logging.WARNING):
        other = _record(trained, "b", older)
    assert other["run_name"] == f"box-box-unet_small-{UNKNOWN_RESAMPLING}-seed0"
    assert not {"resampling", "n_train_rows", "n_train_images"} & set(other["params"])
    assert "group_balance" not in describe_variant(other["tags"], other["params"])
    (warning,) = caplog.records
    assert "[box]" in warning.getMessage() and "other data" in warning.getMessage()


def test_an_older_model_file_without_a_data_digest_is_logged_without_counts(
    trained, caplog: pytest.LogCaptureFixture
) -> None:
    oldest = {k: v for k, v in trained["model"].items() if k not in (TRAIN_SET_KEY, "trained_on")}
    with caplog.at_level(logging.WARNING):
        record = _record(trained, "a", oldest)  # even the table it did train on: unprovable
    assert not {"resampling", "n_train_rows", "n_train_images"} & set(record["params"])
    (warning,) = caplog.records
    assert "[box]" in warning.getMessage() and "trained_on" in warning.getMessage()


@pytest.mark.parametrize(
    "value",
    [
        "none",
        {"resampling": "none", "n_train_rows": "16", "n_train_images": 16},
        {"resampling": None, "n_train_rows": 16, "n_train_images": 16},
        {"resampling": "none", "n_train_rows": True, "n_train_images": 16},
    ],
)
def test_a_malformed_record_is_refused(value: object) -> None:
    with pytest.raises(ContractError, match="box.model: 'train_set'"):
        recorded_train_set({TRAIN_SET_KEY: value}, "box.model")
