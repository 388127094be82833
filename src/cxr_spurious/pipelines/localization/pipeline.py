"""Localization pipeline wiring (see README.md in this folder for the data contract).

A collector stage, not a per-variant template (``cxr_spurious.pipelines._recipe``):
``evaluate_heatmaps`` evaluates every set of ``heatmap_collection`` (keys from
``cxr_spurious.variants.heatmap_set_name``) one after the other through the parallel
kernels, and the nodes after it tune, summarise and compare sets on one per-map table.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import (
    build_reference_reports,
    compare_sets,
    evaluate_heatmaps,
    evaluate_human_benchmark,
    plot_localization_overlays,
    plot_metric_bars,
    select_per_cxr,
    summarise_localization,
    summarise_subgroups,
    tune_segmentation,
)

P = "params:localization."


def create_pipeline(**kwargs: object) -> Pipeline:
    """Evaluate ``heatmap_collection`` against the ground truth; write tables and figures."""
    return Pipeline(
        [
            Node(
                func=evaluate_heatmaps,
                inputs={
                    "heatmap_collection": "heatmap_collection",
                    "gt_segmentations": "gt_segmentations",
                    "spurious_segmentations": "spurious_segmentations",
                    "fixed_thresholds": f"{P}fixed_thresholds",
                    "prob_cutoffs": f"{P}prob_cutoffs",
                    "smoothing_k": f"{P}smoothing_k",
                    "tuning_grid": f"{P}tuning_grid",
                    "extra_metrics": f"{P}extra_metrics",
                    "top_k": f"{P}top_k",
                    "prefer_gpu": f"{P}prefer_gpu",
                    "missing_maps": f"{P}missing_maps",
                },
                outputs=["localization_per_map", "localization_segmentations"],
                name="evaluate_heatmaps",
                tags=["localization", "evaluate"],
            ),
            Node(
                func=select_per_cxr,
                inputs={"per_map": "localization_per_map"},
                outputs="localization_per_cxr",
                name="select_per_cxr",
                tags=["localization", "reporting"],
            ),
            Node(
                func=summarise_localization,
                inputs={
                    "per_map": "localization_per_map",
                    "n_boot": f"{P}n_boot",
                    "seed": f"{P}seed",
                    "manifest": "manifest",
                    "max_dropped_share": f"{P}max_dropped_share",
                },
                outputs="localization_summary",
                name="summarise_localization",
                tags=["localization", "reporting"],
            ),
            Node(
                func=tune_segmentation,
                inputs={
                    "per_map": "localization_per_map",
                    "tuning_grid": f"{P}tuning_grid",
                    "prob_cutoffs_grid": f"{P}prob_cutoffs_grid",
                    "prob_cutoffs_grid_by_task": f"{P}prob_cutoffs_grid_by_task",
                    # the split the maps were made on, written beside the tuned values
                    "split": "params:saliency.split",
                },
                outputs=[
                    "localization_tuning_results",
                    "localization_tuning_grid",
                    "localization_probability_tuning_results",
                ],
                name="tune_segmentation",
                tags=["localization", "tuning"],
            ),
            Node(
                func=evaluate_human_benchmark,
                inputs={
                    "gt_segmentations": "gt_segmentations",
                    "hb_segmentations": "hb_segmentations",
                    "hb_salient_points": "hb_salient_points",
                },
                outputs="localization_human_benchmark",
                name="evaluate_human_benchmark",
                tags=["localization", "evaluate"],
            ),
            Node(
                func=build_reference_reports,
                inputs={
                    "per_map": "localization_per_map",
                    "hb_table": "localization_human_benchmark",
                    "n_boot": f"{P}n_boot",
                    "seed": f"{P}seed",
                    "true_pos_only": f"{P}true_pos_only",
                    "split": "params:saliency.split",
                },
                outputs="chexlocalize_reports",
                name="build_reference_reports",
                tags=["localization", "reporting"],
            ),
            Node(
                func=summarise_subgroups,
                inputs={
                    "per_map": "localization_per_map",
                    "manifest": "manifest",
                    "attributes": f"{P}subgroup_attributes",
                    "n_boot": f"{P}n_boot",
                    "seed": f"{P}seed",
                    "max_dropped_share": f"{P}max_dropped_share",
                },
                outputs="localization_subgroups",
                name="summarise_subgroups",
                tags=["localization", "reporting"],
            ),
            Node(
                func=compare_sets,
                inputs={
                    "per_map": "localization_per_map",
                    "pairs": f"{P}compare_pairs",
                    "n_boot": f"{P}n_boot",
                    "seed": f"{P}seed",
                    "manifest": "manifest",
                    "max_dropped_share": f"{P}max_dropped_share",
                    "multiplicity": f"{P}multiplicity",
                },
                outputs="localization_comparisons",
                name="compare_sets",
                tags=["localization", "reporting"],
            ),
            Node(
                func=plot_metric_bars,
                inputs={"localization_summary": "localization_summary"},
                outputs="localization_metric_bars",
                name="plot_metric_bars",
                tags=["localization", "figures"],
            ),
            Node(
                func=plot_localization_overlays,
                inputs={
                    "heatmap_collection": "heatmap_collection",
                    "gt_segmentations": "gt_segmentations",
                    "image_cache": "image_cache",
                    "n": "params:localization.overlays.n_images",
                    "seed": "params:localization.seed",
                    "spurious_segmentations": "spurious_segmentations",
                },
                outputs="localization_overlays",
                name="plot_localization_overlays",
                tags=["localization", "figures"],
            ),
        ]
    )
