"""Wiring of the saliency pipeline (see README.md in this folder).

``create_saliency_template`` is one variant's saliency (un-namespaced: input ``model``, its
name from ``params:variant``): the maps of every planned method for that model (the
study's ``STUDY_HEATMAPS`` pairs by default, or the methods in ``saliency.methods``), the
sanity check and overlays. ``create_pipeline`` instantiates it once per ``STUDY_MODELS``
name with the one recipe (``cxr_spurious.pipelines._recipe.per_variant``), then the
collectors: ``collect_heatmaps`` gathers every set into ``heatmap_collection``, keyed by
``heatmap_set_name(model, method)``. A variant whose model is ``SKIPPED`` (``training.only``
does not select it and it has no trained model) has no heatmaps, no sanity rows and no
overlays, and its sets are left out of the collection.
"""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines._recipe import bind, per_variant, variant_datasets
from cxr_spurious.pipelines.saliency import nodes
from cxr_spurious.variants import STUDY_MODELS

SHARED_INPUTS: frozenset[str] = frozenset({"image_cache", "manifest"})
P = "params:saliency"


def create_saliency_template() -> Pipeline:
    """One variant: heatmaps of every planned method, sanity check, overlay figures."""
    run_inputs = {
        "model_artifact": "model",
        "variant": "params:variant",
        "image_cache": "image_cache",
        "manifest": "manifest",
        "methods": f"{P}.methods",
        "tasks": f"{P}.tasks",
        "split": f"{P}.split",
        "seed": f"{P}.seed",
        "batch_size": f"{P}.batch_size",
        "device": f"{P}.device",
        "method_options": f"{P}.method_options",
    }
    return Pipeline(
        [
            Node(
                func=nodes.compute_heatmaps,
                inputs={**run_inputs, "max_images": f"{P}.max_images"},
                outputs="heatmaps",
                name="compute_heatmaps",
                tags=["saliency"],
            ),
            Node(
                func=nodes.check_saliency_sanity,
                inputs={
                    **run_inputs,
                    "enabled": f"{P}.sanity.enabled",
                    "n_images": f"{P}.sanity.n_images",
                    "n_boot": f"{P}.sanity.n_boot",
                    "max_dropped_share": f"{P}.sanity.max_dropped_share",
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
                    "n_images": f"{P}.overlays.n_images",
                    "seed": f"{P}.seed",
                },
                outputs="saliency_overlays",
                name="plot_heatmap_overlays",
                tags=["saliency", "reporting"],
            ),
        ]
    )


def create_pipeline(**kwargs: Any) -> Pipeline:
    """The template per study model (``STUDY_MODELS``), then the collectors and the export."""
    per_model = per_variant(create_saliency_template(), STUDY_MODELS, shared_inputs=SHARED_INPUTS)
    return Pipeline(
        [
            per_model,
            Node(
                func=bind(nodes.collect_heatmaps, variants=STUDY_MODELS),
                inputs=variant_datasets(STUDY_MODELS, "heatmaps"),
                outputs="heatmap_collection",
                name="collect_heatmaps",
                tags=["saliency"],
            ),
            Node(
                func=nodes.collect_saliency_sanity,
                inputs=variant_datasets(STUDY_MODELS, "saliency_sanity"),
                outputs="saliency_sanity",
                name="collect_saliency_sanity",
                tags=["saliency", "sanity", "reporting"],
            ),
            Node(
                func=nodes.export_chexlocalize,
                inputs={
                    "heatmap_collection": "heatmap_collection",
                    "image_cache": "image_cache",
                    "enabled": f"{P}.export.enabled",
                    "sets": f"{P}.export.sets",
                },
                outputs="chexlocalize_export",
                name="export_chexlocalize",
                tags=["saliency", "export"],
            ),
        ]
    )
