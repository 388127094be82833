"""DistributedDataParallel entry point: the training pipeline of one variant, N processes.

Run from the project root (one process per GPU, or CPU processes with gloo)::

    torchrun --nproc_per_node 2 -m cxr_spurious.training.distributed --variant seg \
        [--env local] [--params "training.epochs=20,training.batch_size=64"]

Every process bootstraps the Kedro project with the same configuration and takes the
registered ``training`` pipeline's nodes of namespace ``--variant`` (the training template,
see ``cxr_spurious.pipelines.training``). The node tagged ``fit`` (``train_model``) trains
under DDP on every rank: ``fit`` sees the process group through ``distributed_setup`` and
splits the global batch ``training.batch_size`` evenly across processes, so the optimiser
sees the same global batches as a single-process run. Rank 0 runs the whole variant
pipeline with Kedro's ``SequentialRunner`` (so every node of the template, present or
added later, runs, and every catalog output is written once, by rank 0); the other ranks
run only the fit node and the nodes it depends on, in memory, and save nothing. Rank 0
also writes the checkpoints; the MLflow run is a top-level run (no kedro-mlflow session
run is active). ``training.only`` is set to the variant, so the gate selects it.

What differs from one process: BatchNorm statistics are computed per process (on
``batch_size / N`` images; running statistics are synchronised from rank 0 after every
epoch), and losses that average over a batch-dependent count (the dense loss over maps
with location labels, NaN-masked labels) average per process first. Group DRO's group
weights are updated from all-reduced group losses (identical on every rank), and the
time-budget stop is rank 0's decision, broadcast. Since the results differ, the number of
processes is part of the checkpoint fingerprint: a checkpoint of N processes resumes only
under N processes.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.distributed as dist

from cxr_spurious.errors import ParameterError
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.training.device import DeviceSetup, setup_for
from cxr_spurious.training.engine import FitResult, fit

if TYPE_CHECKING:
    from kedro.pipeline import Pipeline

logger = logging.getLogger(__name__)

FIT_TAG = "fit"  # the training template's node that trains (every rank runs it under DDP)


def parse_params(text: str | None) -> dict[str, Any]:
    """``--params`` (``a.b=1,c=[0,1]``) as ``kedro run`` reads them (``cli.params_from_text``):
    a nested dict, a comma inside brackets, braces or quotes kept in its value."""
    from cxr_spurious.cli import params_from_text

    try:
        return params_from_text(text or "")
    except ValueError as exc:
        raise SystemExit(f"--params: {exc}") from None


def process_group() -> tuple[int, int]:
    """``(rank, world)`` of the default process group; ``(0, 1)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


def distributed_setup(cfg: Mapping[str, Any]) -> tuple[DeviceSetup, int, int]:
    """Device settings, rank and world size of this process.

    With an initialised process group of N > 1 processes, CUDA runs use device
    ``LOCAL_RANK`` (set by torchrun); without one this is ``setup_for(cfg)``, rank 0 of 1.
    """
    rank, world = process_group()
    local_rank = int(os.environ.get("LOCAL_RANK", rank)) if world > 1 else None
    setup = setup_for(cfg, local_rank=local_rank)
    if setup.device.type == "cuda" and setup.device.index is not None:
        # set_device refuses an index-less device: a bare ``cuda`` in one process already
        # means the current device (every run on a GPU machine used to stop here)
        torch.cuda.set_device(setup.device)
    return setup, rank, world


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
    setup, group_rank, group_world = distributed_setup(cfg)
    if (group_rank, group_world) != (rank, world):
        raise ParameterError(
            "rank/world",
            f"got rank {rank} of {world}, "
            f"but the process group is rank {group_rank} of {group_world}",
        )
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


def variant_pipeline(training: Pipeline, variant: str) -> Pipeline:
    """The nodes of namespace ``variant`` of the registered ``training`` pipeline.

    Raises:
        SystemExit: no node has that namespace (the message lists the valid ones).
    """
    namespaces = sorted({str(n.namespace) for n in training.nodes if n.namespace})
    if variant not in namespaces:
        raise SystemExit(
            f"--variant '{variant}': the training pipeline has no such namespace; "
            f"valid: {namespaces}"
        )
    return training.only_nodes_with_namespaces([variant])


def split_for_ranks(pipeline: Pipeline) -> tuple[Pipeline, Pipeline]:
    """What rank 0 runs (all of ``pipeline``) and what the other ranks run.

    The other ranks run the node tagged ``fit`` and the nodes it depends on, nothing else.

    Raises:
        ParameterError: ``pipeline`` does not have exactly one node tagged ``fit``.
    """
    fits = [n.name for n in pipeline.nodes if FIT_TAG in n.tags]
    if len(fits) != 1:
        raise ParameterError(
            "training pipeline",
            f"expected exactly one node tagged '{FIT_TAG}' (the DDP training step), got {fits}",
        )
    return pipeline, pipeline.to_nodes(fits[0])


def run_in_memory(pipeline: Pipeline, catalog: Any) -> dict[str, Any]:
    """Run ``pipeline``'s nodes in order, loading free inputs from ``catalog``, saving nothing.

    Returns:
        Every node output by name.
    """
    data: dict[str, Any] = {}
    for node in pipeline.nodes:  # topologically sorted
        inputs = {name: data[name] if name in data else catalog.load(name) for name in node.inputs}
        data.update(node.run(inputs))
    return data


def run_variant(pipeline: Pipeline, catalog: Any, *, rank: int) -> None:
    """This rank's part of a DDP run of one variant's ``pipeline`` (see ``split_for_ranks``).

    Rank 0 runs the pipeline with Kedro's ``SequentialRunner`` on ``catalog`` (outputs are
    saved there, once); the other ranks compute the fit node and its inputs in memory.
    """
    from kedro.runner import SequentialRunner

    everything, fit_part = split_for_ranks(pipeline)
    if rank == 0:
        SequentialRunner().run(everything, catalog)
    else:
        run_in_memory(fit_part, catalog)


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

    from kedro.framework.project import LOGGING, pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from cxr_spurious.logging_filters import configure_rank_logging, configured_levels

    runtime_params = parse_params(args.params)
    training = runtime_params.setdefault("training", {})
    if not isinstance(training, dict):
        raise SystemExit(f"--params: 'training' must be a group of keys, got {training!r}")
    training["only"] = args.variant  # the gate selects the variant being trained

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    rank, _ = process_group()
    project = Path(args.project).resolve()
    log_file = None
    try:
        bootstrap_project(project)
        # Kedro applied conf/logging.yml (rich, INFO) in every process: every rank would print
        # every INFO line, wrapped at 80 columns off a terminal; plain lines naming the rank
        levels = configured_levels(LOGGING.data)
        console_filter, log_file = configure_rank_logging(project, rank, levels)
        if rank != 0:
            dist.barrier()  # rank 0 sets up first (kedro-mlflow creates the tracking store)
        with KedroSession.create(
            project_path=project, env=args.env, runtime_params=runtime_params
        ) as session:
            context = session.load_context()
            if rank == 0:
                dist.barrier()
            pipeline = variant_pipeline(pipelines["training"], args.variant)
            run_variant(pipeline, context.catalog, rank=rank)
        # No barrier here: the other ranks are done once fit returns (no collective
        # follows), and rank 0's predictions and MLflow logging may outlast a
        # collective's timeout (10 min for NCCL).
    finally:
        dist.destroy_process_group()
        if log_file is not None:
            summary = console_filter.summary(log_file)
            if summary:
                logger.info(summary)


if __name__ == "__main__":
    main()
