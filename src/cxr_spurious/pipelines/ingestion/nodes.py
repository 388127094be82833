"""Ingestion nodes: thin wrappers around ``cxr_spurious.sources``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.datasets.phantom_source import PhantomRequest
from cxr_spurious.errors import ParameterError
from cxr_spurious.phantom import example_grid
from cxr_spurious.phantom.config import PhantomConfig, min_images_for_splits
from cxr_spurious.sources.adapters import IngestedSource, get_adapter
from cxr_spurious.sources.cache import CacheSpec, make_cache_spec
from cxr_spurious.sources.contract import validate_manifest
from cxr_spurious.sources.report import dataset_counts, plot_dataset_report
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.tasks import SPURIOUS_OBJECTS

logger = logging.getLogger(__name__)


def generate_phantom(
    source: str, phantom: dict[str, Any], seed: int, n_jobs: int
) -> PhantomRequest:
    """Describe the phantom to generate (disabled unless ``source`` is ``phantom``).

    The node only checks and describes; saving its request to the ``phantom_source``
    dataset generates the folder (``cxr_spurious.phantom.generate_phantom``), skipped when
    the folder already holds the same request.

    Args:
        source: ``ingestion.source``.
        phantom: ``ingestion.phantom`` generator settings.
        seed: ``ingestion.seed``.
        n_jobs: ``ingestion.n_jobs``.

    Returns:
        The request the ``phantom_source`` dataset carries out.

    Raises:
        ParameterError: a bad generator setting, or too few images for every split (train,
            val, test) to get a patient (``ingestion.phantom.n_images``, with the minimum).
    """
    if source == "phantom":
        check_phantom_size(phantom)
    return PhantomRequest(
        enabled=source == "phantom",
        config=dict(phantom or {}),
        seed=check_seed(seed, "ingestion.seed"),
        n_jobs=int(n_jobs),
    )


def check_phantom_size(phantom: dict[str, Any] | None) -> None:
    """Refuse a phantom too small to give every split a patient, before generating it."""
    key = "ingestion.phantom"
    cfg = PhantomConfig.from_dict(dict(phantom or {}), key=key)
    minimum = min_images_for_splits(cfg, key)
    if cfg.n_images < minimum:
        raise ParameterError(
            f"{key}.n_images",
            f"must be at least {minimum} so that train, val and test each get a patient"
            f" (split_fractions {dict(cfg.split_fractions)}, up to"
            f" {len(cfg.studies_per_patient)} studies per patient); got {cfg.n_images}",
        )


def read_source(phantom_root: str, options: dict[str, Any]) -> IngestedSource:
    """Read the configured source through its adapter.

    Args:
        phantom_root: Folder of the generated phantom (used when the source is ``phantom``).
        options: The ``ingestion`` parameters (``source``, ``root`` and adapter options).

    Returns:
        The adapter's output.
    """
    source = options.get("source", "phantom")
    adapter = get_adapter(source)
    if source == "phantom":
        root = Path(phantom_root)
    else:
        if not options.get("root"):
            raise ParameterError(
                "ingestion.root",
                f"source '{source}' needs the dataset folder: --params "
                f'"ingestion.source={source},ingestion.root=/abs/path"',
            )
        root = Path(str(options["root"])).expanduser()
    ingested = adapter(root, options)
    logger.info(
        "Read %d images of source '%s' from %s (tasks: %s)",
        len(ingested.manifest),
        source,
        root,
        ", ".join(ingested.tasks),
    )
    return ingested


def build_manifest(ingested: IngestedSource) -> pd.DataFrame:
    """Validate the adapter's manifest against the contract and return it."""
    manifest = validate_manifest(ingested.manifest, ingested.tasks)
    counts = manifest["split"].value_counts().to_dict()
    logger.info(
        "Manifest: %d images, %d patients, splits %s",
        len(manifest),
        manifest["patient_id"].nunique(),
        counts,
    )
    return manifest


def extract_ground_truth(
    ingested: IngestedSource,
) -> tuple[dict, dict, dict, dict, dict, dict, dict]:
    """Split the adapter output into the catalog's ground-truth datasets.

    Returns:
        gt_annotations, gt_segmentations, instance_segmentations, spurious_segmentations,
        hb_annotations, hb_segmentations, hb_salient_points.
    """
    hb = ingested.human_benchmark or {}
    return (
        ingested.annotations,
        ingested.segmentations,
        ingested.instance_segmentations,
        ingested.spurious_segmentations,
        hb.get("annotations", {}),
        hb.get("segmentations", {}),
        hb.get("salient_points", {}),
    )


def build_image_cache(
    manifest: pd.DataFrame, ingested: IngestedSource, size: int, n_jobs: int
) -> CacheSpec:
    """Describe the model-input cache; saving it to the ``image_cache`` dataset builds it.

    Args:
        manifest: The validated manifest.
        ingested: Adapter output (ground truth and counterfactual renders).
        size: Training resolution in pixels (square).
        n_jobs: Worker processes for decoding.

    Returns:
        The cache specification.
    """
    objects = [
        o for o in SPURIOUS_OBJECTS if any(o in v for v in ingested.spurious_segmentations.values())
    ]
    return make_cache_spec(
        manifest,
        ingested.tasks,
        size,
        segmentations=ingested.segmentations,
        instance_segmentations=ingested.instance_segmentations,
        annotations=ingested.annotations,
        spurious_segmentations=ingested.spurious_segmentations,
        objects=objects,
        renders=ingested.renders,
        render_masks=ingested.render_masks,
        n_jobs=n_jobs,
    )


def report_dataset(manifest: pd.DataFrame, attributes: list[str]) -> tuple[pd.DataFrame, Figure]:
    """Counts by split x label x attribute, as a table and a figure.

    Args:
        manifest: The manifest.
        attributes: Attribute columns to break the counts down by.

    Returns:
        The long-format count table and its figure.
    """
    counts = dataset_counts(manifest, manifest.attrs.get("tasks") or [], attributes)
    return counts, plot_dataset_report(counts)


def plot_examples(ingested: IngestedSource, n: int, seed: int) -> Figure:
    """A grid of example images with pathology outlines and chest-tube masks.

    Args:
        ingested: Adapter output (images are read from their paths).
        n: Number of examples.
        seed: Seed of the stratified sample of examples.

    Returns:
        The figure.
    """
    return example_grid(ingested, n=n, seed=check_seed(seed, "ingestion.seed"))
