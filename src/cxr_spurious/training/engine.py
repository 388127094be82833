"""The training loop: ``train_one_epoch``, ``evaluate``, ``predict`` and ``fit``.

``fit`` runs epochs of ``train_one_epoch`` + ``evaluate`` with AdamW (or SGD), a cosine / step
schedule, model selection and early stopping on a validation metric, and a checkpoint
per epoch (``training.checkpoints``). The same code runs in one process or under
DistributedDataParallel (``rank``/``world`` > 1, see ``training.distributed``).

``fit`` is ``build_parts`` (model, optimiser, schedule, objective, loaders: a ``TrainParts``),
an optional ``restore`` from the newest checkpoint, and ``run_epochs``, which per epoch calls
``train_and_validate``, ``record_epoch`` (model selection, early-stopping counter),
``stop_reason`` and ``save_epoch_checkpoint``; a ``TrainState`` carries the progress.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxr_spurious.errors import ParameterError
from cxr_spurious.models import CXRModel, build_model
from cxr_spurious.progress import progress_bar
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.stats.metrics import auroc, robust_auroc
from cxr_spurious.training.checkpoints import (
    load_latest_checkpoint,
    prepare_run_folder,
    result_fingerprint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_data_digest,
)
from cxr_spurious.training.config import DENSE_SUPERVISIONS, model_config
from cxr_spurious.training.data import LABEL_PREFIX, CacheBatches, make_loader
from cxr_spurious.training.device import DeviceSetup, configure_determinism
from cxr_spurious.training.objectives import Objective, dense_loss, make_objective

logger = logging.getLogger(__name__)

HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch", "train_loss", "image_loss", "dense_loss", "val_auroc", "val_robust_auroc",
    "lr", "steps", "seconds", "images_per_s", "data_wait_fraction", "selected",
)  # fmt: skip


class NonFiniteLossError(ParameterError):
    """A training step's loss is NaN or infinite (a diverging run, or NaN/inf inputs):
    raised before that step updates the weights, naming ``training.lr``."""


def check_finite_loss(
    cfg: Mapping[str, Any], loss: float, image: float, dense: float, *, epoch: int, step: int
) -> None:
    """Raise ``NonFiniteLossError`` naming the variant, epoch and step when ``loss`` is not
    finite (its image / dense parts tell which part went wrong)."""
    if math.isfinite(loss):
        return
    raise NonFiniteLossError(
        "training.lr",
        f"[{cfg.get('variant', '?')}, {cfg.get('architecture', '?')}] the training loss is "
        f"{loss} at epoch {epoch}, step {step} (image loss {image}, dense loss {dense}); "
        "training stopped there, before that step's update: lower training.lr (or try "
        "training.precision: fp32), or check the inputs (images, labels, sample weights) "
        "for NaN / inf values",
    )


class TrainingForward(nn.Module):
    """What DDP wraps: one forward giving image logits and, for dense models, dense logits."""

    def __init__(self, model: CXRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(logits,)`` or ``(logits, dense_logits)``."""
        if self.model.is_dense:
            logits, _, dense = self.model.all_outputs(x)
            return logits, dense
        return (self.model(x),)


