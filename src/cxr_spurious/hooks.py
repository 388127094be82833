"""Project hooks: per-stage wall time, logged at the end of every run.

A stage's time is its nodes' run time plus the time spent loading their inputs and saving
their outputs (saving is where the phantom is generated and the image cache is built).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Node

logger = logging.getLogger(__name__)

# Pipeline (stage) names, in study order; a node's stage is the first of its tags listed here.
STAGES: tuple[str, ...] = ("ingestion", "debiasing", "training", "saliency", "localization", "regression", "robustness", "study", "comparison")


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
        self._stop(node.name, node)

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
        parts = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in sorted(self._totals.items(), key=lambda kv: _order(kv[0])))
        logger.info("Wall time by stage: %s; whole run %.0f s", parts, total)


def stage_of(node: Node) -> str:
    """The stage a node belongs to (its first tag that names a pipeline), else 'other'."""
    for stage in STAGES:
        if stage in node.tags:
            return stage
    return "other"


def _order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)
