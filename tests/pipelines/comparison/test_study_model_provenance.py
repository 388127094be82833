"""The comparison checks what the study's models were trained on, not only how.

``check_study_models`` compared each study model's recorded training configuration with
this run's parameters, but not its data or code: after ``kedro run`` then
``kedro run --pipeline ingestion --params phantom.n_images=...`` (or a ``git pull`` that
changed the loss), ``kedro run --pipeline comparison`` put the old ``erm``, ``box`` and
``seg`` beside ``cmp_*`` variants trained on the new data with the new code, in one table.
A study run with ``debiasing.strategy=upsample`` also passed, and its upsampled ``erm``
became the table's "ERM without resampling".

Here the study's models are trained by the training template's own nodes
(``prepare_training_table``, ``train_model``), written and read through the catalog's file
formats, evaluated by ``evaluate_test_metrics``, then checked under changed data, image
cache, resampling and code.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from kedro_datasets.json import JSONDataset
from tests.pipelines.comparison.study_models import changed, study_data
from tests.training.training_tiny_data import TASK

from cxr_spurious.datasets.torch_model import TorchModelDataset
from cxr_spurious.errors import ContractError
from cxr_spurious.hooks import base_parameters
from cxr_spurious.pipelines.comparison import nodes
from cxr_spurious.pipelines.training.nodes import (
    evaluate_test_metrics,
    predict_manifest,
    prepare_training_table,
    resolve_config,
    train_model,
)
from cxr_spurious.training.checkpoints import RESULT_MODULES, code_digests
from cxr_spurious.training.provenance import model_digest
from cxr_spurious.variants import STUDY_MODELS

RERUN = "run `kedro run` with the same --params first"


def _training(tmp: Path) -> dict[str, Any]:
    """``conf/base``'s ``training``, shortened for a tiny CPU run."""
    training = copy.deepcopy(base_parameters()["training"])
    training.update(
        epochs=1, n_boot=20, progress=False, base_channels=4, target_dilation=0,
        checkpoint_dir=str(tmp / "checkpoints"), device="cpu", precision="fp32",
    )  # fmt: skip
    assert training["tasks"] == [TASK]
    return training


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The study's models trained on ``study_data()``; their ``test_metrics`` files."""
    tmp = tmp_path_factory.mktemp("study")
    training = _training(tmp)
    data = study_data()
    metrics = {}
    for model in STUDY_MODELS:
        config = resolve_config(training, training["variants"][model])
        table = prepare_training_table(data["resampled_manifest"], data["image_cache"], config)
        artifact, _ = train_model(table, data["image_cache"], config)
        model_file = TorchModelDataset(filepath=str(tmp / model / "model.pt"), variant=model)
        model_file.save(artifact)
        artifact = model_file.load()
        preds, _ = predict_manifest(artifact, data["manifest"], data["image_cache"], config)
        metrics_file = JSONDataset(filepath=str(tmp / model / "test_metrics.json"))
        metrics_file.save(evaluate_test_metrics(preds, data["manifest"], config, model=artifact))
        metrics[model] = metrics_file.load()
    return {"training": training, "data": data, "metrics": metrics}


def _check(study: dict[str, Any], **data: Any) -> dict[str, str]:
    inputs = {**study["data"], **data}
    return nodes.check_study_models(study["training"], **inputs, **copy.deepcopy(study["metrics"]))


def test_the_record_holds_the_training_data_and_code(study: dict[str, Any]) -> None:
    records = [study["metrics"][m]["trained_on"] for m in STUDY_MODELS]
    for record in records:
        assert set(record) == {"data", "code"} and len(record["data"]) == 64
        assert record["code"] == code_digests() and set(record["code"]) == set(RESULT_MODULES)
    # box and seg use the location labels of the same rows (their supervision, a training
    # setting, tells boxes from masks); erm uses none: other data
    by_model = dict(zip(STUDY_MODELS, (r["data"] for r in records), strict=True))
    assert by_model["box"] == by_model["seg"] != by_model["erm"]


def test_the_same_data_and_code_pass(study: dict[str, Any]) -> None:
    checked = _check(study)
    assert set(checked) == set(STUDY_MODELS)
    # what was checked, as the digest check_study_summaries compares the summaries with
    assert checked == {m: model_digest(study["metrics"][m]) for m in STUDY_MODELS}


def test_a_changed_label_is_refused_for_every_model(study: dict[str, Any]) -> None:
    # ingestion re-ran: one train label differs in the manifest and the study's resampled one
    data = study["data"]
    row = int(data["manifest"].index[data["manifest"]["split"] == "train"][0])
    value = 1.0 - float(data["manifest"].loc[row, TASK])
    with pytest.raises(ContractError) as err:
        _check(
            study,
            manifest=changed(data["manifest"], TASK, row, value),
            resampled_manifest=changed(data["resampled_manifest"], TASK, row, value),
        )
    message = str(err.value)
    for model in STUDY_MODELS:
        assert f"{model} was trained on other data than resampled_manifest and image_cache" in (
            message
        )
    assert RERUN in message and "by other code" not in message


