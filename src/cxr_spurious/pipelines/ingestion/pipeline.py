"""Ingestion pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines.ingestion import nodes


def create_pipeline(**kwargs: object) -> Pipeline:
    """Source -> manifest, ground truth, image cache and dataset report."""
    return Pipeline(
        [
            Node(
                func=nodes.generate_phantom,
                inputs={
                    "source": "params:ingestion.source",
                    "phantom": "params:ingestion.phantom",
                    "seed": "params:ingestion.seed",
                    "n_jobs": "params:ingestion.n_jobs",
                },
                outputs="phantom_source",
                name="generate_phantom",
            ),
            Node(
                func=nodes.read_source,
                inputs={"phantom_root": "phantom_source", "options": "params:ingestion"},
                outputs="ingested_source",
                name="read_source",
            ),
            Node(
                func=nodes.build_manifest,
                inputs="ingested_source",
                outputs="manifest",
                name="build_manifest",
            ),
            Node(
                func=nodes.extract_ground_truth,
                inputs="ingested_source",
                outputs=[
                    "gt_annotations",
                    "gt_segmentations",
                    "instance_segmentations",
                    "spurious_segmentations",
                    "hb_annotations",
                    "hb_segmentations",
                    "hb_salient_points",
                ],
                name="extract_ground_truth",
            ),
            Node(
                func=nodes.build_image_cache,
                inputs={
                    "manifest": "manifest",
                    "ingested": "ingested_source",
                    "size": "params:ingestion.cache.size",
                    "n_jobs": "params:ingestion.n_jobs",
                },
                outputs="image_cache",
                name="build_image_cache",
            ),
            Node(
                func=nodes.report_dataset,
                inputs={"manifest": "manifest", "attributes": "params:ingestion.report_attributes"},
                outputs=["dataset_report", "dataset_report_figure"],
                name="report_dataset",
            ),
            Node(
                func=nodes.plot_examples,
                inputs={
                    "ingested": "ingested_source",
                    "n": "params:ingestion.examples.n",
                    "seed": "params:ingestion.seed",
                },
                outputs="example_grid",
                name="plot_examples",
            ),
        ],
        tags=["ingestion"],
    )
