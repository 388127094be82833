"""Wiring of the ``robustness`` pipeline.

``create_robustness_template`` evaluates one model (un-namespaced: inputs ``manifest``,
``image_cache``, ``predictions``, ``embeddings``); ``create_pipeline`` instantiates it per
``STUDY_MODELS`` name with the one recipe (``cxr_spurious.pipelines._recipe.per_variant``:
namespace = model, so it reads ``<model>.predictions``) and adds one collector,
``combine_robustness_summary``, over the models.
"""

from __future__ import annotations

from collections.abc import Iterable

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines._recipe import per_variant, variant_datasets
from cxr_spurious.pipelines.robustness import nodes
from cxr_spurious.variants import STUDY_MODELS

P = "params:robustness"
SHARED_INPUTS: frozenset[str] = frozenset({"manifest", "image_cache"})


def create_robustness_template(
    operating_rows: str | None = None, *, model_digest: bool = True
) -> Pipeline:
    """One model: evaluation table -> AUROC, operating point -> fairness, calibration, strata,
    summary.

    Args:
        operating_rows: None: operating points are chosen on every validation row. Else the
            name of a template input (namespaced like ``predictions``) listing the
            ``image_id`` of the validation rows to choose them on: the comparison's DFR,
            fitted on half the validation patients, gives ``dfr_held_out_val``, the other
            half.
        model_digest: The summary records which training of the model it describes (from
            the template input ``test_metrics``); off for a variant without its own
            ``test_metrics`` (the comparison's DFR, a refitted head on ``erm``).
    """
    choose_inputs = {
        "table": "evaluation_table",
        "tasks": f"{P}.tasks",
        "rule": f"{P}.operating_point",
        "target": f"{P}.operating_target",
    }
    if operating_rows is not None:
        choose_inputs["rows"] = operating_rows
    boot = {"n_boot": f"{P}.n_boot", "seed": f"{P}.seed", "ci_level": f"{P}.ci_level"}
    return Pipeline(
        [
            Node(
                func=nodes.build_evaluation_table,
                inputs={
                    "manifest": "manifest",
                    "predictions": "predictions",
                    "tasks": f"{P}.tasks",
                    "attributes": f"{P}.attributes",
                    "age_bins": f"{P}.age_bins",
                    "spurious": f"{P}.spurious",
                    "worst_group_attributes": f"{P}.worst_group_attributes",
                    "fairness_attribute": f"{P}.fairness_attribute",
                    "reliability_attribute": f"{P}.reliability_attribute",
                    "ami_attributes": f"{P}.ami_attributes",
                },
                outputs="evaluation_table",
                name="build_evaluation_table",
                tags=["robustness"],
            ),
            Node(
                func=nodes.compute_subgroup_auroc,
                inputs={
                    "table": "evaluation_table",
                    "tasks": f"{P}.tasks",
                    "attributes": f"{P}.attributes",
                    "spurious": f"{P}.spurious",
                    "min_per_class": f"{P}.min_per_class",
                    **boot,
                    "max_dropped_share": f"{P}.max_dropped_share",
                },
                outputs="subgroup_auroc",
                name="compute_subgroup_auroc",
                tags=["robustness", "auroc"],
            ),
            Node(
                func=nodes.choose_operating_points,
                inputs=choose_inputs,
                outputs="operating_points",
                name="choose_operating_points",
                tags=["robustness", "fairness"],
            ),
            Node(
                func=nodes.compute_fairness,
                inputs={
                    "table": "evaluation_table",
                    "operating_points": "operating_points",
                    "attributes": f"{P}.attributes",
                    "min_per_class": f"{P}.min_per_class",
                    **boot,
                    "max_dropped_share": f"{P}.max_dropped_share",
                    "multiplicity": f"{P}.multiplicity",
                },
                outputs=["fairness_by_group", "fairness_gaps"],
                name="compute_fairness",
                tags=["robustness", "fairness"],
            ),
            Node(
                func=nodes.compute_calibration,
                inputs={
                    "table": "evaluation_table",
                    "tasks": f"{P}.tasks",
                    "attributes": f"{P}.attributes",
                    "n_bins": f"{P}.calibration_bins",
                    "min_rows": f"{P}.calibration_min_rows",
                    **boot,
                    "max_dropped_share": f"{P}.max_dropped_share",
                },
                outputs="calibration",
                name="compute_calibration",
                tags=["robustness", "calibration"],
            ),
            Node(
                func=nodes.plot_reliability_diagram,
                inputs={
                    "table": "evaluation_table",
                    "tasks": f"{P}.tasks",
                    "attribute": f"{P}.reliability_attribute",
                    "n_bins": f"{P}.calibration_bins",
                    "min_rows": f"{P}.calibration_min_rows",
                },
                outputs="reliability_plot",
                name="plot_reliability_diagram",
                tags=["robustness", "calibration"],
            ),
            Node(
                func=nodes.find_hidden_strata,
                inputs={
                    "table": "evaluation_table",
                    "embeddings": "embeddings",
                    "operating_points": "operating_points",
                    "strata": f"{P}.strata",
                    "ami_attributes": f"{P}.ami_attributes",
                },
                outputs=["strata_assignments", "hidden_strata", "strata_ami"],
                name="find_hidden_strata",
                tags=["robustness", "strata"],
            ),
            Node(
                func=nodes.plot_hidden_strata,
                inputs={
                    "assignments": "strata_assignments",
                    "ami_attributes": f"{P}.ami_attributes",
                },
                outputs="strata_plot",
                name="plot_hidden_strata",
                tags=["robustness", "strata"],
            ),
            Node(
                func=nodes.plot_flagged_thumbnails,
                inputs={
                    "assignments": "strata_assignments",
                    "clusters": "hidden_strata",
                    "image_cache": "image_cache",
                    "per_cluster": f"{P}.thumbnails_per_cluster",
                },
                outputs="flagged_thumbnails",
                name="plot_flagged_thumbnails",
                tags=["robustness", "strata"],
            ),
            Node(
                func=nodes.summarise_model,
                inputs={
                    "subgroup": "subgroup_auroc",
                    "gaps": "fairness_gaps",
                    "worst_attributes": f"{P}.worst_group_attributes",
                    "fairness_attribute": f"{P}.fairness_attribute",
                    "attributes": f"{P}.attributes",
                    "settings": "params:robustness",
                    **({"test_metrics": "test_metrics"} if model_digest else {}),
                },
                outputs="model_summary",
                name="summarise_model",
                tags=["robustness", "summary"],
            ),
        ]
    )


def summary_node(models: Iterable[str]) -> Node:
    """The collector: stack ``<model>.model_summary`` of every model into ``robustness_summary``."""
    names = list(models)
    return Node(
        func=nodes.combine_robustness_summary,
        inputs=dict(zip(names, variant_datasets(names, "model_summary"), strict=True)),
        outputs="robustness_summary",
        name="combine_robustness_summary",
        tags=["robustness", "summary"],
    )


def create_pipeline(**kwargs: object) -> Pipeline:
    """Every study model, plus ``robustness_summary`` over them."""
    per_model = per_variant(create_robustness_template(), STUDY_MODELS, shared_inputs=SHARED_INPUTS)
    return per_model + Pipeline([summary_node(STUDY_MODELS)])
