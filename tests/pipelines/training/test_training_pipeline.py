"""The training pipeline: namespaced wiring, a SequentialRunner run, and the training.only gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from tests.training.training_tiny_data import TASK, tiny_study

from cxr_spurious.datasets.skippable import SkippableDataset
from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.training import create_pipeline, create_training_template
from cxr_spurious.training.device import cpu_has_native_bf16
from cxr_spurious.variants import STUDY_MODELS


def _params(only: object = None) -> dict[str, Any]:
    return {
        "only": only, "tasks": [TASK], "batch_size": 8, "eval_batch_size": 16, "epochs": 1,
        "device": "cpu",
        "progress": False, "n_boot": 20, "base_channels": 4, "target_dilation": 0,
        "variants": {
            "erm": {"name": "erm", "supervision": "erm", "architecture": "unet_small"},
            "box": {"name": "box", "supervision": "box", "architecture": "unet_small"},
            "seg": {"name": "seg", "supervision": "seg", "architecture": "unet_small"},
        },
    }  # fmt: skip


def _catalog(tmp_path: Path, only: object) -> DataCatalog:
    manifest, cache = tiny_study()
    params = _params(only)
    params["checkpoint_dir"] = str(tmp_path / "ckpt")
    datasets: dict[str, Any] = {
        "manifest": MemoryDataset(manifest),
        "resampled_manifest": MemoryDataset(manifest),
        "image_cache": MemoryDataset(cache, copy_mode="assign"),
        "params:training": MemoryDataset(params),
    }
    for name in STUDY_MODELS:
        datasets[f"params:training.variants.{name}"] = MemoryDataset(params["variants"][name])
        datasets[f"{name}.model"] = SkippableDataset(
            {
                "type": "cxr_spurious.datasets.torch_model.TorchModelDataset",
                "filepath": str(tmp_path / name / "model.pt"),
                "variant": name,
            }
        )
        datasets[f"{name}.training_history"] = SkippableDataset(
            {"type": "pandas.CSVDataset", "filepath": str(tmp_path / name / "history.csv")}
        )
        datasets[f"{name}.predictions"] = SkippableDataset(
            {
                "type": "pandas.ParquetDataset",
                "filepath": str(tmp_path / name / "predictions.parquet"),
            }
        )
        datasets[f"{name}.embeddings"] = SkippableDataset(
            {
                "type": "pandas.ParquetDataset",
                "filepath": str(tmp_path / name / "embeddings.parquet"),
            }
        )
        datasets[f"{name}.counterfactual_predictions"] = SkippableDataset(
            {"type": "pandas.ParquetDataset", "filepath": str(tmp_path / name / "cf.parquet")}
        )
        datasets[f"{name}.test_metrics"] = SkippableDataset(
            {"type": "json.JSONDataset", "filepath": str(tmp_path / name / "metrics.json")}
        )
        datasets[f"{name}.training_table"] = MemoryDataset(copy_mode="assign")
        datasets[f"{name}.mlflow_run"] = MemoryDataset(copy_mode="assign")
    return DataCatalog(datasets)


def test_template_and_namespaces() -> None:
    template = create_training_template()
    assert template.inputs() == {
        "manifest",
        "resampled_manifest",
        "image_cache",
        "params:training",
        "params:variant",
    }
    assert all(n.name.count("_") >= 1 for n in template.nodes)
    pipe = create_pipeline()
    assert pipe.inputs() == {
        "manifest",
        "resampled_manifest",
        "image_cache",
        "params:training",
        *(f"params:training.variants.{v}" for v in STUDY_MODELS),
    }
    assert {f"{v}.model" for v in STUDY_MODELS} <= pipe.all_outputs()
    assert {n.namespace for n in pipe.nodes} == set(STUDY_MODELS)


def test_gate_trains_only_the_selected_variant_and_keeps_others(tmp_path: Path) -> None:
    runner = SequentialRunner()
    catalog = _catalog(tmp_path, None)
    runner.run(create_pipeline(), catalog)
    for name in STUDY_MODELS:
        assert all(
            (tmp_path / name / f).exists()
            for f in (
                "model.pt",
                "history.csv",
                "predictions.parquet",
                "embeddings.parquet",
                "cf.parquet",
                "metrics.json",
            )
        )
    record = catalog.load("seg.mlflow_run")
    assert record["run_name"] == "seg-seg-unet_small-none-seed0"
    assert set(record["metric_history"]) >= {"train_loss", "val_auroc", "val_robust_auroc"}
    assert f"test_{TASK}_robust_auroc_lo" in record["metrics"]
    preds = pd.read_parquet(tmp_path / "seg" / "predictions.parquet")
    assert (
        len(preds) == 32
        and set(preds["split"]) == {"train", "val", "test"}
        and (preds["model"] == "seg").all()
    )
    model = torch.load(tmp_path / "seg" / "model.pt", weights_only=True)
    assert model["variant"] == "seg" and len(model["fingerprint"]) == 64  # what it was trained as
    # how it trained (this test trains on the CPU, one process): what test_metrics records
    here = "bf16" if cpu_has_native_bf16() else "fp32"
    assert model["trained_as"] == {"precision": here, "device": "cpu"}
    metrics = json.loads((tmp_path / "seg" / "metrics.json").read_text())
    recorded = metrics["training_config"]
    assert (recorded["precision"], recorded["device"]) == (here, "cpu")
    assert (metrics["supervision"], metrics["architecture"]) == (
        "seg",
        "unet_small",
    )  # what was trained
    cf = pd.read_parquet(tmp_path / "seg" / "cf.parquet")
    assert sorted(cf["render"].unique()) == ["no_lesion", "no_tube", "original"] and len(cf) == 24

    stamps = {n: (tmp_path / n / "model.pt").stat().st_mtime_ns for n in STUDY_MODELS}
    catalog = _catalog(tmp_path, "seg")
    runner.run(create_pipeline(), catalog)
    assert (tmp_path / "seg" / "model.pt").stat().st_mtime_ns != stamps["seg"]
    for name in ("erm", "box"):
        assert (tmp_path / name / "model.pt").stat().st_mtime_ns == stamps[name]  # kept


def test_gate_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(
        ParameterError, match="training.only.*unknown supervision or variant 'pixel'"
    ):
        SequentialRunner().run(create_pipeline(), _catalog(tmp_path, "pixel"))