def test_a_changed_validation_row_is_refused(study: dict[str, Any]) -> None:
    # the validation rows select the epoch: they are training data too
    data = study["data"]
    row = int(data["manifest"].index[data["manifest"]["split"] == "val"][0])
    with pytest.raises(ContractError, match="erm was trained on other data"):
        _check(
            study,
            manifest=changed(data["manifest"], "tube", row, 1.0 - data["manifest"]["tube"][row]),
            resampled_manifest=changed(
                data["resampled_manifest"], "tube", row, 1.0 - data["manifest"]["tube"][row]
            ),
        )


def test_another_image_cache_is_refused(study: dict[str, Any]) -> None:
    cache = dataclasses.replace(study["data"]["image_cache"], fingerprint="rebuilt")
    with pytest.raises(ContractError, match="seg was trained on other data"):
        _check(study, image_cache=cache)


def test_a_manifest_the_study_did_not_train_from_is_refused(study: dict[str, Any]) -> None:
    # ingestion re-ran after the study, debiasing did not: the study's rows are stale
    data = study["data"]
    row = int(data["manifest"].index[data["manifest"]["split"] == "train"][0])
    manifest = changed(data["manifest"], TASK, row, 1.0 - data["manifest"][TASK][row])
    with pytest.raises(ContractError) as err:
        _check(study, manifest=manifest)
    assert f"column '{TASK}' differs from the manifest's on 1 row(s)" in str(err.value)


def test_a_resampled_study_is_refused_saying_how(study: dict[str, Any]) -> None:
    # the study ran with debiasing.strategy=upsample: its models saw upsampled rows
    upsampled = study_data(strategy="upsample", target="max")["resampled_manifest"]
    with pytest.raises(ContractError) as err:
        _check(study, resampled_manifest=upsampled)
    message = str(err.value)
    n_train = int((study["data"]["manifest"]["split"] == "train").sum())
    n_up = int((upsampled["split"] == "train").sum())
    assert n_up > n_train
    assert f"({n_train} train rows in the manifest, {n_up} here)" in message
    assert "debiasing.strategy=none" in message and "'erm' row is ERM without resampling" in (
        message
    )


def test_reweighted_rows_are_refused(study: dict[str, Any]) -> None:
    reweighted = study_data(strategy="reweight", target="median")["resampled_manifest"]
    assert len(reweighted) == len(study["data"]["manifest"])
    with pytest.raises(ContractError, match=r"\d+ row\(s\) weighted other than 1"):
        _check(study, resampled_manifest=reweighted)


def test_changed_training_code_is_refused_naming_the_module(
    study: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = code_digests()
    now["cxr_spurious.training.objectives"] = "0" * 16  # the loss changed since the study
    monkeypatch.setattr(nodes, "code_digests", lambda: now)
    with pytest.raises(ContractError) as err:
        _check(study)
    message = str(err.value)
    for model in STUDY_MODELS:
        assert (
            f"{model} was trained by other code (the source of "
            "cxr_spurious.training.objectives changed since)"
        ) in message
    assert "other data" not in message and RERUN in message


def test_metrics_without_the_record_are_refused(study: dict[str, Any]) -> None:
    metrics = copy.deepcopy(study["metrics"])
    del metrics["box"]["trained_on"]  # written before the record
    with pytest.raises(ContractError, match=r"box.test_metrics: no record of the training data"):
        nodes.check_study_models(study["training"], **study["data"], **metrics)


def test_a_malformed_record_names_the_file(study: dict[str, Any]) -> None:
    metrics = copy.deepcopy(study["metrics"])
    metrics["seg"]["trained_on"] = {"data": 3}
    with pytest.raises(ContractError, match=r"seg.test_metrics: 'trained_on' should map"):
        nodes.check_study_models(study["training"], **study["data"], **metrics)


def test_the_record_is_not_logged_as_metrics(study: dict[str, Any]) -> None:
    from cxr_spurious.training.outputs import flat_metrics

    flat = flat_metrics(study["metrics"]["erm"])
    assert not any("trained_on" in key or "code" in key for key in flat)
    assert json.dumps(flat)  # numbers only


def test_replaced_pretrained_weights_are_refused(study: dict[str, Any], tmp_path: Path) -> None:
    # training.pretrained is a path: weights replaced at that path left the same settings,
    # data and code, so the old study models passed beside variants started from new weights
    from cxr_spurious.training.checkpoints import weights_digest

    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"the weights the study started from")
    training = {**study["training"], "pretrained": str(weights)}
    configs = {m: resolve_config(training, training["variants"][m]) for m in STUDY_MODELS}
    metrics = copy.deepcopy(study["metrics"])
    for model in STUDY_MODELS:
        metrics[model]["trained_on"]["weights"] = weights_digest(str(weights))
    data = study["data"]
    args = (data["manifest"], data["resampled_manifest"], data["image_cache"])
    nodes._check_trained_on(configs, *args, metrics)  # the same file: passes
    weights.write_bytes(b"other weights put at the same path")
    with pytest.raises(ContractError) as err:
        nodes._check_trained_on(configs, *args, metrics)
    message = str(err.value)
    for model in STUDY_MODELS:
        assert f"{model} may have started from other weights than the file" in message
    assert "its recorded SHA-256 differs" in message and RERUN in message
    del metrics["erm"]["trained_on"]["weights"]  # a record without the digest
    with pytest.raises(ContractError, match=r"erm may have started .*\(none recorded\)"):
        nodes._check_trained_on(configs, *args, metrics)
