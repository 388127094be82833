"""Study pipeline wiring: one namespaced summary per model, then the findings table."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines.study import nodes
from cxr_spurious.variants import STUDY_MODELS

SHARED = {"manifest": "manifest", "localization_per_cxr": "localization_per_cxr", "localization_human_benchmark": "localization_human_benchmark"}


def create_model_template() -> Pipeline:
    """One model's row of ``study_findings``."""
    return Pipeline(
        [
            Node(
                func=nodes.summarise_model,
                inputs={
                    "test_metrics": "test_metrics",
                    "counterfactual_predictions": "counterfactual_predictions",
                    "manifest": "manifest",
                    "localization_per_cxr": "localization_per_cxr",
                    "human_benchmark": "localization_human_benchmark",
                    "variant": "params:variant",
                    "task": "params:study.task",
                    "n_boot": "params:study.n_boot",
                    "seed": "params:study.seed",
                    "max_dropped_share": "params:study.max_dropped_share",
                },
                outputs="findings_row",
                name="summarise_findings",
            )
        ]
    )


def create_pipeline(**kwargs: object) -> Pipeline:
    """Per-model summaries (namespaced) and the compiled findings."""
    template = create_model_template()
    per_model = [
        Pipeline(
            template,
            namespace=name,
            inputs=SHARED,
            parameters={"params:variant": f"params:training.variants.{name}", "params:study.task": "params:study.task", "params:study.n_boot": "params:study.n_boot", "params:study.seed": "params:study.seed", "params:study.max_dropped_share": "params:study.max_dropped_share"},
        )
        for name in STUDY_MODELS
    ]
    compile_node = Pipeline(
        [
            Node(
                func=nodes.compile_findings,
                inputs=[f"{name}.findings_row" for name in STUDY_MODELS],
                outputs=["study_findings", "study_findings_metrics", "study_findings_figure"],
                name="compile_findings",
            )
        ]
    )
    return Pipeline([*per_model, compile_node], tags=["study"])
