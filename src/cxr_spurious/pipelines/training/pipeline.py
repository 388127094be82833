"""Wiring of the ``training`` pipeline.

``create_training_template`` is one variant's pipeline (un-namespaced); ``create_pipeline``
instantiates it once per ``STUDY_MODELS`` name with the one recipe
(``cxr_spurious.pipelines._recipe.per_variant``): namespace = variant name, the shared
inputs keep their names, ``params:variant`` is the variant's block ``training.variants.<name>``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines._recipe import per_variant
from cxr_spurious.pipelines.training import nodes
from cxr_spurious.variants import STUDY_MODELS

SHARED_INPUTS: frozenset[str] = frozenset({"manifest", "resampled_manifest", "image_cache"})


def create_training_template(*, overrides: str | None = None) -> Pipeline:
    """One variant: config gate -> table -> fit -> predictions, metrics, curves, MLflow record.

    Args:
        overrides: Name of a dataset made upstream (in the same namespace) whose
            ``{"variant": {...}, "skip": bool}`` is merged over ``params:variant`` and the
            ``training.only`` gate (the sweep's cells, ``pipelines/sweep``); None (the
            study): the variant block alone.
    """
    config_inputs = ["params:training", "params:variant", *([overrides] if overrides else [])]
    return Pipeline(
        [
            Node(
                func=nodes.resolve_config,
                inputs=config_inputs,
                outputs="config",
                name="resolve_config",
                tags=["training", "config"],
            ),
            Node(
                func=nodes.prepare_training_table,
                inputs=["resampled_manifest", "image_cache", "config"],
                outputs="training_table",
                name="prepare_training_table",
                tags=["training", "data"],
            ),
            Node(
                func=nodes.train_model,
                inputs=["training_table", "image_cache", "config"],
                outputs=["model", "training_history"],
                name="train_model",
                tags=["training", "fit"],
            ),
            Node(
                func=nodes.predict_manifest,
                inputs=["model", "manifest", "image_cache", "config"],
                outputs=["predictions", "embeddings"],
                name="predict_manifest",
                tags=["training", "predict"],
            ),
            Node(
                func=nodes.predict_counterfactuals,
                inputs=["model", "manifest", "image_cache", "config"],
                outputs="counterfactual_predictions",
                name="predict_counterfactuals",
                tags=["training", "predict"],
            ),
            Node(
                func=nodes.evaluate_test_metrics,
                inputs=["predictions", "manifest", "config", "model"],
                outputs="test_metrics",
                name="evaluate_test_metrics",
                tags=["training", "evaluate"],
            ),
            Node(
                func=nodes.plot_training_curves,
                inputs=["training_history", "config"],
                outputs="training_curves",
                name="plot_training_curves",
                tags=["training", "reporting"],
            ),
            Node(
                func=nodes.assemble_run_record,
                inputs=[
                    "config",
                    "training_table",
                    "training_history",
                    "test_metrics",
                    "model",
                    "image_cache",  # checks an older model file's training data digest
                ],
                outputs="mlflow_run",
                name="assemble_run_record",
                tags=["training", "reporting"],
            ),
        ]
    )


def create_pipeline(**kwargs: object) -> Pipeline:
    """The template once per study variant (``kedro run --namespaces seg`` runs one)."""
    return per_variant(create_training_template(), STUDY_MODELS, shared_inputs=SHARED_INPUTS)
