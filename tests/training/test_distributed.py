"""DDP on CPU (gloo, 2 processes) matches a single-process run with the same global batch.

What differs: BatchNorm batch statistics are per process (4 images instead of 8), so the
weights agree to a tolerance, not bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from tests.training.training_tiny_data import TASK, tiny_config, tiny_study

from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.models import build_model
from cxr_spurious.pipelines.training import create_pipeline, create_training_template
from cxr_spurious.training.config import model_config
from cxr_spurious.training.data import build_training_table
from cxr_spurious.training.device import resolve_device
from cxr_spurious.training.distributed import (
    parse_params,
    run_variant,
    spawn_fit,
    split_for_ranks,
    variant_pipeline,
)
from cxr_spurious.training.engine import fit, init_model
from cxr_spurious.training.outputs import predict_images
from cxr_spurious.variants import STUDY_MODELS


def test_parse_params_like_kedro() -> None:
    assert parse_params("training.epochs=3,training.only=seg,training.resume=true") == {
        "training": {"epochs": 3, "only": "seg", "resume": True}
    }
    # a list value keeps its commas, as under kedro run (it used to split them: a YAML error)
    assert parse_params("sweep.grid.seeds=[0,1,2],training.lr=0.001") == {
        "sweep": {"grid": {"seeds": [0, 1, 2]}},
        "training": {"lr": 0.001},
    }
    assert parse_params(None) == {} and parse_params("") == {}
    with pytest.raises(SystemExit, match="--params: item `training.only` must be a key and"):
        parse_params("training.only")


@pytest.mark.integration
def test_ddp_two_cpu_processes_match_one_process(tiny) -> None:
    manifest, cache = tiny
    cfg = tiny_config(supervision="seg", epochs=2, batch_size=8, lr=0.001)
    table = build_training_table(manifest, cache, cfg)
    single = fit(
        table[table["split"] == "train"].reset_index(drop=True),
        table[table["split"] == "val"].reset_index(drop=True),
        cache,
        cfg,
        resolve_device("cpu"),
    )
    ddp = spawn_fit(table, cache, cfg, world=2)
    assert ddp.history["steps"].tolist() == single.history["steps"].tolist() == [2, 2]
    np.testing.assert_allclose(ddp.history["train_loss"], single.history["train_loss"], rtol=0.05)
    probs = []
    for result in (single, ddp):
        model = build_model(model_config(cfg))
        model.load_state_dict(result.state_dict)
        probs.append(predict_images(model.eval(), manifest, cache, cfg, resolve_device("cpu"))[0])
    assert np.abs(probs[0] - probs[1]).max() < 0.05
    conv = "enc.0.0.weight"
    rel = (ddp.state_dict[conv] - single.state_dict[conv]).norm() / single.state_dict[conv].norm()
    assert float(rel) < 0.05
    assert not torch.equal(ddp.state_dict[conv], init_model(cfg).state_dict()[conv])  # it trained


def _spawn(worker: object, out: Path, *args: object) -> list[dict]:
    """Run ``worker`` in 2 gloo CPU processes; return what each rank saved."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(2, str(out / "init"), str(out), *args), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _group_dro_batches(n_batches: int = 3, size: int = 12) -> list[dict[str, torch.Tensor]]:
    """Batches whose groups are unevenly split between the two ranks' shards (r::2)."""
    gen = torch.Generator().manual_seed(0)
    groups = torch.tensor([0, 0, 1, 0, 2, 0, 1, 0, 0, 0, 2, 1])  # rank 1 has no group 2
    batches = []
    for _ in range(n_batches):
        labels = (torch.rand(size, 1, generator=gen) > 0.5).float()
        batches.append(
            {
                "x": torch.randn(size, 5, generator=gen) + labels,
                "labels": labels,
                "valid": torch.ones(size, 1, dtype=torch.bool),
                "group": groups,
                "weight": torch.ones(size),
                "index": torch.arange(size),
            }
        )
    return batches


