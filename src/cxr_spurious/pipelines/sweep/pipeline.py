"""Wiring of the ``sweep`` pipeline (README.md in this folder).

1. The sweep's data: the ingestion pipeline's phantom -> manifest -> image cache nodes in
   namespace ``sweep`` (``sweep.phantom_source``, ``sweep.manifest``, ``sweep.image_cache``;
   parameters ``sweep.ingestion.*``).
2. One namespace per grid cell (``Cell.namespace``, e.g.
   ``sweep_tube_random_strong_seg_f1p0_s0``), built with the one recipe (``per_variant``):
   ``plan_cell`` -> ``compose_cell`` -> the training template (its ``params:variant`` is
   ``params:sweep.training``, merged with the cell's block from ``plan_cell``; without
   ``predict_counterfactuals``: the sweep's renders come from ``predict_renders``) ->
   ``tag_run_record`` -> the saliency template's ``compute_heatmaps`` (parameters
   ``sweep.saliency.*``) -> ``predict_renders`` / ``attribute_saliency`` ->
   ``summarise_cell`` -> ``<cell>.sweep_row``.
3. Collectors: ``sweep_models``, ``sweep_summary`` / ``sweep_paired_differences``,
   ``shortcut_detection`` and the two figures.

The grid is read when the pipeline is built: from the ``sweep`` parameters that
``hooks.SweepParamsHook`` stashed for this session (``--params`` overrides included), else
from ``conf/base`` (kedro-viz, tests, a bare ``register_pipelines()``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kedro.pipeline import Node, Pipeline

from cxr_spurious.errors import ParameterError
from cxr_spurious.hooks import base_parameters, stashed_sweep_params
from cxr_spurious.pipelines._recipe import (
    bind,
    per_variant,
    template_parameters,
    variant_datasets,
)
from cxr_spurious.pipelines.ingestion.pipeline import create_pipeline as create_ingestion
from cxr_spurious.pipelines.saliency.pipeline import create_saliency_template
from cxr_spurious.pipelines.sweep import nodes
from cxr_spurious.pipelines.training.pipeline import create_training_template
from cxr_spurious.sweep.grid import Cell, expand_grid

logger = logging.getLogger(__name__)

NAMESPACE = "sweep"
DATA = ("sweep.manifest", "sweep.image_cache")
#: The training template's node the sweep leaves out (its renders come from predict_renders).
NOT_IN_CELL = frozenset({"predict_counterfactuals"})


def sweep_parameters() -> dict[str, Any]:
    """The ``sweep`` parameters: this session's (hook), else ``conf/base``'s."""
    stashed = stashed_sweep_params()
    if stashed is not None:
        return stashed
    return dict(base_parameters().get("sweep") or {})


def sweep_cells(params: Mapping[str, Any]) -> list[Cell]:
    """The grid's cells (``sweep.grid``, ``cxr_spurious.sweep.grid.expand_grid``)."""
    grid = params.get("grid")
    if not isinstance(grid, Mapping):
        raise ParameterError("sweep.grid", f"must be a mapping of the grid axes, got {grid!r}")
    return expand_grid(grid)


def create_data_pipeline() -> Pipeline:
    """The ingestion nodes up to the manifest and image cache, in namespace ``sweep``."""
    ingestion = create_ingestion().to_outputs("manifest", "image_cache")
    parameters = {
        p: p.replace("params:ingestion", "params:sweep.ingestion", 1)
        for p in template_parameters(ingestion)
    }
    return Pipeline(ingestion, namespace=NAMESPACE, parameters=parameters)


