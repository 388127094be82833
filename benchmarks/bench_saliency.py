"""Saliency benchmark: the project's path against a plain loop over the libraries.

Usage:
    python benchmarks/bench_saliency.py [--methods gradcam integrated_gradients]
        [--sizes 96 64] [--images 128] [--batch 32] [--tasks 1] [--base-channels 16]
        [--ig-steps 16] [--repeats 5] [--threads N] [--json FILE] [--library-channels-last]
        [--library-frozen]

Both sides explain the same model (``unet_small`` at the study's width, random weights
seeded per size, fp32, eval mode, on the CPU) on the same images (random uint8 at
``--sizes``: 96 px is the study's cache size, 64 px the sweep's), in the same batches
(``--batch``, the study's ``saliency.batch_size``), with the same settings (IG steps,
zero baseline, one target logit per task), in this process and interleaved
(library, project, library, project, ... ``--repeats`` times per row, after one untimed
round of each), so a shared, noisy machine slows both alike; the rate of a row is the
median over its repeats.

- **project**: ``cxr_spurious.saliency.compute.compute_maps`` (the registry's method, as
  the saliency pipeline calls it in-process): uint8 -> float input, fp32 with autocast off,
  the method opened once per call, maps post-processed (CAM: as the library returns them;
  gradient methods: ``|a|`` summed over channels, divided by the per-map maximum), float16
  storage and the probabilities ``sigmoid(logit)`` of every image; on a copy of the model
  in channels_last (the layout the project's training and predictions also use on the
  CPU). ``--library-channels-last`` adds a third side, the library loop below on a
  channels_last copy of the model and batches, to show how much of a difference is the
  layout. ``--library-frozen`` adds another, the library loop on a copy of the model whose
  parameters outside ``model.cam_layer`` do not require gradients, as the project's CAM
  path sets them (``saliency.registry._cam_gradients_only``): the library's backward pass
  then stops at that layer instead of computing every weight's gradient. That is what
  separates the two Grad-CAM rates; Captum's ``attribute`` asks autograd for the input's
  gradient only, so for integrated gradients the frozen copy changes nothing.
- **library**: what a user would write with the library alone, on float batches already
  in memory: ``pytorch_grad_cam.GradCAM(model, [model.cam_layer])`` built once and called
  per batch and task with ``ClassifierOutputTarget(task)``; Captum's
  ``IntegratedGradients(model).attribute(x, baselines=0, target=task, n_steps=steps,
  internal_batch_size=batch * steps)`` per batch and task, ``.abs().sum(1)`` to numpy.
  No probabilities, no storage.

The library baselines of the other registered methods (not measured here) would be the
same pattern: ``GradCAMPlusPlus`` / ``EigenCAM`` / ``LayerCAM`` for the other CAM methods;
Captum's ``DeepLift``, ``Occlusion``, ``Saliency`` and ``NoiseTunnel(Saliency)`` for
``deeplift``, ``occlusion``, ``saliency`` and ``smoothgrad``; ``seg_prob`` has no library
(``sigmoid(model.dense_logits(x))``).

Each row also says whether the two sides' maps agree: the library's maps, put through the
project's post-processing (float16; per-map max scaling for IG), against the project's.

Prints one row per method and size: project maps/s, library maps/s (a map = one image and
task), their ratio (the issue's target is >= 1.0) and the largest map difference.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_spurious.models import build_model
from cxr_spurious.saliency.compute import compute_maps
from cxr_spurious.saliency.registry import MethodOptions

METHODS: tuple[str, ...] = ("gradcam", "integrated_gradients")
TASK_NAMES: tuple[str, ...] = ("Pneumothorax", "Lung Lesion", "Edema", "Cardiomegaly")
TARGET_RATIO = 1.0


def make_model(size: int, n_tasks: int, base_channels: int, seed: int = 0) -> nn.Module:
    """``unet_small`` with ``n_tasks`` tasks, seeded random weights, eval mode, fp32."""
    torch.manual_seed(seed + size)
    config = {
        "architecture": "unet_small",
        "tasks": list(TASK_NAMES[:n_tasks]),
        "base_channels": int(base_channels),
    }
    return build_model(config).float().eval()


def make_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size) random uint8 images."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def library_runner(
    method: str, model: nn.Module, n_tasks: int, ig_steps: int
) -> Callable[[list[torch.Tensor]], np.ndarray]:
    """A plain library loop over float batches: returns the maps (N, T, h, w) float32."""
    if method == "gradcam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = GradCAM(model=model, target_layers=[model.cam_layer])

        def run_cam(batches: list[torch.Tensor]) -> np.ndarray:
            out = []
            for x in batches:
                per_task = [
                    cam(input_tensor=x, targets=[ClassifierOutputTarget(t)] * len(x))
                    for t in range(n_tasks)
                ]
                out.append(np.stack(per_task, axis=1))
            return np.concatenate(out)

        return run_cam
    if method == "integrated_gradients":
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(model)

        def run_ig(batches: list[torch.Tensor]) -> np.ndarray:
            out = []
            for x in batches:
                per_task = [
                    ig.attribute(
                        x,
                        baselines=torch.zeros_like(x),
                        target=t,
                        n_steps=ig_steps,
                        internal_batch_size=len(x) * ig_steps,
                    )
                    .abs()
                    .sum(dim=1)
                    .detach()
                    .numpy()
                    for t in range(n_tasks)
                ]
                out.append(np.stack(per_task, axis=1))
            return np.concatenate(out)

        return run_ig
    raise SystemExit(f"unknown method {method!r}; this benchmark measures {list(METHODS)}")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters outside ``model.cam_layer`` need no gradient."""
    copy_ = copy.deepcopy(model)
    own = {id(p) for p in copy_.cam_layer.parameters()}
    for p in copy_.parameters():
        p.requires_grad_(id(p) in own)
    return copy_