def test_group_dro_weights_are_synchronised_across_ranks(tmp_path: Path) -> None:
    """Two ranks, each on half of every batch, keep the single-process ``q`` and weights."""
    from tests.training.ddp_workers import group_dro_steps, group_dro_worker

    batches = _group_dro_batches()
    weight = torch.randn(5, 1, generator=torch.Generator().manual_seed(1))
    single = group_dro_steps(batches, weight, world=1, rank=0, lr=0.5)
    ranks = _spawn(group_dro_worker, tmp_path, batches, weight)
    assert not torch.allclose(single["q"][-1], torch.full((3,), 1 / 3), atol=1e-3)  # q moved
    for result in ranks:
        torch.testing.assert_close(result["q"], single["q"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result["weight"], single["weight"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result["loss"], single["loss"], rtol=1e-5, atol=1e-6)


def _balanced_batches(n_batches: int = 3, size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Batches of 2x2 images, half of each batch positive (class-balanced BCE weighs 1)."""
    gen = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(n_batches):
        labels = torch.tensor([[1.0], [0.0]] * (size // 2))[torch.randperm(size, generator=gen)]
        batches.append(
            {
                "image": torch.randn(size, 1, 2, 2, generator=gen) + labels[:, :, None, None],
                "labels": labels,
                "valid": torch.ones(size, 1, dtype=torch.bool),
                "weight": torch.ones(size),
                "group": torch.zeros(size, dtype=torch.long),
                "index": torch.arange(size),
            }
        )
    return batches


def _sgd_by_hand(
    batches: list[dict[str, torch.Tensor]], weight: torch.Tensor, part: slice = slice(None)
) -> tuple[list[float], torch.Tensor]:
    """Per-step mean BCE on ``part`` of each batch and the final weights of SGD (lr 0.5) on
    whole batches."""
    w = weight.clone().requires_grad_(True)
    losses = []
    for batch in batches:
        logits = batch["image"].flatten(1) @ w
        loss = F.binary_cross_entropy_with_logits(logits, batch["labels"])
        part_loss = F.binary_cross_entropy_with_logits(logits[part], batch["labels"][part])
        losses.append(float(part_loss.detach()))
        loss.backward()
        with torch.no_grad():
            w -= 0.5 * w.grad
        w.grad = None
    return losses, w.detach()


def test_ddp_epoch_stats_cover_the_global_batch(tmp_path: Path) -> None:
    """Under DDP ``train_loss`` is the global batches' mean loss and ``images_per_s`` counts
    both processes' images, as in one process; the weights are those of one process.

    Before, both were rank 0's: its half-batch loss, and half the images (4.0 images per
    step instead of 8).
    """
    from tests.training.ddp_workers import epoch_stats, epoch_stats_worker

    batches = _balanced_batches()
    weight = torch.randn(4, 1, generator=torch.Generator().manual_seed(3))
    losses, weights = _sgd_by_hand(batches, weight)
    expected = float(np.mean(losses))
    rank0_half, _ = _sgd_by_hand(batches, weight, slice(0, 4))
    assert abs(float(np.mean(rank0_half)) - expected) > 0.01  # the halves' losses differ
    single = epoch_stats(batches, weight, world=1, rank=0)
    ranks = _spawn(epoch_stats_worker, tmp_path, batches, weight)
    for result in (single, *ranks):
        stats = result["stats"]
        assert stats["steps"] == 3
        assert stats["train_loss"] == pytest.approx(expected, rel=1e-5)
        assert stats["image_loss"] == pytest.approx(expected, rel=1e-5)
        assert stats["dense_loss"] == 0.0
        assert stats["images_per_s"] * stats["seconds"] == pytest.approx(3 * 8, rel=1e-9)
        assert 0.0 <= stats["data_wait_fraction"] <= 1.0
        torch.testing.assert_close(result["weight"], weights, rtol=1e-5, atol=1e-6)
    assert ranks[0]["stats"] == ranks[1]["stats"]  # the group's numbers, on every rank


def test_time_budget_stop_is_rank_0_decision(tiny, tmp_path: Path) -> None:
    """One rank's clock passes ``time_budget_s`` after epoch 1: both ranks follow rank 0.

    Rank 0 fast: both stop after epoch 1 (``time_budget``); rank 1 fast: both train the 2
    epochs. Before, the rank past its budget stopped alone and the other one's next
    all-reduce failed (or hung).
    """
    from tests.training.ddp_workers import time_budget_worker

    manifest, cache = tiny
    cfg = tiny_config(epochs=2, batch_size=8, time_budget_s=100)
    table = build_training_table(manifest, cache, cfg)
    ranks = _spawn(time_budget_worker, tmp_path, table, cache, cfg)
    expected = [{"epochs": [1], "stopped": "time_budget"}, {"epochs": [1, 2], "stopped": "epochs"}]
    assert ranks == [expected, expected]


def test_checkpoint_of_two_processes_is_refused_by_one(tiny, tmp_path: Path) -> None:
    """1- and 2-process runs give different weights: the world size is in the fingerprint."""
    from tests.training.ddp_workers import checkpointed_fit_worker

    manifest, cache = tiny
    cfg = tiny_config(epochs=1, batch_size=8)
    table = build_training_table(manifest, cache, cfg)
    ckpt = tmp_path / "ckpt"
    ranks = _spawn(checkpointed_fit_worker, tmp_path, table, cache, cfg, str(ckpt))
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"]
    (items,) = ckpt.glob("*/fingerprint.json")
    assert json.loads(items.read_text())["_world"] == 2
    with pytest.raises(
        DataFormatError, match=r"number of processes \(world size\): checkpoint 2, this run 1"
    ):
        fit(
            table[table["split"] == "train"].reset_index(drop=True),
            table[table["split"] == "val"].reset_index(drop=True),
            cache,
            {**cfg, "epochs": 2, "resume": True},
            resolve_device("cpu"),
            checkpoint_dir=ckpt,
        )


def _variant_catalog(checkpoints: Path) -> DataCatalog:
    manifest, cache = tiny_study(n_test=48)  # enough test images for defined bootstrap CIs
    training = {
        "only": "erm", "tasks": [TASK], "batch_size": 8, "eval_batch_size": 16, "epochs": 1,
        "device": "cpu", "progress": False, "n_boot": 20, "base_channels": 4, "target_dilation": 0,
        "checkpoint_dir": str(checkpoints),
        "variants": {v: {"name": v, "supervision": v, "architecture": "unet_small"}
                     for v in STUDY_MODELS},
    }  # fmt: skip
    datasets = {
        "manifest": MemoryDataset(manifest),
        "resampled_manifest": MemoryDataset(manifest),
        "image_cache": MemoryDataset(cache, copy_mode="assign"),
        "params:training": MemoryDataset(training),
        "params:training.variants.erm": MemoryDataset(training["variants"]["erm"]),
    }
    return DataCatalog(datasets)


def _with_extra_node() -> Pipeline:
    """The study's training pipeline plus a node added to the ``erm`` variant after fit."""
    extra = Pipeline(
        [
            Node(
                lambda h: len(h), inputs="training_history", outputs="n_epochs", name="count_epochs"
            )
        ],
        namespace="erm",
    )
    return create_pipeline() + extra


def test_ddp_plan_runs_every_template_node_on_rank_0() -> None:
    """A node added to the template is part of rank 0's run; other ranks only fit."""
    pipeline = variant_pipeline(_with_extra_node(), "erm")
    rank0, others = split_for_ranks(pipeline)
    template = {f"erm.{n.name}" for n in create_training_template().nodes}
    assert {n.name for n in rank0.nodes} == template | {"erm.count_epochs"}
    assert {n.name for n in others.nodes} == {
        "erm.resolve_config",
        "erm.prepare_training_table",
        "erm.train_model",
    }
    assert rank0.all_outputs() >= {f"erm.{o}" for o in create_training_template().all_outputs()}
    with pytest.raises(SystemExit, match="--variant 'pixel'.*valid: \\['box', 'erm', 'seg'\\]"):
        variant_pipeline(create_pipeline(), "pixel")
    with pytest.raises(ParameterError, match="exactly one node tagged 'fit'"):
        split_for_ranks(pipeline.only_nodes_with_tags("predict"))


def test_run_variant_rank_0_saves_every_output_and_other_ranks_none(tmp_path: Path) -> None:
    """``run_variant`` (no process group: one process) writes through the catalog on rank 0 only."""
    pipeline = variant_pipeline(_with_extra_node(), "erm")
    catalog = _variant_catalog(tmp_path)
    run_variant(pipeline, catalog, rank=1)
    assert not any(name in catalog for name in pipeline.outputs())  # rank != 0 saves nothing
    run_variant(pipeline, catalog, rank=0)
    assert catalog.load("erm.n_epochs") == 1  # the added node ran
    for name in pipeline.outputs():
        assert catalog.load(name) is not None, name
    assert catalog.load("erm.mlflow_run")["run_name"].startswith("erm-erm-unet_small")
