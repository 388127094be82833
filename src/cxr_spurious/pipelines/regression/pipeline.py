"""Regression pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import (
    build_regression_table,
    compute_geometric_features,
    fit_joint_models,
    plot_forest,
    regress_on_confidence,
    regress_on_features,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    """Features from the gt, then the reference regressions and the joint models."""
    return Pipeline(
        [
            Node(
                func=compute_geometric_features,
                inputs={"gt_segmentations": "gt_segmentations", "gt_annotations": "gt_annotations"},
                outputs="regression_features",
                name="compute_geometric_features",
                tags=["regression"],
            ),
            Node(
                func=build_regression_table,
                inputs={
                    "localization_per_cxr": "localization_per_cxr",
                    "features": "regression_features",
                    "human_benchmark": "localization_human_benchmark",
                },
                outputs="regression_table",
                name="build_regression_table",
                tags=["regression"],
            ),
            Node(
                func=regress_on_features,
                inputs={
                    "table": "regression_table",
                    "cluster_robust": "params:regression.cluster_robust",
                    "min_clusters": "params:regression.min_clusters",
                },
                outputs="regression_feature_results",
                name="regress_on_features",
                tags=["regression"],
            ),
            Node(
                func=regress_on_confidence,
                inputs={
                    "localization_per_cxr": "localization_per_cxr",
                    "min_clusters": "params:regression.min_clusters",
                },
                outputs="regression_confidence_results",
                name="regress_on_confidence",
                tags=["regression"],
            ),
            Node(
                func=fit_joint_models,
                inputs={"table": "regression_table"},
                outputs="regression_joint_models",
                name="fit_joint_models",
                tags=["regression"],
            ),
            Node(
                func=plot_forest,
                inputs={"feature_regressions": "regression_feature_results"},
                outputs="regression_forest_plot",
                name="plot_forest",
                tags=["regression", "figures"],
            ),
        ]
    )
