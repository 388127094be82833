"""Study pipeline wiring: one findings row per model, then the findings table.

``create_study_template`` is one model's row (un-namespaced: inputs ``test_metrics``,
``counterfactual_predictions`` and the shared localization tables, its block from
``params:variant``). ``create_pipeline`` instantiates it per ``STUDY_MODELS`` name with the
one recipe (``cxr_spurious.pipelines._recipe.per_variant``), with ``group="study"``: each row
reads ``localization_per_cxr``, which the localization collector computes from every
model's heatmaps, so the row's node lives in namespace ``study.<model>`` (datasets stay
``<model>.test_metrics`` -> ``<model>.findings_row``) instead of interrupting namespace
``<model>``. ``compile_findings`` collects the rows.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines._recipe import per_variant, variant_datasets
from cxr_spurious.pipelines.study import nodes
from cxr_spurious.variants import STUDY_MODELS

SHARED_INPUTS: frozenset[str] = frozenset(
    {"manifest", "localization_per_cxr", "localization_human_benchmark"}
)
GROUP = "study"


def create_study_template() -> Pipeline:
    """One model's row of ``study_findings``."""
    return Pipeline(
        [
            Node(
                func=nodes.summarise_findings,
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
                    "ci_level": "params:study.ci_level",
                    "training_ci_level": "params:training.ci_level",
                    "training_n_boot": "params:training.n_boot",
                },
                outputs="findings_row",
                name="summarise_findings",
            )
        ]
    )


def create_pipeline(**kwargs: object) -> Pipeline:
    """Per-model rows (namespace ``study.<model>``) and the compiled findings."""
    per_model = per_variant(
        create_study_template(), STUDY_MODELS, shared_inputs=SHARED_INPUTS, group=GROUP
    )
    compile_node = Node(
        func=nodes.compile_findings,
        inputs=variant_datasets(STUDY_MODELS, "findings_row"),
        outputs=["study_findings", "study_findings_metrics", "study_findings_figure"],
        name="compile_findings",
    )
    return Pipeline([per_model, compile_node], tags=["study"])
