"""Wiring of the ``training`` pipeline.

``create_training_template`` is one variant's pipeline (un-namespaced); ``create_pipeline``
instantiates it once per ``STUDY_MODELS`` name, namespace = variant name, mapping the
shared inputs and the variant's parameter block ``training.variants.<name>``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines.training import nodes
from cxr_spurious.variants import STUDY_MODELS

SHARED_INPUTS: frozenset[str] = frozenset({"manifest", "resampled_manifest", "image_cache"})


def create_training_template() -> Pipeline:
    """One variant: config gate -> table -> fit -> predictions, metrics, curves, MLflow record."""
    return Pipeline(
        [
            Node(
                func=nodes.resolve_config,
                inputs=["params:training", "params:variant"],
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
                inputs=["predictions", "manifest", "config"],
                outputs="test_metrics",
                name="evaluate_test_metrics",
                tags=["training", "evaluate"],
            ),
            Node(
                func=nodes.plot_training_curves,
                inputs=["training_history", "config"],
                outputs="training_curves",
                name="plot_training_curves",
                tags=["training", "report"],
            ),
            Node(
                func=nodes.assemble_run_record,
                inputs=[
                    "config",
                    "training_table",
                    "training_history",
                    "test_metrics",
                    "model",
                ],
                outputs="mlflow_run",
                name="assemble_run_record",
                tags=["training", "report"],
            ),
        ]
    )


def create_pipeline(**kwargs: object) -> Pipeline:
    """The template once per study variant (``kedro run --namespaces seg`` runs one)."""
    template = create_training_template()
    return sum(
        (
            Pipeline(
                template,
                namespace=name,
                inputs=set(SHARED_INPUTS),
                parameters={
                    "params:training": "params:training",
                    "params:variant": f"params:training.variants.{name}",
                },
            )
            for name in STUDY_MODELS
        ),
        start=Pipeline([]),
    )
