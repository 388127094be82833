"""Training-loop benchmark: the project's ``fit`` against the model's own training step.

Usage:
    python benchmarks/bench_training.py [--models unet_small cnn_small resnet18]
        [--images 1700] [--size 96] [--batch 32] [--epochs 1] [--rounds 2]
        [--precisions auto] [--threads N] [--device cpu] [--compile]
        [--eval-batch N] [--eval-batches 16 32 64 128] [--ceiling] [--fill-ab] [--json FILE]

Both sides run in this process, interleaved (loop, pure, loop, pure, ... ``--rounds`` times
per model and precision), so a shared, noisy machine slows both alike:

- **loop**: ``cxr_spurious.training.engine.fit`` on an image cache, as the training
  pipeline calls it: model and optimiser set-up, loading batches from the memory-mapped
  cache (dense targets for a dense supervision, augmentation for rows flagged by
  ``--augment``), the project's loss, the optimiser step, the per-step loss bookkeeping,
  one validation pass per epoch (fp32 predictions, AUROC and robust AUROC), model selection
  and a checkpoint per epoch. The MLflow logging of the training pipeline happens outside
  ``fit`` (in the pipeline's nodes and hooks) and is not timed. Loop img/s = training
  images / wall time of ``fit``.
- **pure**: forward + backward + optimiser step of the same model (same architecture,
  width, optimiser, precision, memory format and threads) on one batch held in memory,
  with a plain BCE-with-logits loss on its outputs; as many steps as one loop round takes.
  Pure img/s = images / wall time of those steps.

The image cache is built in a temporary folder from a phantom generated for the run
(``cxr_spurious.phantom`` at the cache resolution, read by the phantom adapter and cached
by ``cxr_spurious.sources.cache``; nothing is downloaded), with the default study's
phantom settings (``conf/base/parameters_ingestion.yml``: split fractions, tube side) and
``--images`` images (1700, the default study's size: ~1000 train and ~270 val images).
Training settings are the default study's (``conf/base/parameters_training.yml``) with
``--batch``, ``--epochs``, ``progress: false`` and, per model, the supervision of the
default study's dense variant for ``unet_small`` (``--unet-supervision``, default ``seg``)
and ``erm`` for the image-only models.

``--precisions auto`` measures fp32, and bf16 autocast too where ``training/device.py``
would choose it (CUDA, or a CPU with native bf16). Before the timed rounds of each row,
a one-step ``fit`` and two pure steps run untimed (oneDNN / cuDNN set-up).

Prints one row per model and precision: loop img/s, pure img/s, their ratio (the issue's
target is >= 0.90), the loop's in-epoch rate and data-wait share from its history, and the
mean time per ``fit`` spent outside its epochs (set-up, the validation pass, model
selection, the checkpoint).

``--compile`` also times the pure step of ``torch.compile(model)`` (default mode, the
inductor backend) in each round, right after the eager pure step, and reports: its img/s
and its ratio to the eager pure rate; the first compiled steps' time (compilation
included); and ``compile_checks``: its outputs against eager's, and whether two compiled
runs of 3 steps from the same weights end identical (deterministic).

``--eval-batches B ...`` also times, per model, ``training.engine.predict`` (the fp32
inference pass of the validation and of the training pipeline's prediction nodes, batch
size ``training.eval_batch_size``) over the validation rows at each batch size B, in
``--rounds`` interleaved rounds on one model, and reports img/s per batch size and the
largest difference of its probabilities from the first batch size's (the result must not
depend on the batch size: BatchNorm uses its running statistics in evaluation).
``--eval-batch N`` sets the loop's ``eval_batch_size`` (its validation pass) instead of
the configuration's.

``--ceiling`` also reports, per row, how close the pure step is to what the CPU's matrix
units do: the floating-point operations of one training step per image (forward + backward,
counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products,
the bulk of the work; element-wise operations are not counted), the pure step's GFLOP/s,
and the rate of a large square matrix product (``--ceiling-size``, same precision and
threads, timed right after the row's rounds) as the ceiling; with the images per second
the pure step would reach at that ceiling.

``--fill-ab`` also times, in each round right after the regular loop and pure step, the
same loop and pure step with PyTorch's NaN fill of fresh tensors on
(``torch.utils.deterministic.fill_uninitialized_memory``, PyTorch's default under
deterministic algorithms; the project switches it off, ``training/device.py``
``FILL_UNINITIALIZED_MEMORY``), and reports both rates with fill on and the speed-up of the
project's setting; plus whether 3 pure steps from the same weights end identical with the
fill on and off (they must: a difference means an operation reads memory it did not write).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torch.utils.deterministic
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cxr_spurious.phantom import PhantomConfig, generate_phantom
from cxr_spurious.sources.adapters import get_adapter
from cxr_spurious.sources.cache import ImageCache, build_cache, load_cache, make_cache_spec
from cxr_spurious.sources.contract import validate_manifest
from cxr_spurious.training import device as device_module
from cxr_spurious.training.config import resolve_training_config
from cxr_spurious.training.data import CacheBatches, build_training_table, make_loader
from cxr_spurious.training.device import (
    DeviceSetup,
    configure_determinism,
    cpu_has_native_bf16,
    precision_name,
    resolve_device,
)
from cxr_spurious.training.engine import (
    TrainingForward,
    fit,
    init_model,
    make_optimizer,
    predict,
)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf" / "base"
MODELS: tuple[str, ...] = ("unet_small", "cnn_small", "resnet18")
DENSE_MODELS: frozenset[str] = frozenset({"unet_small"})
TARGET = 0.90  # issue #20 item 1: the loop at >= 90 % of the pure rate


def _yaml_block(path: Path, key: str) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data.get(key), dict):
        raise KeyError(f"{path}: expected a mapping under '{key}'")
    return dict(data[key])


def build_bench_cache(
    folder: Path, n_images: int, size: int, seed: int, n_jobs: int
) -> tuple[pd.DataFrame, ImageCache]:
    """Generate a phantom of ``n_images`` at ``size`` px and cache it in ``folder``.

    Returns the validated manifest and the memory-mapped cache.
    """
    phantom = _yaml_block(CONF / "parameters_ingestion.yml", "ingestion").get("phantom") or {}
    cfg = PhantomConfig.from_dict({**phantom, "n_images": n_images, "image_size": size})
    generate_phantom(cfg, folder / "phantom", seed=seed, n_jobs=n_jobs, progress=False)
    source = get_adapter("phantom")(folder / "phantom", {})
    manifest = validate_manifest(source.manifest, source.tasks)
    spec = make_cache_spec(
        manifest,
        source.tasks,
        size,
        segmentations=source.segmentations,
        instance_segmentations=source.instance_segmentations,
        annotations=source.annotations,
        spurious_segmentations=source.spurious_segmentations,
        n_jobs=n_jobs,
    )
    build_cache(spec, folder / "cache", progress=False)
    return manifest, load_cache(folder / "cache")


def training_config(
    model: str,
    supervision: str,
    batch: int,
    epochs: int,
    precision: str,
    device: str,
    eval_batch: int | None = None,
) -> dict[str, Any]:
    """The default study's training settings for ``model`` with the benchmark's overrides
    (``eval_batch``: ``eval_batch_size``, None keeps the configuration's)."""
    shared = _yaml_block(CONF / "parameters_training.yml", "training")
    shared.pop("variants", None)
    shared.pop("only", None)
    shared.update(
        batch_size=batch, epochs=epochs, progress=False, precision=precision, device=device
    )
    if eval_batch is not None:
        shared["eval_batch_size"] = eval_batch
    variant = {"name": f"bench_{model}", "supervision": supervision, "architecture": model}
    return resolve_training_config(shared, variant)


def split_tables(
    manifest: pd.DataFrame, cache: ImageCache, cfg: Mapping[str, Any], augment: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and val rows of the training table; ``augment`` of the train rows (drawn with
    the config's seed) are flagged for augmentation, as ``augment_upsample`` flags its copies."""
    table = build_training_table(manifest, cache, cfg)
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    if augment > 0:
        rng = np.random.default_rng(int(cfg["seed"]))
        train["augment"] = rng.random(len(train)) < augment
    return train, val


def _sync(setup: DeviceSetup) -> None:
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)


def time_loop(
    train: pd.DataFrame,
    val: pd.DataFrame,
    cache: ImageCache,
    cfg: Mapping[str, Any],
    setup: DeviceSetup,
    checkpoint_dir: Path,
) -> dict[str, float]:
    """One ``fit`` (with checkpoints in ``checkpoint_dir``): images, seconds and its history's
    in-epoch rate and data-wait share."""
    _sync(setup)
    start = time.perf_counter()
    result = fit(train, val, cache, cfg, setup, checkpoint_dir=checkpoint_dir)
    _sync(setup)
    seconds = time.perf_counter() - start
    hist = result.history
    steps = int(hist["steps"].sum())
    epoch_s = float(hist["seconds"].sum())
    wait = float((hist["data_wait_fraction"] * hist["seconds"]).sum())
    return {
        "images": steps * int(cfg["batch_size"]),
        "seconds": seconds,
        "steps": steps,
        "epoch_images_per_s": steps * int(cfg["batch_size"]) / epoch_s if epoch_s > 0 else 0.0,
        "data_wait_fraction": wait / epoch_s if epoch_s > 0 else 0.0,
    }


def model_as_fit_builds(cfg: Mapping[str, Any], setup: DeviceSetup) -> nn.Module:
    """The model as ``fit`` builds it: weights seeded by ``cfg``, on the device, in the
    training memory format."""
    model = init_model(cfg).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def pure_step_runner(
    cfg: Mapping[str, Any], setup: DeviceSetup, image: torch.Tensor
) -> tuple[TrainingForward, torch.optim.Optimizer, torch.Tensor, list[torch.Tensor]]:
    """The model as ``fit`` builds it (seeded weights, memory format), its optimiser, the
    batch on the device and fixed 0/1 targets for each output."""
    model = model_as_fit_builds(cfg, setup)
    net = TrainingForward(model)
    net.train()
    optimizer = make_optimizer(model, cfg)
    x = setup.to_input(image)
    with torch.no_grad(), setup.autocast():
        shapes = [o.shape for o in net(x)]
    gen = torch.Generator().manual_seed(0)
    targets = [(torch.rand(s, generator=gen) < 0.5).float().to(setup.device) for s in shapes]
    return net, optimizer, x, targets


def forward_backward(
    net: nn.Module, x: torch.Tensor, targets: Sequence[torch.Tensor], setup: DeviceSetup
) -> None:
    """The pure step's forward (in the precision's autocast) and backward: a plain BCE with
    logits on each output against its fixed targets."""
    with setup.autocast():
        outputs = net(x)
    loss = sum(
        F.binary_cross_entropy_with_logits(o.float(), t)
        for o, t in zip(outputs, targets, strict=True)
    )
    loss.backward()


def time_pure(
    runner: tuple[TrainingForward, torch.optim.Optimizer, torch.Tensor, list[torch.Tensor]],
    setup: DeviceSetup,
    steps: int,
) -> dict[str, float]:
    """``steps`` forward + backward + optimiser steps on the batch in memory."""
    net, optimizer, x, targets = runner
    _sync(setup)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        forward_backward(net, x, targets, setup)
        optimizer.step()
    _sync(setup)
    seconds = time.perf_counter() - start
    return {"images": steps * int(x.shape[0]), "seconds": seconds, "steps": steps}


@contextlib.contextmanager
def nan_fill(on: bool) -> Iterator[None]:
    """PyTorch's NaN fill of fresh tensors on (or off) inside the block, for the pure step
    (the flag) and for ``fit`` (which sets the flag from ``FILL_UNINITIALIZED_MEMORY``
    through ``configure_determinism``); both are put back afterwards."""
    saved = (
        device_module.FILL_UNINITIALIZED_MEMORY,
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    device_module.FILL_UNINITIALIZED_MEMORY = on
    torch.utils.deterministic.fill_uninitialized_memory = on
    try:
        yield
    finally:
        device_module.FILL_UNINITIALIZED_MEMORY = saved[0]
        torch.utils.deterministic.fill_uninitialized_memory = saved[1]


def fill_checks(
    cfg: Mapping[str, Any], setup: DeviceSetup, image: torch.Tensor, steps: int
) -> dict[str, float]:
    """Largest parameter difference after ``steps`` pure steps from the same weights with
    the NaN fill on and off (0 unless an operation reads memory it did not write), and
    whether the parameters stayed finite with it on."""
    ends = {}
    for on in (True, False):
        with nan_fill(on):
            runner = pure_step_runner(cfg, setup, image)
            time_pure(runner, setup, steps)
            ends[on] = _parameters(runner)
    return {
        "fill_vs_no_fill_max_diff": _max_diff(ends[True], ends[False]),
        "fill_params_finite": all(bool(torch.isfinite(p).all()) for p in ends[True]),
    }


def _parameters(runner: tuple[TrainingForward, Any, Any, Any]) -> list[torch.Tensor]:
    return [p.detach().float().cpu().clone() for p in runner[0].parameters()]


def _max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def compile_runner(
    runner: tuple[TrainingForward, torch.optim.Optimizer, torch.Tensor, list[torch.Tensor]],
) -> tuple[Any, torch.optim.Optimizer, torch.Tensor, list[torch.Tensor]]:
    """The runner with its model wrapped in ``torch.compile`` (same parameters, optimiser)."""
    net, optimizer, x, targets = runner
    return torch.compile(net), optimizer, x, targets


def compile_checks(
    cfg: Mapping[str, Any], setup: DeviceSetup, image: torch.Tensor, steps: int
) -> dict[str, float]:
    """How the compiled model compares, from fresh (seeded) weights: its outputs against
    eager's on the batch (largest absolute difference); after ``steps`` steps run twice
    compiled and once eager, the largest parameter difference between the two compiled runs
    (0 = deterministic), how far the compiled steps moved the parameters, and how far the
    compiled and eager parameters end apart (Adam's first steps are about ``lr`` times the
    gradient's sign, so a parameter whose gradient is near 0 can move either way)."""
    eager = pure_step_runner(cfg, setup, image)
    initial = _parameters(eager)
    compiled = compile_runner(pure_step_runner(cfg, setup, image))
    with torch.no_grad(), setup.autocast():
        outputs = [o.float() for o in eager[0](eager[2])]
        compiled_outputs = [o.float() for o in compiled[0](compiled[2])]
    forward_diff = _max_diff(outputs, compiled_outputs)
    first = pure_step_runner(cfg, setup, image)
    time_pure(compile_runner(first), setup, steps)
    second = pure_step_runner(cfg, setup, image)
    time_pure(compile_runner(second), setup, steps)
    time_pure(eager, setup, steps)
    return {
        "forward_max_diff": forward_diff,
        "compiled_vs_compiled_max_diff": _max_diff(_parameters(first), _parameters(second)),
        "compiled_moved_max": _max_diff(initial, _parameters(first)),
        "compiled_vs_eager_max_diff": _max_diff(_parameters(first), _parameters(eager)),
        "check_steps": steps,
    }


def step_flops_per_image(
    runner: tuple[TrainingForward, torch.optim.Optimizer, torch.Tensor, list[torch.Tensor]],
    setup: DeviceSetup,
) -> float:
    """Floating-point operations of one forward + backward of the pure step, per image
    (``FlopCounterMode``: convolutions and matrix products; the optimiser step and
    element-wise operations are not counted)."""
    net, optimizer, x, targets = runner
    counter = FlopCounterMode(display=False)
    optimizer.zero_grad(set_to_none=True)
    with counter:
        forward_backward(net, x, targets, setup)
    optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / int(x.shape[0])


def matmul_gflop_s(setup: DeviceSetup, precision: str, size: int, seconds: float = 2.0) -> float:
    """GFLOP/s of ``size`` x ``size`` matrix products in ``precision`` (fp32, or bf16
    operands) on the device: one untimed product, then as many as fit in ``seconds``."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(setup.device, dtype) for _ in range(2))
    torch.mm(a, b)
    _sync(setup)
    n, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        n += 1
        _sync(setup)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * size**3 * n / elapsed / 1e9


def bench_row(
    model: str,
    supervision: str,
    precision: str,
    manifest: pd.DataFrame,
    cache: ImageCache,
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:
    """Warm-up, then ``args.rounds`` x (loop, pure) for one model and precision."""
    cfg = training_config(
        model, supervision, args.batch, args.epochs, precision, args.device, args.eval_batch
    )
    setup = resolve_device(args.device, precision=precision)
    configure_determinism(bool(cfg["deterministic"]))
    train, val = split_tables(manifest, cache, cfg, args.augment)
    image = CacheBatches(train, cache, cfg, train=True)[(0, list(range(args.batch)))]["image"]
    fit(train, val, cache, {**cfg, "max_steps": 1}, setup, checkpoint_dir=work / "warmup")
    time_pure(pure_step_runner(cfg, setup, image), setup, 2)
    compiled, compile_info = None, {}
    if args.compile:
        compiled = compile_runner(pure_step_runner(cfg, setup, image))
        first = time_pure(compiled, setup, 2)  # compiles (forward and backward graphs)
        compile_info = {"first_steps_s": first["seconds"], **compile_checks(cfg, setup, image, 3)}
    rounds = []
    for r in range(args.rounds):
        loop = time_loop(train, val, cache, cfg, setup, work / f"{model}_{precision}_{r}")
        runner = pure_step_runner(cfg, setup, image)  # fresh weights, like each fit
        pure = time_pure(runner, setup, max(1, loop["steps"]))
        entry = {"loop": loop, "pure": pure}
        if compiled is not None:  # one compiled model for every round: no recompilation
            entry["compiled"] = time_pure(compiled, setup, max(1, loop["steps"]))
        if args.fill_ab:
            with nan_fill(True):
                entry["loop_fill"] = time_loop(
                    train, val, cache, cfg, setup, work / f"{model}_{precision}_{r}_fill"
                )
                entry["pure_fill"] = time_pure(
                    pure_step_runner(cfg, setup, image), setup, max(1, loop["steps"])
                )
        rounds.append(entry)
    ceiling: dict[str, float] = {}
    if args.ceiling:
        flops = step_flops_per_image(pure_step_runner(cfg, setup, image), setup)
        ceiling = {
            "step_gflop_per_image": flops / 1e9,
            "matmul_gflop_s": matmul_gflop_s(setup, precision, args.ceiling_size),
        }
    loop_rate = sum(x["loop"]["images"] for x in rounds) / sum(x["loop"]["seconds"] for x in rounds)
    pure_rate = sum(x["pure"]["images"] for x in rounds) / sum(x["pure"]["seconds"] for x in rounds)
    epoch_s = sum(x["loop"]["images"] / x["loop"]["epoch_images_per_s"] for x in rounds)
    wait = sum(
        x["loop"]["data_wait_fraction"] * x["loop"]["images"] / x["loop"]["epoch_images_per_s"]
        for x in rounds
    )
    row = {
        "model": model,
        "supervision": supervision,
        "precision": precision_name(setup),
        "train_images": len(train),
        "eval_batch_size": int(cfg["eval_batch_size"]),
        "val_images": len(val),
        "loop_img_s": loop_rate,
        "pure_img_s": pure_rate,
        "ratio": loop_rate / pure_rate,
        "meets_target": loop_rate / pure_rate >= TARGET,
        "in_epoch_img_s": sum(x["loop"]["images"] for x in rounds) / epoch_s,
        "data_wait_fraction": wait / epoch_s,
        # per fit, the time outside train_one_epoch: set-up, validation, selection, checkpoint
        "outside_epochs_s": (sum(x["loop"]["seconds"] for x in rounds) - epoch_s) / len(rounds),
        "rounds": rounds,
    }
    if ceiling:
        gflop = ceiling["step_gflop_per_image"]
        row.update(
            ceiling,
            pure_gflop_s=pure_rate * gflop,
            of_ceiling=pure_rate * gflop / ceiling["matmul_gflop_s"],
            img_s_at_ceiling=ceiling["matmul_gflop_s"] / gflop,
        )
    if args.fill_ab:
        loop_fill = sum(x["loop_fill"]["images"] for x in rounds) / sum(
            x["loop_fill"]["seconds"] for x in rounds
        )
        pure_fill = sum(x["pure_fill"]["images"] for x in rounds) / sum(
            x["pure_fill"]["seconds"] for x in rounds
        )
        row.update(
            loop_fill_img_s=loop_fill, pure_fill_img_s=pure_fill,
            loop_vs_fill=loop_rate / loop_fill, pure_vs_fill=pure_rate / pure_fill,
            **fill_checks(cfg, setup, image, 3),
        )  # fmt: skip
    if compiled is not None:
        done = [x["compiled"] for x in rounds]
        compiled_rate = sum(x["images"] for x in done) / sum(x["seconds"] for x in done)
        row.update(
            compiled_img_s=compiled_rate, compiled_vs_eager=compiled_rate / pure_rate,
            **compile_info,
        )  # fmt: skip
    return row


def bench_eval_batches(
    model: str,
    supervision: str,
    manifest: pd.DataFrame,
    cache: ImageCache,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """img/s of ``predict`` over the validation rows at each of ``args.eval_batches``.

    One model (seeded weights, the training memory format), one untimed pass per batch
    size first, then ``args.rounds`` rounds over the batch sizes in turn. Each row also
    holds the largest absolute difference of its probabilities from the first size's.
    """
    cfg = training_config(model, supervision, args.batch, args.epochs, "fp32", args.device)
    setup = resolve_device(args.device, precision="fp32")
    configure_determinism(bool(cfg["deterministic"]))
    _, val = split_tables(manifest, cache, cfg, 0.0)
    net = model_as_fit_builds(cfg, setup)
    loaders = {
        b: make_loader(
            CacheBatches(val, cache, cfg, train=False), b, seed=0, shuffle=False,
            drop_last=False, num_workers=0, pin_memory=setup.pin_memory,
        )
        for b in args.eval_batches
    }  # fmt: skip
    probs = {b: predict(net, loader, setup)[0] for b, loader in loaders.items()}
    seconds = dict.fromkeys(loaders, 0.0)
    for _ in range(args.rounds):
        for b, loader in loaders.items():
            _sync(setup)
            start = time.perf_counter()
            predict(net, loader, setup)
            _sync(setup)
            seconds[b] += time.perf_counter() - start
    first = probs[args.eval_batches[0]]
    return [
        {
            "model": model,
            "batch": b,
            "images": len(val),
            "img_s": args.rounds * len(val) / seconds[b],
            "max_prob_diff": float(np.abs(probs[b] - first).max()),
        }
        for b in args.eval_batches
    ]


def format_eval_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The inference batch-size table (Markdown): img/s and the rate relative to the
    fastest batch size of the same model."""
    best = {}
    for r in rows:
        best[r["model"]] = max(best.get(r["model"], 0.0), r["img_s"])
    out = [
        "| model | eval batch | predict img/s | of the model's best | max prob diff |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['batch']} | {r['img_s']:.1f} "
            f"| {r['img_s'] / best[r['model']]:.2f} | {r['max_prob_diff']:.2g} |"
        )
    return "\n".join(out)


def precisions_for(choice: Sequence[str], device: str) -> list[str]:
    """``auto``: fp32, plus bf16 where ``training/device.py`` would pick it on ``device``."""
    if list(choice) != ["auto"]:
        return list(choice)
    setup = resolve_device(device)
    bf16 = setup.device.type == "cuda" or (setup.device.type == "cpu" and cpu_has_native_bf16())
    return ["fp32", "bf16"] if bf16 else ["fp32"]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor``)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The result table (Markdown)."""
    out = [
        "| model | supervision | precision | loop img/s | pure img/s | ratio | >= 90 % "
        "| loop in-epoch img/s | loop data wait | per fit outside epochs s |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['supervision']} | {r['precision']} | {r['loop_img_s']:.1f} "
            f"| {r['pure_img_s']:.1f} | {r['ratio']:.2f} | {'yes' if r['meets_target'] else 'no'} "
            f"| {r['in_epoch_img_s']:.1f} | {100 * r['data_wait_fraction']:.1f} % "
            f"| {r['outside_epochs_s']:.2f} |"
        )
    bounded = [r for r in rows if "matmul_gflop_s" in r]
    if bounded:
        out += [
            "",
            "| model | precision | GFLOP per image (step) | pure img/s | pure GFLOP/s "
            "| matmul GFLOP/s | pure / matmul | img/s at the matmul rate |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in bounded:
            out.append(
                f"| {r['model']} | {r['precision']} | {r['step_gflop_per_image']:.3f} "
                f"| {r['pure_img_s']:.1f} | {r['pure_gflop_s']:.1f} "
                f"| {r['matmul_gflop_s']:.1f} | {r['of_ceiling']:.2f} "
                f"| {r['img_s_at_ceiling']:.1f} |"
            )
    filled = [r for r in rows if "loop_fill_img_s" in r]
    if filled:
        out += [
            "",
            "| model | precision | loop img/s | loop img/s, NaN fill on | loop speed-up "
            "| pure img/s | pure img/s, NaN fill on | pure speed-up | params, fill on vs off "
            "| finite with fill |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in filled:
            out.append(
                f"| {r['model']} | {r['precision']} | {r['loop_img_s']:.1f} "
                f"| {r['loop_fill_img_s']:.1f} | {r['loop_vs_fill']:.3f} "
                f"| {r['pure_img_s']:.1f} | {r['pure_fill_img_s']:.1f} "
                f"| {r['pure_vs_fill']:.3f} | {r['fill_vs_no_fill_max_diff']:.2g} "
                f"| {'yes' if r['fill_params_finite'] else 'no'} |"
            )
    compiled = [r for r in rows if "compiled_img_s" in r]
    if compiled:
        out += [
            "",
            "| model | precision | pure img/s | compiled img/s | compiled / pure "
            "| first 2 compiled steps s | outputs vs eager | run vs run after 3 steps "
            "| moved by 3 steps | vs eager after 3 steps |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in compiled:
            out.append(
                f"| {r['model']} | {r['precision']} | {r['pure_img_s']:.1f} "
                f"| {r['compiled_img_s']:.1f} | {r['compiled_vs_eager']:.2f} "
                f"| {r['first_steps_s']:.1f} | {r['forward_max_diff']:.2g} "
                f"| {r['compiled_vs_compiled_max_diff']:.2g} | {r['compiled_moved_max']:.2g} "
                f"| {r['compiled_vs_eager_max_diff']:.2g} |"
            )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="architectures")
    ap.add_argument(
        "--unet-supervision",
        default="seg",
        choices=["erm", "box", "seg"],
        help="supervision of the dense unet_small (default: seg; image-only models use erm)",
    )
    ap.add_argument(
        "--images", type=int, default=1700, help="phantom images (train ~59 %%, val ~16 %%)"
    )
    ap.add_argument("--size", type=int, default=96, help="cache resolution in pixels")
    ap.add_argument("--batch", type=int, default=32, help="training batch size")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per loop round")
    ap.add_argument("--rounds", type=int, default=2, help="(loop, pure) pairs per row")
    ap.add_argument(
        "--augment",
        type=float,
        default=0.0,
        help="share of train rows flagged for augmentation (default study: 0)",
    )
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=["auto"],
        choices=["auto", "fp32", "bf16"],
        help="auto: fp32, and bf16 where training/device.py picks it",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:k] | auto")
    ap.add_argument("--seed", type=int, default=0, help="phantom seed")
    ap.add_argument("--jobs", type=int, default=2, help="processes for phantom and cache")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile of the pure step (and check its determinism)",
    )
    ap.add_argument(
        "--eval-batch",
        type=int,
        default=None,
        help="the loop's eval_batch_size (default: conf/base/parameters_training.yml's)",
    )
    ap.add_argument(
        "--eval-batches",
        type=int,
        nargs="+",
        default=[],
        help="also time predict() on the validation rows at these batch sizes",
    )
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="also count the step's FLOPs and time a matrix product as the CPU's ceiling",
    )
    ap.add_argument(
        "--ceiling-size", type=int, default=2048, help="matrix size of --ceiling's product"
    )
    ap.add_argument(
        "--fill-ab",
        action="store_true",
        help="also time loop and pure step with PyTorch's NaN fill of fresh tensors on",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.eval_batch is not None and args.eval_batch < 1:
        ap.error(f"--eval-batch must be >= 1, got {args.eval_batch}")
    if any(b < 1 for b in args.eval_batches):
        ap.error(f"--eval-batches must be >= 1, got {args.eval_batches}")
    for name in ("images", "size", "batch", "epochs", "rounds", "jobs", "ceiling_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.augment <= 1.0:
        ap.error(f"--augment must be in [0, 1], got {args.augment}")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        ap.error(f"--models: unknown {unknown}; expected some of {list(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    precisions = precisions_for(args.precisions, args.device)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        manifest, cache = build_bench_cache(work, args.images, args.size, args.seed, args.jobs)
        cache_s = time.perf_counter() - t0
        print(
            f"cache: {len(cache)} phantom images at {args.size} px in {cache_s:.1f} s; "
            f"device {args.device}, torch threads {torch.get_num_threads()}, "
            f"precisions {', '.join(precisions)}; CPU {cpu_name()}, "
            f"1/5/15-min load before {' '.join(f'{v:.2f}' for v in load_before)}",
            flush=True,
        )
        for model in args.models:
            supervision = args.unet_supervision if model in DENSE_MODELS else "erm"
            for precision in precisions:
                t0 = time.perf_counter()
                row = bench_row(model, supervision, precision, manifest, cache, args, work)
                rows.append(row)
                print(
                    f"{model} {row['precision']}: loop {row['loop_img_s']:.1f} img/s, pure "
                    f"{row['pure_img_s']:.1f} img/s, ratio {row['ratio']:.2f} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
        eval_rows: list[dict[str, Any]] = []
        if args.eval_batches:
            for model in args.models:
                supervision = args.unet_supervision if model in DENSE_MODELS else "erm"
                eval_rows += bench_eval_batches(model, supervision, manifest, cache, args)
    load_after = os.getloadavg()
    result = {
        "command": shlex.join(["python", *(sys.argv if argv is None else [__file__, *argv])]),
        "date": started.isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_before": list(load_before),
        "load_after": list(load_after),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"
        },
        "target_ratio": TARGET,
        "rows": rows,
        "eval_batches": eval_rows,
    }
    print()
    print(format_table(rows))
    if eval_rows:
        print()
        print(format_eval_table(eval_rows))
    print(
        f"\n1/5/15-min load after: {' '.join(f'{v:.2f}' for v in load_after)}; rows below the "
        f"{TARGET:.0%} target: "
        + (", ".join(f"{r['model']} {r['precision']}" for r in rows if not r["meets_target"])
           or "none")
    )  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    return result


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    main()