def init_model(cfg: Mapping[str, Any]) -> CXRModel:
    """Build the model with weights initialised from ``seed`` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg["seed"]))
        return build_model(model_config(cfg))


def make_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``optimizer``: AdamW (default) or SGD (``momentum``), with ``lr`` and ``weight_decay``."""
    if cfg.get("optimizer", "adamw") == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=float(cfg["lr"]),
            momentum=float(cfg.get("momentum", 0.0)),
            weight_decay=float(cfg["weight_decay"]),
        )
    return torch.optim.AdamW(
        model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"])
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: cosine over ``epochs``, step (``step_size``, ``gamma``) or constant."""
    if cfg["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(cfg["epochs"]))
    if cfg["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=int(cfg["step_size"]), gamma=float(cfg["gamma"])
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def batch_loss(
    outputs: tuple[torch.Tensor, ...],
    batch: Mapping[str, torch.Tensor],
    cfg: Mapping[str, Any],
    objective: Objective,
) -> tuple[torch.Tensor, float, float]:
    """Total loss and its image / dense parts for one batch.

    ``erm``: the objective on every known label. Dense supervisions: the Dice + BCE loss on the
    maps whose location label is used, and the objective on the other known labels
    (images without location labels); ``multitask``: the objective on every known label
    plus ``multitask_weight`` x the dense loss.
    """
    logits = outputs[0]
    labels, valid = batch["labels"], batch["valid"]
    if cfg["supervision"] not in DENSE_SUPERVISIONS:
        image = objective(logits, labels, valid, batch)
        return image, float(image.detach()), 0.0
    dense_valid = batch["dense_valid"]
    dense = dense_loss(outputs[1], batch["target"], dense_valid)
    if cfg["supervision"] == "multitask":
        image = objective(logits, labels, valid, batch)
        total = image + float(cfg["multitask_weight"]) * dense
    else:
        image = objective(logits, labels, valid & ~dense_valid, batch)
        total = image + dense
    return total, float(image.detach()), float(dense.detach())


def _to_device(batch: Mapping[str, torch.Tensor], setup: DeviceSetup) -> dict[str, torch.Tensor]:
    out = {k: v.to(setup.device, non_blocking=setup.pin_memory) for k, v in batch.items()}
    out["image"] = setup.to_input(batch["image"])
    return out


def train_one_epoch(
    net: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    setup: DeviceSetup,
    cfg: Mapping[str, Any],
    *,
    epoch: int,
    max_steps: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """One pass over the training loader.

    Args:
        net: The model wrapped in ``TrainingForward`` (possibly inside DDP).
        loader: Training loader from ``make_loader``.
        optimizer: The optimiser.
        objective: Image-level objective.
        setup: Device settings.
        cfg: Training config (``supervision``, ``multitask_weight``).
        epoch: Epoch number (selects the shuffle and augmentation draws).
        max_steps: Stop after this many steps (None: whole epoch).
        progress: Show a progress bar.

    Raises:
        NonFiniteLossError: a step's loss is NaN or infinite (before that step's update;
            under DDP the process that saw it raises, and the launcher ends the others).

    Returns:
        Mean ``train_loss``, ``image_loss``, ``dense_loss``, ``steps``, ``seconds``,
        ``images_per_s`` and ``data_wait_fraction`` (share of step time spent waiting for
        the loader). Under DDP (``net`` a ``DistributedDataParallel``) these are the whole
        group's (``group_epoch_stats``): the losses are means over the global batches, as
        in one process, and ``images_per_s`` counts every process's images.
    """
    net.train()
    loader.sampler.set_epoch(epoch)
    totals = np.zeros(3)
    steps = images = 0
    wait = 0.0
    start = time.perf_counter()
    iterator = iter(loader)
    bar = progress_bar(total=len(loader), desc=f"epoch {epoch}", disable=not progress)
    while max_steps is None or steps < max_steps:
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        batch = _to_device(batch, setup)
        optimizer.zero_grad(set_to_none=True)
        with setup.autocast():
            outputs = net(batch["image"])
        loss, image, dense = batch_loss(outputs, batch, cfg, objective)
        # batch_loss already waited for the device (its parts are Python floats): reading
        # the total costs no further synchronisation
        value = float(loss.detach())
        check_finite_loss(cfg, value, image, dense, epoch=epoch, step=steps + 1)
        loss.backward()
        optimizer.step()
        totals += (value, image, dense)
        steps += 1
        images += int(batch["image"].shape[0])
        bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    if isinstance(net, nn.parallel.DistributedDataParallel):
        totals, images, wait, seconds = group_epoch_stats(
            totals, images, wait, seconds, net.process_group, setup.device
        )
    means = totals / max(steps, 1)
    return {
        "train_loss": float(means[0]),
        "image_loss": float(means[1]),
        "dense_loss": float(means[2]),
        "steps": steps,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
        "data_wait_fraction": wait / seconds if seconds > 0 else float("nan"),
    }


def group_epoch_stats(
    totals: np.ndarray,
    images: int,
    wait: float,
    seconds: float,
    group: Any,
    device: torch.device,
) -> tuple[np.ndarray, int, float, float]:
    """One epoch's training statistics of this process, made the whole DDP group's.

    Every process runs the same steps, each on its equal slice of the global batch, and DDP
    averages their gradients, so the loss of a global batch is the mean of the processes'
    losses (the single-process loss when it is a mean over images): the loss sums are
    averaged over the processes. Images and data-wait time add up; the epoch lasts as long
    as its slowest process.

    Args:
        totals: This process's sums over steps of the total, image and dense losses.
        images: Images this process trained on.
        wait: Seconds this process waited for its loader.
        seconds: This process's epoch duration.
        group: The DDP process group (``DistributedDataParallel.process_group``).
        device: Where the collective's tensors live (CUDA for NCCL).

    Returns:
        ``(totals, images, wait, seconds)`` of the group: loss sums averaged over the
        processes, images summed, wait averaged, seconds the maximum.
    """
    world = torch.distributed.get_world_size(group)
    summed = torch.tensor([*totals, images, wait], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(summed, op=torch.distributed.ReduceOp.SUM, group=group)
    longest = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(longest, op=torch.distributed.ReduceOp.MAX, group=group)
    values = summed.cpu().numpy()
    return values[:3] / world, int(round(values[3])), float(values[4]) / world, float(longest)


@torch.inference_mode()
def predict(
    model: CXRModel,
    loader: torch.utils.data.DataLoader,
    setup: DeviceSetup,
    *,
    progress: bool = False,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(n, T)`` and embeddings ``(n, D)`` (float32) in loader order.

    Always computed in fp32 (``setup.inference``), also when training ran under bf16
    autocast: bf16 scores keep 8 bits of mantissa and would tie in AUROCs. No images give
    ``(0, T)`` and ``(0, D)`` arrays, ``T`` the model's tasks and ``D`` its ``embed_dim``
    (no forward pass; ``(0, 0)`` embeddings for a model without ``embed_dim``).
    """
    model.eval()
    probs, embs = [], []
    for batch in progress_bar(loader, desc=desc, disable=not progress):
        with setup.inference():
            logits, emb = model.logits_and_embedding(setup.to_input(batch["image"]))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        embs.append(emb.float().cpu().numpy())
    if not probs:
        empty = (0, len(model.tasks)), (0, int(getattr(model, "embed_dim", 0)))
        return np.zeros(empty[0], dtype=np.float32), np.zeros(empty[1], dtype=np.float32)
    return np.concatenate(probs).astype(np.float32), np.concatenate(embs).astype(np.float32)


