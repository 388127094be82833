"""The comparison reuses the study's erm, box and seg on ``training.seed`` as the last
``kedro run`` left them, and trains every ``cmp_*`` variant under its own parameters: with
``--params training.epochs=8`` given to the comparison only, seed 0 compared 8-epoch
variants with the 5-epoch erm, with nothing saying so. Each model's ``test_metrics`` now
records its training configuration and ``check_study_models`` refuses a mismatch.

The record first held ``precision`` and ``device`` as written (``auto``), so a study
trained in bf16 on one CPU passed the check against ``cmp_*`` variants trained in fp32 on
another; it now holds what they resolved to where the model trained, and the check compares
that with what they resolve to here.

The study models' ``test_metrics`` here are written by the training template's own node
(``evaluate_test_metrics``) under the study's parameters, from a model artifact that records
what the model trained on (``trained_on``, computed as ``train_model`` computes it: see
``test_study_model_provenance.py`` for models the node really trains), saved and loaded
through the catalog's file format (``json.JSONDataset``), and checked under the comparison's.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from tests.pipelines.comparison.study_models import study_artifact, study_data

from cxr_spurious.errors import ContractError
from cxr_spurious.hooks import base_parameters
from cxr_spurious.pipelines.comparison import nodes
from cxr_spurious.pipelines.comparison.pipeline import VARIANTS, create_study_seed_pipeline
from cxr_spurious.pipelines.robustness.nodes import SUMMARY_MODULES
from cxr_spurious.pipelines.training.nodes import evaluate_test_metrics, resolve_config
from cxr_spurious.robustness.evaluation import SETTINGS_COLUMN, summary_settings
from cxr_spurious.training import device as device_module
from cxr_spurious.training.checkpoints import code_digests
from cxr_spurious.training.provenance import MODEL_DIGEST_COLUMN, model_digest
from cxr_spurious.variants import STUDY_MODELS

TASK = "Pneumothorax"
CHECKED = {"predictions": "checked_erm_predictions", "embeddings": "checked_erm_embeddings"}


class _Kept(MemoryDataset):
    """A memory dataset the runner does not release after its last use."""

    def _release(self) -> None:
        pass


def _training(**changes: Any) -> dict[str, Any]:
    """``conf/base``'s ``training`` (few replicates), with ``changes`` at dotted keys."""
    training = copy.deepcopy(base_parameters()["training"])
    training["n_boot"] = 20
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        block = training
        for part in path:
            block = block[part]
        block[last] = value
    return training


def _test_split(n: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = [f"img{i}" for i in range(n)]
    y = (np.arange(n) % 2).astype(float)
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i}" for i in range(n)],
            "split": "test",
            TASK: y,
            "tube": (np.arange(n) % 3 == 0).astype(float),
        }
    )
    preds = pd.DataFrame({"image_id": ids, f"p_{TASK}": 0.6 * y + 0.4 * np.linspace(0, 1, n)})
    return preds, manifest


def _study_metrics(tmp_path: Path, training: dict[str, Any]) -> dict[str, JSONDataset]:
    """Every study model's ``test_metrics`` as training writes it under ``training``."""
    preds, manifest = _test_split()
    data = study_data()
    out = {}
    for model in STUDY_MODELS:
        config = resolve_config(training, training["variants"][model])
        artifact = study_artifact(config, data)
        dataset = JSONDataset(filepath=str(tmp_path / model / "test_metrics.json"))
        dataset.save(evaluate_test_metrics(preds, manifest, config, model=artifact))
        out[f"{model}.test_metrics"] = dataset
    return out


def _summary(auroc: float) -> pd.DataFrame:
    row: dict[str, Any] = {
        "task": TASK,
        SETTINGS_COLUMN: summary_settings(
            base_parameters()["robustness"], code=code_digests(SUMMARY_MODULES)
        ),
    }
    for i, metric in enumerate(nodes.HEADLINE_METRICS):  # every column the table needs
        value = auroc - 0.1 * i
        row.update({metric: value, f"{metric}_lo": value - 0.05, f"{metric}_hi": value + 0.05})
    return pd.DataFrame([row])