def as_project_maps(method: str, maps: np.ndarray) -> np.ndarray:
    """The library's maps put through the project's post-processing (for the comparison)."""
    if method == "integrated_gradients":
        flat = maps.reshape(*maps.shape[:2], -1).max(axis=2)
        peak = np.where(flat > 0, flat, 1.0)
        maps = (maps / peak[..., None, None]).astype(np.float32)
    return maps.astype(np.float16)


def bench_row(
    method: str,
    size: int,
    *,
    n_images: int,
    batch: int,
    n_tasks: int,
    base_channels: int,
    ig_steps: int,
    repeats: int,
    library_channels_last: bool = False,
    library_frozen: bool = False,
) -> dict[str, Any]:
    """Interleaved timings of one method at one size; rates are maps (image x task) / s.

    With ``library_channels_last`` a third side runs the library loop on a copy of the
    model and batches in channels_last, the layout the project's path uses on the CPU.
    With ``library_frozen`` another runs it on ``frozen_copy(model)``; its maps are
    compared with the project's too (``max_map_diff_frozen``).
    """
    model = make_model(size, n_tasks, base_channels)
    images = make_images(n_images, size)
    tasks = list(model.tasks)
    options = MethodOptions(ig_steps=ig_steps)
    batches = [
        torch.from_numpy(images[i : i + batch]).float().div(255.0)[:, None]
        for i in range(0, n_images, batch)
    ]
    library = library_runner(method, model, n_tasks, ig_steps)
    sides: dict[str, Callable[[], Any]] = {"library": lambda: library(batches)}
    if library_channels_last:
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        batches_cl = [x.contiguous(memory_format=torch.channels_last) for x in batches]
        library_cl = library_runner(method, model_cl, n_tasks, ig_steps)
        sides["library_cl"] = lambda: library_cl(batches_cl)
    if library_frozen:
        library_fz = library_runner(method, frozen_copy(model), n_tasks, ig_steps)
        sides["library_frozen"] = lambda: library_fz(batches)

    def project() -> np.ndarray:
        return compute_maps(
            model, images, method, tasks, batch_size=batch, device="cpu",
            options=options, progress=False,
        )[0]  # fmt: skip

    lib_maps, proj_maps = library(batches), project()  # untimed: warm-up, and the comparison
    diff = float(np.abs(as_project_maps(method, lib_maps).astype(np.float32) - proj_maps).max())
    frozen_maps = [run() for side, run in sides.items() if side == "library_frozen"]
    for side, run in list(sides.items())[1:]:
        if side != "library_frozen":
            run()  # untimed warm-up of the other sides
    sides["project"] = project
    rounds = []
    n_maps = n_images * n_tasks
    for _ in range(repeats):
        timing = {}
        for side, run in sides.items():
            start = time.perf_counter()
            run()
            timing[side] = time.perf_counter() - start
        rounds.append(timing)
    rates = {side: statistics.median(n_maps / r[side] for r in rounds) for side in sides}
    row = {
        "method": method,
        "size": size,
        "images": n_images,
        "tasks": n_tasks,
        "batch": batch,
        "project_maps_s": rates["project"],
        "library_maps_s": rates["library"],
        "ratio": rates["project"] / rates["library"],
        "max_map_diff": diff,
        "rounds": rounds,
    }
    if library_channels_last:
        row["library_cl_maps_s"] = rates["library_cl"]
        row["ratio_cl"] = rates["project"] / rates["library_cl"]
    if library_frozen:
        row["library_frozen_maps_s"] = rates["library_frozen"]
        row["ratio_frozen"] = rates["project"] / rates["library_frozen"]
        frozen = as_project_maps(method, frozen_maps[0]).astype(np.float32)
        row["max_map_diff_frozen"] = float(np.abs(frozen - proj_maps).max())
    return row


