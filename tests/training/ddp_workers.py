"""Process bodies for the gloo tests of ``test_distributed.py`` (importable by spawned children).

Each worker joins a 2-process gloo group over a shared file, does its part, writes what the
test compares to ``<out>/rank<k>.pt`` and leaves the group. A collective that one rank never
joins fails after ``TIMEOUT`` instead of hanging the test run.
"""

from __future__ import annotations

import datetime
import itertools
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(seconds=20)


def _join(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=TIMEOUT
    )


def group_dro_steps(
    batches: list[dict[str, torch.Tensor]], weight: torch.Tensor, world: int, rank: int, lr: float
) -> dict[str, Any]:
    """A linear model trained by SGD on Group DRO, this rank's shard of every global batch.

    With ``world > 1`` the gradients are averaged over the ranks, as DDP does.
    """
    from cxr_spurious.debiasing.objectives import GroupDROObjective

    objective = GroupDROObjective(3, step_size=0.5)
    w = weight.clone().requires_grad_(True)
    qs, losses = [], []
    for batch in batches:
        shard = {k: v[rank::world] for k, v in batch.items()}
        logits = shard["x"] @ w
        loss = objective(logits, shard["labels"], shard["valid"], shard)
        loss.backward()
        grad = w.grad.detach().clone()
        if world > 1:
            dist.all_reduce(grad)
            grad /= world
        with torch.no_grad():
            w -= lr * grad
        w.grad = None
        qs.append(objective.q.clone())
        losses.append(float(loss.detach()))
    return {"q": torch.stack(qs), "weight": w.detach().clone(), "loss": torch.tensor(losses)}


def group_dro_worker(
    rank: int, world: int, init_file: str, out: str, batches: list, weight: torch.Tensor
) -> None:
    """One rank of the Group DRO synchronisation test."""
    _join(rank, world, init_file)
    try:
        result = group_dro_steps(batches, weight, world, rank, lr=0.5)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _fast_clock() -> Any:
    """A clock that advances 1000 s at every reading."""
    ticks = itertools.count()
    return lambda: 1000.0 * next(ticks)


def time_budget_worker(
    rank: int, world: int, init_file: str, out: str, table: Any, cache: Any, cfg: dict
) -> None:
    """``fit`` under DDP twice: first rank 0's clock, then rank 1's runs 1000 s per reading.

    That rank alone is past ``time_budget_s`` after its first epoch; the other's is real.
    """
    import time

    from cxr_spurious.training.distributed import distributed_fit

    real = time.perf_counter
    _join(rank, world, init_file)
    try:
        results = []
        for fast_rank in (0, 1):
            if rank == fast_rank:
                time.perf_counter = _fast_clock()  # this process only
            try:
                fitted = distributed_fit(
                    table, cache, cfg, rank=rank, world=world, checkpoint_dir=None
                )
            finally:
                time.perf_counter = real
            results.append({"epochs": fitted.history["epoch"].tolist(), "stopped": fitted.stopped})
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def checkpointed_fit_worker(
    rank: int, world: int, init_file: str, out: str, table: Any, cache: Any, cfg: dict, ckpt: str
) -> None:
    """``fit`` under DDP with checkpoints in ``ckpt`` (written by rank 0)."""
    from cxr_spurious.training.distributed import distributed_fit

    _join(rank, world, init_file)
    try:
        fitted = distributed_fit(table, cache, cfg, rank=rank, world=world, checkpoint_dir=ckpt)
        torch.save({"fingerprint": fitted.fingerprint}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class _Batches:
    """The few things ``train_one_epoch`` reads of a loader, over fixed batches."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches
        self.sampler = self  # set_epoch: the batches are fixed

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        return iter(self.batches)


class _LinearForward(torch.nn.Module):
    """``(logits,)`` of a bias-free linear model on the flattened images (no BatchNorm)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.flatten(1) @ self.weight,)


def epoch_stats(
    batches: list[dict[str, torch.Tensor]], weight: torch.Tensor, world: int, rank: int
) -> dict[str, Any]:
    """``train_one_epoch`` (SGD, class-balanced BCE) on this rank's slice of every batch.

    With ``world > 1`` the model is inside ``DistributedDataParallel``; slices are as
    ``GlobalBatchSampler`` makes them (rank ``r`` gets the ``r``-th contiguous part).
    """
    import numpy as np

    from cxr_spurious.training.device import DeviceSetup
    from cxr_spurious.training.engine import train_one_epoch
    from cxr_spurious.training.objectives import make_objective

    per_rank = len(batches[0]["labels"]) // world
    mine = [{k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in b.items()} for b in batches]
    model = _LinearForward(weight)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    labels = torch.cat([b["labels"] for b in batches]).numpy()
    objective = make_objective("bce", labels, np.zeros(len(labels), dtype=int))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    setup = DeviceSetup(torch.device("cpu"), None, False, False)
    stats = train_one_epoch(
        net, _Batches(mine), optimizer, objective, setup, {"supervision": "erm"}, epoch=1
    )
    return {"stats": stats, "weight": model.weight.detach().clone()}


def epoch_stats_worker(
    rank: int, world: int, init_file: str, out: str, batches: list, weight: torch.Tensor
) -> None:
    """One rank of the epoch-statistics test."""
    _join(rank, world, init_file)
    try:
        torch.save(epoch_stats(batches, weight, world, rank), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