def validation_metrics(
    labels: np.ndarray, probs: np.ndarray, subgroup: np.ndarray
) -> dict[str, float]:
    """Mean over tasks of AUROC and of robust AUROC on ``subgroup`` (NaN-aware)."""
    aurocs = [auroc(labels[:, t], probs[:, t]) for t in range(labels.shape[1])]
    robust = [robust_auroc(labels[:, t], probs[:, t], subgroup) for t in range(labels.shape[1])]
    mean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
    return {"auroc": mean(np.asarray(aurocs)), "robust_auroc": mean(np.asarray(robust))}


def evaluate(
    model: CXRModel,
    loader: torch.utils.data.DataLoader,
    table: pd.DataFrame,
    cfg: Mapping[str, Any],
    setup: DeviceSetup,
) -> dict[str, float]:
    """Validation AUROC and robust AUROC of ``model`` on the rows of ``table`` (loader order).

    Returns:
        ``{"auroc": ..., "robust_auroc": ...}`` (means over tasks).
    """
    probs, _ = predict(model, loader, setup, desc="evaluate")
    labels = table[[LABEL_PREFIX + t for t in cfg["tasks"]]].to_numpy(dtype=float)
    return validation_metrics(labels, probs, table["subgroup"].to_numpy(dtype=float))