def _run(metrics: dict[str, JSONDataset], training: dict[str, Any]) -> dict[str, Any]:
    """The study seed's check, gate and ``build_headline_table`` on in-memory stand-ins."""
    names = {
        "check_study_models",
        "check_study_summaries",
        "gate_study_erm",
        "build_headline_table",
    }
    pipe = Pipeline([n for n in create_study_seed_pipeline().nodes if n.name in names])
    preds, _ = _test_split()
    embeddings = pd.DataFrame(
        {"image_id": preds["image_id"], "e0": np.arange(len(preds), dtype=float)}
    )
    summaries = {f"{v}.model_summary": _summary(0.5 + 0.02 * i) for i, v in enumerate(VARIANTS)}
    for m in STUDY_MODELS:  # the study's summaries were computed on these trainings
        digest = model_digest(metrics[f"{m}.test_metrics"].load())
        summaries[f"{m}.model_summary"][MODEL_DIGEST_COLUMN] = digest
    data = study_data()
    datasets: dict[str, Any] = {
        **{name: MemoryDataset(value, copy_mode="assign") for name, value in data.items()},
        "params:training": MemoryDataset(training),
        "params:robustness": MemoryDataset(base_parameters()["robustness"]),
        "erm.predictions": MemoryDataset(preds),
        "erm.embeddings": MemoryDataset(embeddings),
        **metrics,
        **{name: MemoryDataset(summary) for name, summary in summaries.items()},
    }
    catalog = DataCatalog(datasets)
    outputs = pipe.all_outputs()
    for name in outputs:
        catalog[name] = _Kept(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)
    return {name: catalog.load(name) for name in outputs} | {
        "preds": preds,
        "embeddings": embeddings,
    }


def test_same_training_settings_pass_and_the_headline_is_built(tmp_path: Path) -> None:
    out = _run(_study_metrics(tmp_path, _training()), _training())
    table = out["headline_table"]
    assert list(table["variant"]) == list(VARIANTS)
    assert table["auroc"].to_numpy() == pytest.approx(
        [0.5 + 0.02 * i for i in range(len(VARIANTS))]
    )
    # erm's outputs pass the gate unchanged
    pd.testing.assert_frame_equal(out[CHECKED["predictions"]], out["preds"])
    pd.testing.assert_frame_equal(out[CHECKED["embeddings"]], out["embeddings"])


def test_the_record_survives_the_catalog_file_and_is_its_own_digest(tmp_path: Path) -> None:
    metrics = _study_metrics(tmp_path, _training(epochs=7))["erm.test_metrics"].load()
    config = metrics["training_config"]
    assert config["epochs"] == 7 and config["seed"] == 0 and config["supervision"] == "erm"
    assert config["architecture"] == "unet_small" and config["tasks"] == [TASK]
    # settings that do not change the model are not recorded; stopping rules are
    assert not {"progress", "checkpoint_dir", "resume", "n_boot", "ci_level", "variant"} & set(
        config
    )
    assert {"patience", "max_steps", "time_budget_s"} <= set(config)
    blob = json.dumps(config, sort_keys=True).encode()
    assert metrics["training_config_digest"] == hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize(
    ("change", "models", "expected"),
    [
        ({"epochs": 8}, STUDY_MODELS, "epochs=5 (this run: 8)"),
        ({"variants.seg.target_dilation": 0}, ("seg",), "target_dilation=2 (this run: 0)"),
        ({"patience": 2}, STUDY_MODELS, "patience=None (this run: 2)"),
        ({"seed": 3}, STUDY_MODELS, "seed=0 (this run: 3)"),
    ],
)
def test_other_training_settings_are_refused_naming_the_key(
    tmp_path: Path, change: dict[str, Any], models: tuple[str, ...], expected: str
) -> None:
    # the study ran with conf/base; the comparison with --params <change>
    metrics = _study_metrics(tmp_path, _training())
    with pytest.raises(ContractError) as err:
        _run(metrics, _training(**change))
    message = str(err.value)
    for model in STUDY_MODELS:
        assert (f"{model}.test_metrics records {expected}" in message) == (model in models), message
    assert "run `kedro run` with the same --params first" in message


def test_settings_that_do_not_change_the_model_pass(tmp_path: Path) -> None:
    metrics = _study_metrics(tmp_path, _training())
    changes = {
        "n_boot": 50, "ci_level": 0.9, "progress": False, "num_workers": 2, "resume": True,
        "checkpoint_dir": "elsewhere", "eval_batch_size": 128, "only": "erm",
    }  # fmt: skip
    assert list(_run(metrics, _training(**changes))["headline_table"]["variant"]) == list(VARIANTS)


