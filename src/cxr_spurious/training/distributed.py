"""DistributedDataParallel entry point: the same training code, N processes.

Run from the project root (one process per GPU, or CPU processes with gloo)::

    torchrun --nproc_per_node 2 -m cxr_spurious.training.distributed --variant seg \
        [--env local] [--params "training.epochs=20,training.batch_size=64"]

Every process bootstraps the Kedro project, reads the same parameters and catalog,
loads ``resampled_manifest``, ``manifest`` and ``image_cache``, and trains with
``engine.fit`` under DDP; the global batch ``training.batch_size`` is split evenly across
processes, so the optimiser sees the same global batches as a single-process run. Rank 0
writes checkpoints and then saves the variant's outputs to the catalog (model, history,
predictions, embeddings, counterfactual predictions, test metrics, curves and the MLflow
run, a top-level run in the study experiment since no kedro-mlflow session is active).

What differs from one process: BatchNorm statistics are computed per process (on
``batch_size / N`` images; running statistics are synchronised from rank 0 after every
epoch), and losses that average over a batch-dependent count (the dense loss over maps
with location labels, NaN-masked labels) average per process first.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist

from cxr_spurious.data.cache import ImageCache
from cxr_spurious.training.config import model_config
from cxr_spurious.training.device import setup_for
from cxr_spurious.training.engine import FitResult, fit

logger = logging.getLogger(__name__)


def parse_params(text: str | None) -> dict[str, Any]:
    """Kedro-style ``--params`` (``a.b=1,c=x``) as a nested dict with YAML-typed values."""
    import yaml

    out: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--params: expected key=value, got '{item}'")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def distributed_fit(
    table: pd.DataFrame,
    cache: ImageCache,
    cfg: Mapping[str, Any],
    *,
    rank: int,
    world: int,
    checkpoint_dir: str | Path | None,
) -> FitResult:
    """``fit`` on this process's share (the process group must be initialised)."""
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    setup = setup_for(cfg, local_rank=local_rank)
    if setup.device.type == "cuda":
        torch.cuda.set_device(setup.device)
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    return fit(train, val, cache, cfg, setup, checkpoint_dir=checkpoint_dir, rank=rank, world=world)


def _spawned_worker(
    rank: int,
    world: int,
    init_file: str,
    out_file: str,
    table: pd.DataFrame,
    cache: ImageCache,
    cfg: dict[str, Any],
) -> None:
    """One process of ``spawn_fit`` (gloo over a shared file)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = distributed_fit(table, cache, cfg, rank=rank, world=world, checkpoint_dir=None)
        if rank == 0:
            torch.save(
                {
                    "state_dict": result.state_dict,
                    "history": result.history.to_dict("list"),
                    "best_epoch": result.best_epoch,
                    "stopped": result.stopped,
                },
                out_file,
            )
    finally:
        dist.destroy_process_group()


def spawn_fit(
    table: pd.DataFrame, cache: ImageCache, cfg: Mapping[str, Any], world: int
) -> FitResult:
    """Run ``distributed_fit`` in ``world`` local CPU processes (gloo) without torchrun.

    Meant for tests and quick checks of the DDP path; ``cfg['device']`` should be ``cpu``.

    Returns:
        Rank 0's result.
    """
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = str(Path(tmp) / "init"), str(Path(tmp) / "result.pt")
        mp.spawn(
            _spawned_worker,
            args=(world, init_file, out_file, table, cache, dict(cfg)),
            nprocs=world,
            join=True,
        )
        saved = torch.load(out_file, weights_only=True)
    return FitResult(
        saved["state_dict"],
        pd.DataFrame(saved["history"]),
        int(saved["best_epoch"]),
        str(saved["stopped"]),
    )


def _save_outputs(
    catalog: Any, variant: str, table: pd.DataFrame, cfg: dict[str, Any], result: FitResult
) -> None:
    """Rank 0: the variant's outputs, computed by the pipeline's own node functions."""
    from cxr_spurious.pipelines.training import nodes

    manifest = catalog.load("manifest")
    cache = catalog.load("image_cache")
    artifact = {"state_dict": result.state_dict, "config": model_config(cfg)}
    predictions, embeddings = nodes.predict_manifest(artifact, manifest, cache, cfg)
    metrics = nodes.evaluate_test_metrics(predictions, manifest, cfg)
    curves = nodes.plot_training_curves(result.history, cfg)
    outputs = {
        "model": artifact,
        "training_history": result.history,
        "predictions": predictions,
        "embeddings": embeddings,
        "counterfactual_predictions": nodes.predict_counterfactuals(artifact, manifest, cache, cfg),
        "test_metrics": metrics,
        "training_curves": curves,
        "mlflow_run": nodes.assemble_run_record(
            cfg, table, result.history, metrics, curves, artifact
        ),
    }
    for name, data in outputs.items():
        catalog.save(f"{variant}.{name}", data)
        logger.info("saved %s.%s", variant, name)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``torchrun ... -m cxr_spurious.training.distributed``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", required=True, help="variant (namespace) to train, e.g. seg")
    parser.add_argument("--env", default=None, help="Kedro configuration environment")
    parser.add_argument(
        "--params", default=None, help='Kedro-style overrides, e.g. "training.epochs=3"'
    )
    parser.add_argument(
        "--project", default=".", help="Kedro project root (default: current folder)"
    )
    args = parser.parse_args(argv)

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from cxr_spurious.pipelines.training import nodes
    from cxr_spurious.training.checkpoints import checkpoint_folder
    from cxr_spurious.training.data import build_training_table

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING)
    try:
        project = Path(args.project).resolve()
        bootstrap_project(project)
        with KedroSession.create(
            project_path=project, env=args.env, runtime_params=parse_params(args.params)
        ) as session:
            context = session.load_context()
            training = context.params["training"]
            if args.variant not in training.get("variants", {}):
                raise SystemExit(
                    f"--variant '{args.variant}' is not in training.variants ({sorted(training.get('variants', {}))})"
                )
            cfg = nodes.resolve_config(
                {**training, "method": None}, training["variants"][args.variant]
            )
            catalog = context.catalog
            cache = catalog.load("image_cache")
            table = build_training_table(catalog.load("resampled_manifest"), cache, cfg)
            result = distributed_fit(
                table,
                cache,
                cfg,
                rank=rank,
                world=world,
                checkpoint_dir=checkpoint_folder(cfg["checkpoint_dir"], cfg["variant"]),
            )
            if rank == 0:
                _save_outputs(catalog, args.variant, table, cfg, result)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