def run_benchmark(
    *,
    methods: Sequence[str] = METHODS,
    sizes: Sequence[int] = (96, 64),
    n_images: int = 128,
    batch: int = 64,
    n_tasks: int = 1,
    base_channels: int = 16,
    ig_steps: int = 16,
    repeats: int = 5,
    library_channels_last: bool = False,
    library_frozen: bool = False,
) -> dict[str, Any]:
    """Every (method, size) row; the result that ``--json`` writes."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; this benchmark measures {list(METHODS)}")
    rows = [
        bench_row(
            method, int(size), n_images=n_images, batch=batch, n_tasks=n_tasks,
            base_channels=base_channels, ig_steps=ig_steps, repeats=repeats,
            library_channels_last=library_channels_last, library_frozen=library_frozen,
        )
        for size in sizes
        for method in methods
    ]  # fmt: skip
    for row in rows:
        row["meets_target"] = row["ratio"] >= TARGET_RATIO
    return {
        "rows": rows,
        "target_ratio": TARGET_RATIO,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "images": n_images,
            "batch": batch,
            "tasks": n_tasks,
            "base_channels": base_channels,
            "ig_steps": ig_steps,
            "repeats": repeats,
        },  # fmt: skip
    }


def format_table(result: dict[str, Any]) -> str:
    """A markdown table: one row per method and size."""
    with_cl = any("library_cl_maps_s" in r for r in result["rows"])
    with_fz = any("library_frozen_maps_s" in r for r in result["rows"])
    extra = " library channels_last maps/s | ratio to it |" if with_cl else ""
    extra += " library frozen maps/s | ratio to it | max map diff to it |" if with_fz else ""
    lines = [
        "| method | size | project maps/s | library maps/s | ratio | max map diff |" + extra,
        "|---|---|---|---|---|---|" + ("---|---|" if with_cl else "") + ("---|---|---|" * with_fz),
    ]
    for r in result["rows"]:
        cells = (
            f" {r['library_cl_maps_s']:.1f} | {r['ratio_cl']:.2f} |"
            if "library_cl_maps_s" in r
            else (" - | - |" if with_cl else "")
        )
        if with_fz:
            cells += (
                f" {r['library_frozen_maps_s']:.1f} | {r['ratio_frozen']:.2f} |"
                f" {r['max_map_diff_frozen']:.3g} |"
            )
        lines.append(
            f"| {r['method']} | {r['size']} | {r['project_maps_s']:.1f} | "
            f"{r['library_maps_s']:.1f} | {r['ratio']:.2f} | {r['max_map_diff']:.3g} |" + cells
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[96, 64])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=1, choices=range(1, len(TASK_NAMES) + 1))
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--library-channels-last",
        action="store_true",
        help="also time the library loop on a channels_last copy of the model and batches",
    )
    parser.add_argument(
        "--library-frozen",
        action="store_true",
        help="also time the library loop on a copy of the model with every parameter outside "
        "the CAM layer frozen, as the project's CAM path sets them",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_benchmark(
        methods=args.methods, sizes=args.sizes, n_images=args.images, batch=args.batch,
        n_tasks=args.tasks, base_channels=args.base_channels, ig_steps=args.ig_steps,
        repeats=args.repeats, library_channels_last=args.library_channels_last,
        library_frozen=args.library_frozen,
    )  # fmt: skip
    print(
        f"saliency benchmark: unet_small fp32 on {result['cpu']}, {result['threads']} "
        f"torch thread(s), pid {os.getpid()}; median of {args.repeats} interleaved repeats"
    )
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
