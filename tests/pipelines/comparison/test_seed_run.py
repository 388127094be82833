"""A tiny run of one seed's JTT (and the erm it upweights) with the SequentialRunner: the
seed reaches training and the checkpoints, and a rerun with ``training.resume`` loads the
finished checkpoints instead of training again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner
from tests.training.training_tiny_data import TASK, tiny_study

from cxr_spurious.hooks import base_parameters
from cxr_spurious.pipelines.comparison import pipeline as comparison

TINY_TRAINING = {
    "tasks": [TASK], "batch_size": 8, "eval_batch_size": 16, "device": "cpu", "progress": False,
    "n_boot": 20, "base_channels": 4, "target_dilation": 0, "precision": "fp32",
}  # fmt: skip
OUTPUTS = ("cmp_jtt_s1.config", "cmp_jtt_s1.model", "cmp_jtt_s1.resampled_manifest")


class _Kept(MemoryDataset):
    """A memory dataset the runner does not release after its last use."""

    def _release(self) -> None:
        pass


def _params(tmp_path: Path, *, resume: bool) -> dict[str, Any]:
    params = base_parameters()
    params["training"] = {
        **params["training"],
        **TINY_TRAINING,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "resume": resume,
    }
    for block in (params["training"]["variants"], params["comparison"]["training_variants"]):
        for name in block:
            block[name] = {**block[name], "epochs": 1}
    params["comparison"]["debiasing"] = {**params["comparison"]["debiasing"], "tasks": [TASK]}
    return params


def _lookup(params: dict[str, Any], name: str) -> Any:
    value: Any = params
    for part in name.removeprefix("params:").split("."):
        value = value[part]
    return value


def _pipeline(monkeypatch) -> Pipeline:
    monkeypatch.setattr(
        comparison,
        "comparison_parameters",
        lambda: {"training": {"seed": 0}, "comparison": {"seeds": [0, 1]}},
    )
    return comparison.create_pipeline().to_outputs(*OUTPUTS)


def _run(pipe: Pipeline, tmp_path: Path, *, resume: bool) -> dict[str, Any]:
    manifest, cache = tiny_study()
    manifest["site"] = ["A" if int(i) % 2 else "B" for i in pd.factorize(manifest["patient_id"])[0]]
    params = _params(tmp_path, resume=resume)
    datasets: dict[str, Any] = {
        "manifest": MemoryDataset(manifest),
        "resampled_manifest": MemoryDataset(manifest),
        "image_cache": MemoryDataset(cache, copy_mode="assign"),
    }
    for name in pipe.inputs():
        if name.startswith("params:"):
            datasets[name] = MemoryDataset(_lookup(params, name))
    catalog = DataCatalog(datasets)
    for name in OUTPUTS:
        catalog[name] = _Kept(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)
    return {name: catalog.load(name) for name in OUTPUTS}


def test_seed_one_trains_with_its_seed_and_resumes_without_training(
    monkeypatch, tmp_path: Path, caplog
) -> None:
    pipe = _pipeline(monkeypatch)
    assert {n.namespace for n in pipe.nodes} == {"cmp_erm_s1", "cmp_jtt_s1"}
    with caplog.at_level(logging.INFO):
        first = _run(pipe, tmp_path, resume=False)
    config = first["cmp_jtt_s1.config"]
    assert config["seed"] == 1 and config["variant"] == "cmp_jtt_s1"
    assert config["supervision"] == "erm" and config["architecture"] == "unet_small"
    # JTT upweighted the errors of this seed's erm: more train rows than the manifest has
    resampled = first["cmp_jtt_s1.resampled_manifest"]
    assert (resampled["split"] == "train").sum() > 16
    folders = {p.parent.parent.name for p in (tmp_path / "ckpt").glob("*/*/epoch_*.pt")}
    assert folders == {"cmp_erm_s1", "cmp_jtt_s1"}
    assert caplog.text.count("selected epoch") == 2

    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = _run(pipe, tmp_path, resume=True)
    assert caplog.text.count("Resuming from") == 2
    assert "epoch 1: loss" not in caplog.text  # no epoch trained again
    weights, before = again["cmp_jtt_s1.model"]["state_dict"], first["cmp_jtt_s1.model"]
    assert all(torch.equal(weights[k], before["state_dict"][k]) for k in weights)
    assert again["cmp_jtt_s1.model"]["fingerprint"] == before["fingerprint"]
