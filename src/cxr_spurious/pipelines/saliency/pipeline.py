"""Wiring of the saliency pipeline (see README.md in this folder).

One namespaced sub-pipeline per study model (namespace = the variant name, so its model
input is ``<variant>.model``) computes the maps of every planned method for that model:
the study's ``STUDY_HEATMAPS`` pairs by default, or the methods in ``saliency.methods``.
``collect_heatmaps`` gathers all sets into ``heatmap_collection``, keyed by
``heatmap_namespace(model, method)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines.saliency import nodes
from cxr_spurious.variants import STUDY_MODELS

_SHARED_INPUTS = {"image_cache", "manifest"}
_PARAMETERS = {
    "params:saliency.methods",
    "params:saliency.tasks",
    "params:saliency.split",
    "params:saliency.max_images",
    "params:saliency.seed",
    "params:saliency.batch_size",
    "params:saliency.device",
    "params:saliency.method_options",
    "params:saliency.sanity.enabled",
    "params:saliency.sanity.n_images",
    "params:saliency.sanity.n_boot",
    "params:saliency.sanity.max_dropped_share",
    "params:saliency.overlays.n_images",
}


def _for_model(func: Callable[..., Any], model_name: str) -> Callable[..., Any]:
    """``func`` with its ``model_name`` keyword bound (keeps the name for Kedro)."""
    return functools.update_wrapper(functools.partial(func, model_name=model_name), func)


def _model_pipeline(model_name: str) -> Pipeline:
    run_inputs = {
        "model_artifact": "model",
        "image_cache": "image_cache",
        "manifest": "manifest",
        "methods": "params:saliency.methods",
        "tasks": "params:saliency.tasks",
        "split": "params:saliency.split",
        "seed": "params:saliency.seed",
        "batch_size": "params:saliency.batch_size",
        "device": "params:saliency.device",
        "method_options": "params:saliency.method_options",
    }
    return Pipeline(
        [
            Node(
                func=_for_model(nodes.compute_model_heatmaps, model_name),
                inputs={**run_inputs, "max_images": "params:saliency.max_images"},
                outputs="heatmaps",
                name="compute_heatmaps",
                tags=["saliency"],
            ),
            Node(
                func=_for_model(nodes.check_model_saliency, model_name),
                inputs={
                    **run_inputs,
                    "enabled": "params:saliency.sanity.enabled",
                    "n_images": "params:saliency.sanity.n_images",
                    "n_boot": "params:saliency.sanity.n_boot",
                    "max_dropped_share": "params:saliency.sanity.max_dropped_share",
                },
                outputs="saliency_sanity",
                name="check_saliency_sanity",
                tags=["saliency", "sanity"],
            ),
            Node(
                func=nodes.plot_heatmap_overlays,
                inputs={
                    "heatmaps": "heatmaps",
                    "image_cache": "image_cache",
                    "n_images": "params:saliency.overlays.n_images",
                    "seed": "params:saliency.seed",
                },
                outputs="saliency_overlays",
                name="plot_heatmap_overlays",
                tags=["saliency", "reporting"],
            ),
        ],
        namespace=model_name,
        inputs=_SHARED_INPUTS,
        parameters=_PARAMETERS,
    )


def create_pipeline(**kwargs: Any) -> Pipeline:
    """Create the saliency pipeline for the study's models (``STUDY_MODELS``)."""
    per_model = [_model_pipeline(m) for m in STUDY_MODELS]
    return Pipeline(
        [
            *per_model,
            Node(
                func=nodes.collect_heatmaps,
                inputs=[f"{m}.heatmaps" for m in STUDY_MODELS],
                outputs="heatmap_collection",
                name="collect_heatmaps",
                tags=["saliency"],
            ),
            Node(
                func=nodes.collect_saliency_sanity,
                inputs=[f"{m}.saliency_sanity" for m in STUDY_MODELS],
                outputs="saliency_sanity",
                name="collect_saliency_sanity",
                tags=["saliency", "sanity", "reporting"],
            ),
            Node(
                func=nodes.export_chexlocalize,
                inputs={
                    "heatmap_collection": "heatmap_collection",
                    "image_cache": "image_cache",
                    "enabled": "params:saliency.export.enabled",
                    "sets": "params:saliency.export.sets",
                },
                outputs="chexlocalize_export",
                name="export_chexlocalize",
                tags=["saliency", "export"],
            ),
        ]
    )