def create_cell_template(cell: Cell) -> Pipeline:
    """One cell's un-namespaced work (instantiated by ``per_variant`` under its namespace)."""
    training = create_training_template(overrides="plan")
    training = Pipeline([n for n in training.nodes if n.name not in NOT_IN_CELL])
    saliency = create_saliency_template()
    saliency = Pipeline([n for n in saliency.nodes if n.name == "compute_heatmaps"])
    saliency_params = {
        p: p.replace("params:saliency", "params:sweep.saliency", 1)
        for p in template_parameters(saliency)
        if p != "params:variant"
    }
    saliency = Pipeline(
        saliency,
        parameters={**saliency_params, "params:variant": "params:sweep.training"},
        inputs={"manifest": "test_manifest"},
    )
    # the template trains on the cell's manifest and predicts (and evaluates) the test split
    training = Pipeline(
        training,
        parameters={
            "params:variant": "params:sweep.training",
            "params:training": "params:training",
        },
        inputs={"resampled_manifest": "manifest", "manifest": "test_manifest"},
        outputs={"mlflow_run": "run_record"},
    )
    return Pipeline(
        [
            Node(
                bind(nodes.plan_cell, cell=cell),
                {
                    "previous_row": "previous_row",
                    "training": "params:training",
                    "sweep": "params:sweep",
                },
                "plan",
                name="plan_cell",
            ),
            Node(
                nodes.compose_cell,
                {
                    "manifest": "sweep.manifest",
                    "image_cache": "sweep.image_cache",
                    "plan": "plan",
                    "task": "params:sweep.task",
                    "test_p": "params:sweep.test_p",
                    "test_seed": "params:sweep.test_seed",
                },
                ["manifest", "test_manifest", "image_cache"],
                name="compose_cell",
            ),
            training,
            Node(nodes.tag_run_record, ["run_record", "plan"], "mlflow_run", name="tag_run_record"),
            saliency,
            Node(
                nodes.predict_renders,
                {
                    "model": "model",
                    "manifest": "sweep.manifest",
                    "image_cache": "sweep.image_cache",
                    "config": "config",
                    "plan": "plan",
                },
                "render_predictions",
                name="predict_renders",
            ),
            Node(
                nodes.attribute_saliency,
                {
                    "heatmaps": "heatmaps",
                    "cell_cache": "image_cache",
                    "image_cache": "sweep.image_cache",
                    "plan": "plan",
                    "task": "params:sweep.task",
                },
                "saliency_table",
                name="attribute_saliency",
            ),
            Node(
                nodes.summarise_cell,
                {
                    "render_predictions": "render_predictions",
                    "saliency": "saliency_table",
                    "manifest": "test_manifest",
                    "plan": "plan",
                    "task": "params:sweep.task",
                    "metrics": "params:sweep.metrics",
                },
                "sweep_row",
                name="summarise_cell",
            ),
        ]
    )


def create_collectors(names: list[str]) -> Pipeline:
    """The un-namespaced collectors over every cell's row."""
    return Pipeline(
        [
            Node(
                nodes.collect_sweep_models,
                # every cell's row, then its plan (a row of another config hash is stale)
                variant_datasets(names, "sweep_row") + variant_datasets(names, "plan"),
                "sweep_models",
                name="collect_sweep_models",
            ),
            Node(
                nodes.summarise_sweep,
                ["sweep_models", "params:sweep.summary"],
                ["sweep_summary", "sweep_paired_differences"],
                name="summarise_sweep",
            ),
            Node(
                nodes.detect_shortcuts,
                ["sweep_models", "params:sweep.detection"],
                "shortcut_detection",
                name="detect_shortcuts",
            ),
            Node(
                nodes.plot_sweep_strength,
                ["sweep_summary", "params:sweep.summary"],
                "sweep_strength_figure",
                name="plot_sweep_strength",
            ),
            Node(
                nodes.plot_sweep_detection,
                ["shortcut_detection", "params:sweep.detection"],
                "sweep_detection_figure",
                name="plot_sweep_detection",
            ),
            Node(
                nodes.write_sweep_tables,
                [
                    "sweep_summary",
                    "sweep_paired_differences",
                    "shortcut_detection",
                    "params:sweep.tables",
                    "params:sweep.summary",
                    "params:sweep.detection",
                    "params:sweep.grid",
                ],
                "sweep_tables",
                name="write_sweep_tables",
            ),
        ]
    )


def create_pipeline(**kwargs: Any) -> Pipeline:
    """The sweep's data, one namespace per cell of ``sweep.grid``, and the collectors."""
    cells = sweep_cells(sweep_parameters())
    per_cell = sum(
        (
            per_variant(create_cell_template(cell), [cell.namespace], shared_inputs=DATA)
            for cell in cells
        ),
        start=Pipeline([]),
    )
    names = [cell.namespace for cell in cells]
    logger.debug("sweep: %d cells", len(names))
    return create_data_pipeline() + per_cell + create_collectors(names)
