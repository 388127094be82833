"""Wiring of the ``debiasing`` pipeline.

``create_debiasing_template`` builds one resampling run (un-namespaced): ``features`` picks
the cluster features of ``cluster_downsample`` (``thumbnails`` of the image cache, or the
``embeddings`` input), ``jtt=True`` replaces the resampling node by JTT's upweighting of
``erm_predictions`` errors. The default ``debiasing`` pipeline is the thumbnail template,
writing ``resampled_manifest`` for training.
"""

from __future__ import annotations

from typing import Literal

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines.debiasing import nodes

P = "params:debiasing"


def create_debiasing_template(
    features: Literal["thumbnails", "embeddings"] = "thumbnails",
    *,
    jtt: bool = False,
    seed: str = f"{P}.seed",
) -> Pipeline:
    """One resampling run: groups -> (features) -> resampled manifest -> group-count report.

    ``seed`` names the resampling seed's input: the parameter, or a dataset of the same
    namespace (the comparison's seeds other than ``training.seed``, ``pipelines/comparison``).
    """
    group_node = Node(
        func=nodes.assign_row_groups,
        inputs={
            "manifest": "manifest",
            "group_by": f"{P}.group_by",
            "age_bins": f"{P}.age_bins",
            "cross_label": f"{P}.cross_label",
            "tasks": f"{P}.tasks",
            "strategy": f"{P}.strategy",
            "min_patients": f"{P}.min_patients_per_group",
        },
        outputs="debiasing_groups",
        name="assign_row_groups",
        tags=["debiasing"],
    )
    if jtt:
        core = [
            Node(
                func=nodes.upweight_erm_errors,
                inputs={
                    "manifest": "manifest",
                    "groups": "debiasing_groups",
                    "erm_predictions": "erm_predictions",
                    "tasks": f"{P}.tasks",
                    "threshold": f"{P}.jtt_threshold",
                    "upweight": f"{P}.jtt_upweight",
                    "mode": f"{P}.jtt_mode",
                },
                outputs="resampled_manifest",
                name="upweight_erm_errors",
                tags=["debiasing", "jtt"],
            )
        ]
    else:
        core = []
        if features == "thumbnails":
            core.append(
                Node(
                    func=nodes.compute_thumbnail_features,
                    inputs={
                        "manifest": "manifest",
                        "image_cache": "image_cache",
                        "strategy": f"{P}.strategy",
                        "size": f"{P}.thumbnail_size",
                    },
                    outputs="cluster_features",
                    name="compute_thumbnail_features",
                    tags=["debiasing"],
                )
            )
        core.append(
            Node(
                func=nodes.resample_train_rows,
                inputs={
                    "manifest": "manifest",
                    "groups": "debiasing_groups",
                    "features": "cluster_features" if features == "thumbnails" else "embeddings",
                    "strategy": f"{P}.strategy",
                    "target": f"{P}.target",
                    "seed": seed,
                    "n_clusters": f"{P}.n_clusters",
                },
                outputs="resampled_manifest",
                name="resample_train_rows",
                tags=["debiasing"],
            )
        )
    report = [
        Node(
            func=nodes.summarise_group_counts,
            inputs={
                "manifest": "manifest",
                "groups": "debiasing_groups",
                "resampled_manifest": "resampled_manifest",
            },
            outputs="group_counts",
            name="summarise_group_counts",
            tags=["debiasing", "reporting"],
        ),
        Node(
            func=nodes.plot_group_count_bars,
            inputs={"group_counts": "group_counts", "strategy": f"{P}.strategy"},
            outputs="group_counts_plot",
            name="plot_group_count_bars",
            tags=["debiasing", "reporting"],
        ),
    ]
    return Pipeline([group_node, *core, *report])


def create_pipeline(**kwargs: object) -> Pipeline:
    """The default debiasing run (strategy from ``debiasing.strategy``)."""
    return create_debiasing_template("thumbnails")