def test_test_metrics_without_the_record_are_refused(tmp_path: Path) -> None:
    metrics = _study_metrics(tmp_path, _training())
    old = metrics["box.test_metrics"].load()
    for key in ("training_config", "training_config_digest", "ci_level", "n_boot"):
        del old[key]  # as written before the record
    metrics["box.test_metrics"].save(old)
    with pytest.raises(ContractError, match=r"box.test_metrics: no record .*predate") as err:
        _run(metrics, _training())
    assert "erm.test_metrics" not in str(err.value)
    assert "run `kedro run` with the same --params first" in str(err.value)


def test_a_missing_variant_block_names_the_key() -> None:
    from cxr_spurious.errors import ParameterError

    training = _training()
    del training["variants"]["box"]
    with pytest.raises(ParameterError, match="training.variants.box"):
        nodes.check_study_models(training, **study_data(), box={})


# --- the precision and device training resolved ----------------------------------------------


def _machine(monkeypatch: pytest.MonkeyPatch, *, cuda: bool, native_bf16: bool) -> None:
    """What ``device: auto`` / ``precision: auto`` find on this (pretend) machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native_bf16)


@pytest.mark.parametrize(
    ("study", "here", "expected"),
    [
        # an AMX CPU (auto -> bf16) then an AVX2 CPU (auto -> fp32)
        ({"cuda": False, "native_bf16": True}, {"cuda": False, "native_bf16": False},
         "precision='bf16' (this run: 'fp32')"),
        ({"cuda": False, "native_bf16": False}, {"cuda": False, "native_bf16": True},
         "precision='fp32' (this run: 'bf16')"),
        # a GPU (bf16) then an AMX CPU (bf16): only the device differs
        ({"cuda": True, "native_bf16": True}, {"cuda": False, "native_bf16": True},
         "device='cuda' (this run: 'cpu')"),
    ],
)  # fmt: skip
def test_a_study_trained_at_another_precision_or_device_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    study: dict[str, bool],
    here: dict[str, bool],
    expected: str,
) -> None:
    training = _training()
    assert (training["precision"], training["device"]) == ("auto", "auto")
    _machine(monkeypatch, **study)
    metrics = _study_metrics(tmp_path, training)
    _machine(monkeypatch, **here)  # the comparison, same parameters, another machine
    with pytest.raises(ContractError) as err:
        _run(metrics, training)
    message = str(err.value)
    for model in STUDY_MODELS:
        assert f"{model}.test_metrics records {expected}" in message, message
    assert "precision 'auto': bf16 on CUDA and on CPUs with native bf16" in message
    assert "run `kedro run` with the same --params first" in message


def test_the_same_resolved_precision_passes_however_it_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an AMX CPU: the study's auto and the comparison's explicit bf16 train alike
    _machine(monkeypatch, cuda=False, native_bf16=True)
    metrics = _study_metrics(tmp_path, _training())
    assert metrics["erm.test_metrics"].load()["training_config"]["precision"] == "bf16"
    out = _run(metrics, _training(precision="bf16", device="cpu"))
    assert list(out["headline_table"]["variant"]) == list(VARIANTS)
    # and explicit fp32 here does not
    with pytest.raises(ContractError, match=r"precision='bf16' \(this run: 'fp32'\)"):
        _run(metrics, _training(precision="fp32"))


def test_a_record_of_precision_auto_as_written_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _machine(monkeypatch, cuda=False, native_bf16=False)
    metrics = _study_metrics(tmp_path, _training())
    for model in STUDY_MODELS:  # as written before the record held the resolved values
        old = metrics[f"{model}.test_metrics"].load()
        old["training_config"].update(precision="auto", device="auto")
        blob = json.dumps(old["training_config"], sort_keys=True).encode()
        old["training_config_digest"] = hashlib.sha256(blob).hexdigest()
        metrics[f"{model}.test_metrics"].save(old)
    with pytest.raises(ContractError) as err:
        _run(metrics, _training())
    message = str(err.value)
    assert "erm.test_metrics records device='auto' (this run: 'cpu'); precision='auto' " in message
    assert "(this run: 'fp32')" in message
    assert "'auto' in a record: written before test_metrics recorded the resolved" in message