@dataclass
class FitResult:
    """What ``fit`` hands back: the selected weights and the per-epoch history."""

    state_dict: dict[str, torch.Tensor]
    history: pd.DataFrame
    best_epoch: int
    stopped: str
    fingerprint: str = ""  #: ``checkpoints.result_fingerprint`` of the run (settings + data)
    #: What ``fingerprint`` was computed from (``_data``: the training data's digest,
    #: ``_code``: the training code's); None for a result read back without it.
    fingerprint_items: dict[str, Any] | None = None


STOP_REASONS: tuple[str, ...] = ("", "early_stopping", "max_steps", "time_budget")


@dataclass
class TrainState:
    """Where a run stands after its last completed epoch: what a checkpoint holds besides
    the model, optimiser, scheduler, objective and RNG states.

    ``to_checkpoint`` gives those checkpoint keys (``epoch``, ``history``, ``best``,
    ``bad_epochs``, ``global_step``, ``stopped`` and, for a run with checkpoints,
    ``fingerprint`` / ``fingerprint_items``); ``from_checkpoint`` reads them back.
    """

    epoch: int = 0  #: completed epochs
    history: list[dict[str, Any]] = field(default_factory=list)  #: one row per epoch
    best_epoch: int | None = None  #: the selected epoch (None before the first)
    best_metric: float = float("nan")  #: its selection metric
    best_state_dict: dict[str, torch.Tensor] | None = None  #: its weights, on CPU
    bad_epochs: int = 0  #: epochs since the selected one (the early-stopping counter)
    global_step: int = 0  #: optimiser steps so far
    #: why training stopped ("" while it goes on; one of ``STOP_REASONS``); a resumed run
    #: decides it again with its own settings (``fit``), the stored value is a record only
    stopped: str = ""
    fingerprint: str | None = None  #: ``result_fingerprint`` digest (runs with checkpoints)
    fingerprint_items: dict[str, Any] | None = None  #: what the digest was computed from

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint keys of this state (the fingerprint keys only when set)."""
        best = None
        if self.best_epoch is not None:
            best = {
                "metric": self.best_metric,
                "epoch": self.best_epoch,
                "state_dict": self.best_state_dict,
            }
        out: dict[str, Any] = {
            "epoch": self.epoch,
            "history": self.history,
            "best": best,
            "bad_epochs": self.bad_epochs,
            "global_step": self.global_step,
            "stopped": self.stopped,
        }
        if self.fingerprint is not None:
            out.update(fingerprint=self.fingerprint, fingerprint_items=self.fingerprint_items)
        return out

    @classmethod
    def from_checkpoint(cls, saved: Mapping[str, Any]) -> TrainState:
        """The state ``to_checkpoint`` wrote into ``saved`` (a loaded checkpoint)."""
        best = saved["best"]
        return cls(
            epoch=saved["epoch"],
            history=saved["history"],
            best_epoch=None if best is None else best["epoch"],
            best_metric=float("nan") if best is None else best["metric"],
            best_state_dict=None if best is None else best["state_dict"],
            bad_epochs=saved["bad_epochs"],
            global_step=saved["global_step"],
            stopped=saved["stopped"],
            fingerprint=saved["fingerprint"],
            fingerprint_items=saved["fingerprint_items"],
        )


@dataclass
class TrainParts:
    """The objects one ``fit`` trains with (built by ``build_parts``)."""

    model: CXRModel  #: the model itself (its weights are what ``fit`` returns)
    forward: nn.Module  #: ``TrainingForward(model)``, inside DDP when world > 1
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: Objective
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    val_table: pd.DataFrame  #: the validation rows, in ``val_loader`` order


def build_parts(
    train_table: pd.DataFrame,
    val_table: pd.DataFrame,
    cache: ImageCache,
    cfg: Mapping[str, Any],
    setup: DeviceSetup,
    *,
    rank: int,
    world: int,
) -> TrainParts:
    """Model (seeded by ``cfg['seed']``), optimiser, schedule, objective and loaders."""
    model = init_model(cfg).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: nn.Module = TrainingForward(model)
    if world > 1:
        ids = [setup.device.index] if setup.device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(forward, device_ids=ids)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    labels = train_table[[LABEL_PREFIX + t for t in cfg["tasks"]]].to_numpy(dtype=float)
    objective = make_objective(
        str(cfg["objective"]), labels, train_table["group"].to_numpy(), cfg["objective_params"]
    )
    workers = int(cfg["num_workers"])
    train_loader = make_loader(
        CacheBatches(train_table, cache, cfg, train=True), int(cfg["batch_size"]),
        seed=int(cfg["seed"]), shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=setup.pin_memory, rank=rank, world=world,
    )  # fmt: skip
    val_loader = make_loader(
        CacheBatches(val_table, cache, cfg, train=False), int(cfg["eval_batch_size"]), seed=0,
        shuffle=False, drop_last=False, num_workers=workers, pin_memory=setup.pin_memory,
    )  # fmt: skip
    return TrainParts(
        model, forward, optimizer, scheduler, objective, train_loader, val_loader, val_table
    )


def _broadcast_buffers(model: nn.Module) -> None:
    """Make BatchNorm running statistics identical on every rank (rank 0's)."""
    for buf in model.buffers():
        torch.distributed.broadcast(buf, src=0)


def train_and_validate(
    parts: TrainParts,
    state: TrainState,
    cfg: Mapping[str, Any],
    setup: DeviceSetup,
    *,
    rank: int,
    world: int,
) -> dict[str, Any]:
    """Train epoch ``state.epoch + 1``, step the schedule, validate; the epoch's history row.

    ``max_steps`` caps the epoch at the steps the run has left; under DDP the BatchNorm
    running statistics are rank 0's before validating. ``state`` is not changed.
    """
    epoch = state.epoch + 1
    steps_left = None if cfg["max_steps"] is None else int(cfg["max_steps"]) - state.global_step
    lr = parts.optimizer.param_groups[0]["lr"]
    stats = train_one_epoch(
        parts.forward, parts.train_loader, parts.optimizer, parts.objective, setup, cfg,
        epoch=epoch, max_steps=steps_left, progress=bool(cfg["progress"]) and rank == 0,
    )  # fmt: skip
    parts.scheduler.step()
    if world > 1:
        _broadcast_buffers(parts.model)
    val = evaluate(parts.model, parts.val_loader, parts.val_table, cfg, setup)
    return {
        "epoch": epoch,
        **stats,
        "val_auroc": val["auroc"],
        "val_robust_auroc": val["robust_auroc"],
        "lr": lr,
        "selected": False,
    }


def _improved(value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing selected yet; NaN never wins over a
    selection, and any finite value beats a NaN best)."""
    if not math.isfinite(value):
        return best is None
    return best is None or not math.isfinite(best) or value > best


def record_epoch(state: TrainState, row: dict[str, Any], metric: str, model: nn.Module) -> bool:
    """Add ``row`` (from ``train_and_validate``) to ``state`` and apply model selection.

    When ``row[metric]`` improves on the selected epoch's metric (see ``_improved``), the
    epoch becomes the selected one with a CPU copy of ``model``'s weights and the
    early-stopping counter restarts; otherwise the counter grows by one.

    Returns:
        Whether this epoch was selected.
    """
    state.history.append(row)
    state.global_step += row["steps"]
    state.epoch = row["epoch"]
    value = row[metric]
    if not _improved(value, None if state.best_epoch is None else state.best_metric):
        state.bad_epochs += 1
        return False
    state.best_metric, state.best_epoch = value, state.epoch
    state.best_state_dict = copy.deepcopy(
        {k: v.detach().cpu() for k, v in model.state_dict().items()}
    )
    state.bad_epochs = 0
    return True


def stop_reason(cfg: Mapping[str, Any], state: TrainState, elapsed_s: float) -> str:
    """Why training stops after this epoch ("" = go on), by this process's own reading.

    In order: ``patience`` epochs without improvement, ``max_steps`` optimiser steps taken,
    ``time_budget_s`` seconds spent (each None = no such limit).
    """
    if cfg["patience"] is not None and state.bad_epochs >= int(cfg["patience"]):
        return "early_stopping"
    if cfg["max_steps"] is not None and state.global_step >= int(cfg["max_steps"]):
        return "max_steps"
    if cfg["time_budget_s"] is not None and elapsed_s >= float(cfg["time_budget_s"]):
        return "time_budget"
    return ""


def _rank0_decides(reason: str, world: int, setup: DeviceSetup) -> str:
    """Rank 0's ``reason``, on every rank.

    Early stopping and ``max_steps`` agree across ranks by construction, but the time budget
    reads each process's own clock; under DDP rank 0 decides and broadcasts, so every rank
    stops after the same epoch (a rank that stopped alone would leave the others waiting in
    their next all-reduce).
    """
    if world <= 1:
        return reason
    code = torch.tensor([STOP_REASONS.index(reason)], device=setup.device)
    torch.distributed.broadcast(code, src=0)
    return STOP_REASONS[int(code.item())]


def save_epoch_checkpoint(
    folder: Path, state: TrainState, parts: TrainParts, cfg: Mapping[str, Any]
) -> Path:
    """Write ``state`` with the model, optimiser, scheduler, objective and RNG states."""
    objective = parts.objective
    objective_state = objective.state_dict() if hasattr(objective, "state_dict") else None
    return save_checkpoint(
        folder,
        {**state.to_checkpoint(), "model": parts.model.state_dict(),
         "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
         "objective": objective_state, "rng": rng_state(), "config": dict(cfg)},
        keep=int(cfg["keep_checkpoints"]),
    )  # fmt: skip


def restore(parts: TrainParts, saved: Mapping[str, Any]) -> TrainState:
    """Load a checkpoint's model, optimiser, scheduler, objective and RNG states into
    ``parts`` and the global RNG; the ``TrainState`` it holds."""
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    if saved.get("objective") is not None and hasattr(parts.objective, "load_state_dict"):
        parts.objective.load_state_dict(saved["objective"])
    set_rng_state(saved["rng"])
    return TrainState.from_checkpoint(saved)


def _log_epoch(cfg: Mapping[str, Any], row: Mapping[str, Any]) -> None:
    logger.info(
        "[%s] epoch %d: loss %.4f, val AUROC %.3f, val robust AUROC %.3f, %.0f img/s, "
        "data wait %.0f%%",
        cfg.get("variant", "?"), row["epoch"], row["train_loss"], row["val_auroc"],
        row["val_robust_auroc"], row["images_per_s"], 100 * row["data_wait_fraction"],
    )  # fmt: skip


def run_epochs(
    parts: TrainParts,
    state: TrainState,
    cfg: Mapping[str, Any],
    setup: DeviceSetup,
    *,
    folder: Path | None,
    rank: int,
    world: int,
) -> None:
    """Train epochs until ``cfg['epochs']`` or a stop rule (updates ``state``).

    After every epoch: model selection, the stop decision (rank 0's under DDP) and, with a
    checkpoint ``folder``, a checkpoint written by rank 0.
    """
    started = time.perf_counter()
    metric = "val_" + str(cfg["selection_metric"])
    while state.epoch < int(cfg["epochs"]) and not state.stopped:
        row = train_and_validate(parts, state, cfg, setup, rank=rank, world=world)
        record_epoch(state, row, metric, parts.model)
        reason = stop_reason(cfg, state, time.perf_counter() - started)
        state.stopped = _rank0_decides(reason, world, setup)
        _log_epoch(cfg, row)
        if folder is not None and rank == 0:
            save_epoch_checkpoint(folder, state, parts, cfg)


def fit_result(
    state: TrainState, model: nn.Module, fingerprint: tuple[str, dict[str, Any]]
) -> FitResult:
    """``FitResult`` of a finished run: the selected epoch's weights (the last weights when
    no epoch was selected, e.g. a run that trained none), the history with ``selected``,
    and the run's ``result_fingerprint`` (digest and items)."""
    if state.best_epoch is None:
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        best_epoch = state.epoch
    else:
        weights, best_epoch = state.best_state_dict, state.best_epoch
    history = pd.DataFrame(state.history, columns=list(HISTORY_COLUMNS))
    if len(history):
        history["selected"] = history["epoch"] == best_epoch
    return FitResult(
        weights,
        history,
        int(best_epoch),
        state.stopped or "epochs",
        fingerprint[0],
        fingerprint[1],
    )


def fit(
    train_table: pd.DataFrame,
    val_table: pd.DataFrame,
    cache: ImageCache,
    cfg: Mapping[str, Any],
    setup: DeviceSetup,
    *,
    checkpoint_dir: str | Path | None = None,
    rank: int = 0,
    world: int = 1,
) -> FitResult:
    """Train a model from ``cfg`` on ``train_table``, selecting on ``val_table``.

    Args:
        train_table: Train rows of ``build_training_table``.
        val_table: Validation rows.
        cache: The image cache.
        cfg: Resolved training config.
        setup: Device settings.
        checkpoint_dir: Folder of this variant's checkpoints (None: no checkpoints). With
            ``cfg["resume"]`` the newest one is continued.
        rank: Process rank under DDP (0 writes checkpoints).
        world: Number of processes (> 1: DistributedDataParallel).

    Resuming continues the checkpoint only where that gives this run's result (see
    ``checkpoints.load_latest_checkpoint``; the fingerprint includes ``world``), and the
    stopping rules are decided again with this run's settings (``stop_reason``, with a time
    budget that starts now), not read from the checkpoint: a run stopped by its time budget,
    or by a ``patience`` since raised or removed, goes on.

    Returns:
        The best state dict (on CPU), the history, the selected epoch and why training stopped.
    """
    configure_determinism(bool(cfg["deterministic"]))
    parts = build_parts(train_table, val_table, cache, cfg, setup, rank=rank, world=world)
    fingerprint = result_fingerprint(
        cfg,
        data=training_data_digest(train_table, val_table, cache),
        precision=str(setup.autocast_dtype or "fp32").replace("torch.", ""),
        device=setup.device.type,
        world=world,
    )
    state, folder, saved = TrainState(), None, None
    if checkpoint_dir:
        folder = prepare_run_folder(
            checkpoint_dir, fingerprint[0], fingerprint[1], resume=bool(cfg["resume"]), rank=rank
        )
        if cfg["resume"]:
            saved = load_latest_checkpoint(
                folder, cfg, fingerprint=fingerprint, epoch_steps=len(parts.train_loader)
            )
        state.fingerprint, state.fingerprint_items = fingerprint
    cuda = [setup.device.index or 0] if setup.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(cfg["seed"]) + 1)
        if saved is not None:
            state = restore(parts, saved)
            # The stored reason was decided under the checkpoint's settings (and clock).
            state.stopped = stop_reason(cfg, state, 0.0)
        run_epochs(parts, state, cfg, setup, folder=folder, rank=rank, world=world)
    return fit_result(state, parts.model, fingerprint)
