"""Project hooks: per-stage wall time, logged at the end of every run; and the sweep's
parameters handed to pipeline construction.

A stage's time is its nodes' run time plus the time spent loading their inputs and saving
their outputs (saving is where the phantom is generated and the image cache is built).

``SweepParamsHook`` stashes the ``sweep`` parameters (with ``--params`` overrides) when the
context is created, which Kedro does before the first access to the registered pipelines
(``KedroSession.run``: ``load_context()``, then ``pipelines[name]``), so that
``pipelines/sweep/pipeline.py`` can build one namespace per grid cell; it stashes every
parameter too (``stashed_parameters``), which the comparison reads for its seeds
(``pipelines/comparison/pipeline.py``). Without a session, ``base_parameters`` reads
``conf/base`` (kedro-viz, tests, a bare ``register_pipelines()``) of the Kedro project that
holds the current directory, else of the source checkout this package was imported from.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Node
from kedro.utils import find_kedro_project

logger = logging.getLogger(__name__)

# Pipeline (stage) names, in study order; a node's stage is the first of its tags listed here.
STAGES: tuple[str, ...] = (
    "ingestion",
    "debiasing",
    "training",
    "saliency",
    "localization",
    "regression",
    "robustness",
    "study",
    "comparison",
    "sweep",
    "report",
)

_SWEEP_PARAMS: dict[str, Any] | None = None
_PARAMS: dict[str, Any] | None = None
# ``conf`` beside ``src/`` when the package is imported from its source checkout (an
# editable install); an installed copy (site-packages) has none there.
SOURCE_CONF = Path(__file__).resolve().parents[2] / "conf"


def project_conf(start: Path | None = None) -> Path:
    """The ``conf`` folder for ``base_parameters``: that of the Kedro project holding
    ``start`` (default: the current directory), else ``SOURCE_CONF``.

    Raises:
        FileNotFoundError: neither has a ``base`` folder (the message names both places).
    """
    project = find_kedro_project(Path.cwd() if start is None else start)
    for conf in ([project / "conf"] if project is not None else []) + [SOURCE_CONF]:
        if (conf / "base").is_dir():
            return conf
    where = f"the Kedro project {project}" if project is not None else "no Kedro project"
    raise FileNotFoundError(
        f"no conf/base to read the parameters from: {where} holds the current directory, "
        f"and {SOURCE_CONF / 'base'} does not exist; run from the project's folder"
    )


def stashed_sweep_params() -> dict[str, Any] | None:
    """The ``sweep`` parameters of the current session's context (None before one exists)."""
    return None if _SWEEP_PARAMS is None else dict(_SWEEP_PARAMS)


def stashed_parameters() -> dict[str, Any] | None:
    """Every parameter of the current session's context (None before one exists)."""
    return None if _PARAMS is None else dict(_PARAMS)


def base_parameters() -> dict[str, Any]:
    """Every parameter of ``conf/base`` (pipeline construction without a session)."""
    loader = OmegaConfigLoader(str(project_conf()), base_env="base", default_run_env="base")
    return dict(loader["parameters"])


class SweepParamsHook:
    """Stash ``config_loader["parameters"]["sweep"]`` (runtime overrides included) at
    context creation; reading ``context.params`` here would load the pipelines first."""

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        global _SWEEP_PARAMS, _PARAMS
        _PARAMS = dict(context.config_loader["parameters"])
        sweep = _PARAMS.get("sweep")
        _SWEEP_PARAMS = dict(sweep) if isinstance(sweep, dict) else None


class StageTimingHooks:
    """Times every node and logs one line per stage with its wall time when the run ends."""

    def __init__(self) -> None:
        self._start: dict[str, float] = {}
        self._totals: dict[str, float] = defaultdict(float)
        self._run_start = 0.0

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._start.clear()
        self._totals.clear()
        self._run_start = time.perf_counter()

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        self._start[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        started = self._start.get(node.name)
        self._stop(node.name, node)
        if started is not None:  # the console's one line per node (logging_filters.py)
            seconds = time.perf_counter() - started
            logger.info("Node %s done in %.1f s (%s)", node.name, seconds, stage_of(node))

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node: Node) -> None:
        self._start[f"load:{dataset_name}:{node.name}"] = time.perf_counter()

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, node: Node) -> None:
        self._stop(f"load:{dataset_name}:{node.name}", node)

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, node: Node) -> None:
        self._start[f"save:{dataset_name}:{node.name}"] = time.perf_counter()

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Node) -> None:
        self._stop(f"save:{dataset_name}:{node.name}", node)

    def _stop(self, key: str, node: Node) -> None:
        started = self._start.pop(key, None)
        if started is not None:
            self._totals[stage_of(node)] += time.perf_counter() - started

    @hook_impl
    def after_pipeline_run(self) -> None:
        total = time.perf_counter() - self._run_start
        parts = ", ".join(
            f"{stage} {seconds:.0f} s"
            for stage, seconds in sorted(self._totals.items(), key=lambda kv: _order(kv[0]))
        )
        logger.info("Wall time by stage: %s; whole run %.0f s", parts, total)


def stage_of(node: Node) -> str:
    """The stage a node belongs to (its first tag that names a pipeline), else 'other'."""
    for stage in STAGES:
        if stage in node.tags:
            return stage
    return "other"


def _order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)
