"""The README's sequence, on the tiny study with a temporary MLflow store: train every
model; resample (``group_balance``) and retrain only ``seg``; then ``--only-missing-outputs``
with every output present.

It logged three new child runs (box, erm, seg), the box and erm ones with the resampled
table's strategy and counts, though those models were trained on the unresampled one. Now
the last run logs nothing (each model's run is found by its fingerprint), and every run
describes the table its model was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from mlflow.tracking import MlflowClient
from tests.training.training_tiny_data import TASK, tiny_study

from cxr_spurious.datasets.skippable import SkippableDataset
from cxr_spurious.pipelines.training import create_pipeline
from cxr_spurious.variants import STUDY_MODELS

EXPERIMENT = "only_missing_outputs"
FILES = {
    "model": "cxr_spurious.datasets.torch_model.TorchModelDataset",
    "training_history": "pandas.CSVDataset",
    "predictions": "pandas.ParquetDataset",
    "embeddings": "pandas.ParquetDataset",
    "counterfactual_predictions": "pandas.ParquetDataset",
    "test_metrics": "json.JSONDataset",
}
EXT = {"pandas.CSVDataset": "csv", "pandas.ParquetDataset": "parquet", "json.JSONDataset": "json"}


def _params(only: object) -> dict[str, Any]:
    return {
        "only": only, "tasks": [TASK], "batch_size": 8, "eval_batch_size": 16, "epochs": 1,
        "device": "cpu", "progress": False, "n_boot": 20, "base_channels": 4,
        "target_dilation": 0,
        "variants": {v: {"name": v, "supervision": v, "architecture": "unet_small"}
                     for v in STUDY_MODELS},
    }  # fmt: skip


def _group_balanced(manifest: pd.DataFrame) -> pd.DataFrame:
    """What ``debiasing.strategy=group_balance`` hands training: other train rows (12 of the
    16 images, 8 of them twice) and the strategy's label."""
    train = manifest[manifest["split"] == "train"]
    out = pd.concat(
        [train.iloc[:12], train.iloc[:8], manifest[manifest["split"] != "train"]],
        ignore_index=True,
    )
    out.attrs = {**manifest.attrs, "strategy": "group_balance"}
    return out


def _catalog(tmp_path: Path, resampled: pd.DataFrame, only: object) -> DataCatalog:
    """A fresh catalog as ``kedro run`` builds it: file outputs and the MLflow record, all
    wrapped in ``SkippableDataset`` as conf/base wraps them."""
    manifest, cache = tiny_study()
    params = _params(only)
    params["checkpoint_dir"] = str(tmp_path / "ckpt")
    datasets: dict[str, Any] = {
        "manifest": MemoryDataset(manifest),
        "resampled_manifest": MemoryDataset(resampled),
        "image_cache": MemoryDataset(cache, copy_mode="assign"),
        "params:training": MemoryDataset(params),
    }
    for name in STUDY_MODELS:
        datasets[f"params:training.variants.{name}"] = MemoryDataset(params["variants"][name])
        for output, kind in FILES.items():
            path = tmp_path / name / (f"{output}.{EXT[kind]}" if kind in EXT else "model.pt")
            datasets[f"{name}.{output}"] = SkippableDataset({"type": kind, "filepath": str(path)})
        datasets[f"{name}.mlflow_run"] = SkippableDataset(
            {
                "type": "cxr_spurious.datasets.mlflow_run.MlflowChildRunDataset",
                "experiment": EXPERIMENT,
                "model_filepath": str(tmp_path / name / "model.pt"),
            }
        )
    return DataCatalog(datasets)


def _run(catalog: DataCatalog, *, only_missing_outputs: bool = False) -> None:
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="kedro session"):  # kedro-mlflow's session run
        SequentialRunner().run(
            create_pipeline(), catalog, only_missing_outputs=only_missing_outputs
        )


def _child_runs() -> list[tuple[str, str, str, str]]:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], "tags.pipeline = 'training'")
    return sorted(
        (
            r.data.tags["variant"],
            r.data.params.get("resampling", "-"),
            r.data.params.get("n_train_rows", "-"),
            r.data.params.get("n_train_images", "-"),
        )
        for r in runs
    )


def test_only_missing_outputs_logs_no_second_run_nor_another_tables_counts(
    tracking: str, tmp_path: Path
) -> None:
    manifest, _ = tiny_study()
    _run(_catalog(tmp_path, manifest, None))  # kedro run
    balanced = _group_balanced(manifest)
    _run(_catalog(tmp_path, balanced, "seg"))  # debiasing group_balance; training.only=seg
    stamps = {n: (tmp_path / n / "model.pt").stat().st_mtime_ns for n in STUDY_MODELS}
    before = _child_runs()
    assert before == [
        ("box", "none", "16", "16"),
        ("erm", "none", "16", "16"),
        ("seg", "group_balance", "20", "12"),
        ("seg", "none", "16", "16"),
    ]

    _run(_catalog(tmp_path, balanced, None), only_missing_outputs=True)
    assert _child_runs() == before  # no new run, in particular none saying group_balance
    assert {n: (tmp_path / n / "model.pt").stat().st_mtime_ns for n in STUDY_MODELS} == stamps
