"""Thin nodes of the saliency pipeline; the work lives in ``cxr_spurious.saliency``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.datasets.heatmap_folders import ChexlocalizeExport
from cxr_spurious.datasets.skippable import SKIPPED, is_skipped
from cxr_spurious.errors import ParameterError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.overlays import images_of
from cxr_spurious.saliency.compute import (
    heatmap_sets_for,
    load_model,
    name_list,
    plan_methods,
    resolve_tasks,
    select_image_ids,
)
from cxr_spurious.saliency.overlays import TUBE_OBJECT, overlay_figure, sample_rows
from cxr_spurious.saliency.registry import MethodOptions
from cxr_spurious.saliency.sanity import SANITY_COLUMNS, model_randomisation_check
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.sources.contract import patient_ids
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.training.provenance import MODEL_FINGERPRINT_KEY, model_fingerprint
from cxr_spurious.variants import heatmap_set_name

logger = logging.getLogger(__name__)


def _options(method_options: dict[str, Any] | None, seed: int) -> MethodOptions:
    """``saliency.method_options`` with the run's seed ``saliency.seed``.

    ``seed`` is not a method option: ``saliency.method_options.seed`` is refused (it used
    to be overwritten by ``saliency.seed`` without a word), naming ``saliency.seed``.
    """
    return MethodOptions.from_params(method_options, seed=check_seed(seed, "saliency.seed"))


def _variant_name(variant: Mapping[str, Any]) -> str:
    """The variant's name from its parameter block ``training.variants.<name>``."""
    if not isinstance(variant, Mapping) or not variant.get("name"):
        got = sorted(variant) if isinstance(variant, Mapping) else type(variant).__name__
        raise ParameterError(
            "training.variants.<name>", f"expected a block with a 'name'; got {got}"
        )
    return str(variant["name"])


def compute_heatmaps(
    model_artifact: dict[str, Any],
    variant: Mapping[str, Any],
    image_cache: ImageCache,
    manifest: pd.DataFrame,
    methods: list[str] | str | None,
    tasks: list[str] | str | None,
    split: str,
    max_images: int | None,
    seed: int,
    batch_size: int,
    device: str,
    method_options: dict[str, Any] | None,
) -> dict[str, HeatmapSet]:
    """Saliency maps of one trained model for every planned method.

    Run by ``DaskRunner``, the work goes to the cluster as (method, image batch) chunk tasks
    (``cxr_spurious.saliency.compute.compute_method_maps``); elsewhere it runs here.

    Args:
        model_artifact: ``{"state_dict", "config"}`` of the variant.
        variant: The variant's block ``training.variants.<name>`` (its ``name`` names the
            heatmap sets).
        image_cache: The image cache.
        manifest: The manifest (split, labels, original sizes).
        methods: ``params:saliency.methods`` (``None``: the study's pairs).
        tasks: ``params:saliency.tasks`` (``None``: all of the model's tasks).
        split: Evaluation split.
        max_images: Optional cap (seeded subset).
        seed: Seed of the subset and of random methods.
        batch_size: Images per batch.
        device: ``auto`` / ``cpu`` / ``cuda``.
        method_options: Method knobs (see ``MethodOptions``).

    Returns:
        ``{heatmap_set_name(model, method): HeatmapSet}``; ``SKIPPED`` when the model is.
        Each set's index records the model artifact's fingerprint (``model_fingerprint``
        column) when the artifact has one.
    """
    model_name = _variant_name(variant)
    seed = check_seed(seed, "saliency.seed")
    if is_skipped(model_artifact):  # a model skipped upstream (the sweep's resumed cells)
        logger.info("%s: model skipped upstream, no heatmaps computed", model_name)
        return SKIPPED
    model = load_model(model_artifact, model_name)
    ids = select_image_ids(manifest, split, max_images, seed)
    images = np.asarray(image_cache.images[image_cache.rows(ids)])
    planned = plan_methods(model_name, model, methods, probe=images)
    start = time.perf_counter()
    sets = heatmap_sets_for(
        model,
        images,
        ids,
        manifest,
        model_name=model_name,
        methods=planned,
        tasks=tasks,
        batch_size=batch_size,
        device=device,
        options=_options(method_options, seed),
        skip_unfit=True,  # a method refused on a later batch is left out, like the probe's
    )
    elapsed = time.perf_counter() - start
    logger.info(
        "%s %s: %d images in %.1f s (%.1f img/s per method)",
        model_name,
        "+".join(sets) or "no methods",
        len(ids),
        elapsed,
        len(ids) * len(planned) / max(elapsed, 1e-9),
    )
    fingerprint = model_fingerprint(model_artifact)
    if fingerprint:  # which training of the model the maps come from (the study checks it)
        sets = {
            method: HeatmapSet(
                index=h.index.assign(**{MODEL_FINGERPRINT_KEY: fingerprint}), maps=h.maps
            )
            for method, h in sets.items()
        }
    return {heatmap_set_name(model_name, method): hset for method, hset in sets.items()}


def check_saliency_sanity(
    model_artifact: dict[str, Any],
    variant: Mapping[str, Any],
    image_cache: ImageCache,
    manifest: pd.DataFrame,
    methods: list[str] | str | None,
    tasks: list[str] | str | None,
    split: str,
    seed: int,
    batch_size: int,
    device: str,
    method_options: dict[str, Any] | None,
    enabled: bool,
    n_images: int,
    n_boot: int,
    max_dropped_share: float = 0.05,
) -> pd.DataFrame:
    """Model-randomisation sanity check for one model (empty table when disabled).

    Args:
        model_artifact: ``{"state_dict", "config"}`` of the variant.
        variant: The variant's block ``training.variants.<name>``.
        image_cache: The image cache.
        manifest: The manifest.
        methods: ``params:saliency.methods``.
        tasks: ``params:saliency.tasks``.
        split: Evaluation split.
        seed: Seed of the image subset, the re-initialisation and the bootstrap.
        batch_size: Images per batch.
        device: Device spec.
        method_options: Method knobs.
        enabled: ``params:saliency.sanity.enabled``.
        n_images: Images in the check.
        n_boot: Bootstrap replicates (patients resampled).
        max_dropped_share: Largest share of undefined bootstrap replicates.

    Returns:
        One row per (method, task): mean Spearman correlation trained vs random, with CI;
        no rows when disabled or when the model is ``SKIPPED`` (a variant that
        ``training.only`` does not select and that has no trained model).
    """
    model_name = _variant_name(variant)
    if not enabled:
        return pd.DataFrame(columns=list(SANITY_COLUMNS))
    seed = check_seed(seed, "saliency.seed")
    if is_skipped(model_artifact):
        logger.info("%s: model skipped upstream (training.only), no sanity check", model_name)
        return pd.DataFrame(columns=list(SANITY_COLUMNS))
    model = load_model(model_artifact, model_name)
    ids = select_image_ids(manifest, split, n_images, seed)
    images = np.asarray(image_cache.images[image_cache.rows(ids)])
    planned = plan_methods(model_name, model, methods, probe=images)
    task_names = resolve_tasks(model, tasks, model_name)
    return model_randomisation_check(
        model,
        images,
        planned,
        task_names,
        model_name=model_name,
        seed=seed,
        n_boot=n_boot,
        batch_size=batch_size,
        device=device,
        options=_options(method_options, seed),
        patients=_patients_of(manifest, ids),
        max_dropped_share=float(max_dropped_share),
    )


def _patients_of(manifest: pd.DataFrame, ids: list[str]) -> list[str] | None:
    """``patient_id`` of each image (the bootstrap cluster), None when the manifest has none."""
    if "patient_id" not in manifest.columns:
        return None
    return patient_ids(ids, manifest, table="the saliency sanity check").tolist()


def plot_heatmap_overlays(
    heatmaps: dict[str, HeatmapSet], image_cache: ImageCache, n_images: int, seed: int
) -> dict[str, Figure]:
    """One overlay figure per heatmap set (a seeded sample, positives first).

    Args:
        heatmaps: ``{heatmap set name: HeatmapSet}`` of one model, or ``SKIPPED`` (its
            model was skipped upstream: no figures).
        image_cache: The image cache (images, pathology and chest-tube masks for the outlines).
        n_images: Maps per figure.
        seed: Seed of the sample.

    Returns:
        ``{"<heatmap set name>.png": Figure}`` for ``MatplotlibDataset``.
    """
    if is_skipped(heatmaps):
        logger.info("model skipped upstream (training.only): no saliency overlays")
        return {}
    seed = check_seed(seed, "saliency.seed")
    figures = {}
    for name, hset in heatmaps.items():
        rows = sample_rows(hset, n_images, seed)
        picked = hset.index.iloc[rows]
        images = images_of(image_cache, picked["image_id"])
        masks = {}
        for image_id, task in zip(picked["image_id"].astype(str), picked["task"].astype(str)):
            if task in image_cache.tasks:
                masks[(image_id, task)] = np.asarray(
                    image_cache.masks[image_cache.row(image_id), image_cache.task_index(task)]
                )
        tubes = {}
        if TUBE_OBJECT in image_cache.objects:
            k = image_cache.objects.index(TUBE_OBJECT)
            tubes = {i: np.asarray(image_cache.spurious[image_cache.row(i), k]) for i in images}
        figures[f"{name}.png"] = overlay_figure(hset, rows, images, masks, tubes, title=name)
    return figures


def collect_heatmaps(
    *per_model: dict[str, HeatmapSet], variants: Sequence[str] | None = None
) -> dict[str, HeatmapSet]:
    """Merge the per-model dicts into ``heatmap_collection`` (names are unique by construction).

    Args:
        *per_model: Each model's ``{heatmap set name: HeatmapSet}``, or ``SKIPPED`` for a
            variant that ``training.only`` does not select and that has no trained model:
            its sets are left out of the collection, with a warning.
        variants: The variant of each positional argument, for that warning (the pipeline
            binds ``STUDY_MODELS``).

    Returns:
        Every set of the models that were not skipped.
    """
    merged: dict[str, HeatmapSet] = {}
    skipped = []
    for k, sets in enumerate(per_model):
        if is_skipped(sets):
            names = list(variants or [])
            skipped.append(names[k] if k < len(names) else f"model #{k + 1}")
            continue
        merged.update(sets)
    if skipped:
        logger.warning(
            "heatmap collection: no sets of %s: skipped (not selected by training.only, and "
            "no trained model); train them to get their heatmaps",
            ", ".join(skipped),
        )
    logger.info("heatmap collection: %s", sorted(merged))
    return merged


def collect_saliency_sanity(*tables: pd.DataFrame) -> pd.DataFrame:
    """Stack the per-model sanity tables into ``saliency_sanity``."""
    frames = [t for t in tables if len(t)]
    if not frames:
        return pd.DataFrame(columns=list(SANITY_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def export_chexlocalize(
    heatmap_collection: dict[str, HeatmapSet],
    image_cache: ImageCache,
    enabled: bool,
    sets: list[str] | str | None,
) -> dict[str, ChexlocalizeExport]:
    """Pick the sets to export to the CheXlocalize pickle layout (nothing when disabled).

    Args:
        heatmap_collection: All heatmap sets.
        image_cache: The image cache (the model-input image goes into each pickle).
        enabled: ``params:saliency.export.enabled``.
        sets: Set names to export (``None``: all).

    Returns:
        ``{name: ChexlocalizeExport}`` for ``ChexlocalizeExportDataset``.

    Raises:
        ParameterError: a requested set is not in the collection (a variant with no set at
            all is named: skipped by ``training.only`` without a trained model).
    """
    if not enabled:
        return {}
    names = sorted(heatmap_collection) if sets is None else name_list(sets) or []
    unknown = [n for n in names if n not in heatmap_collection]
    if unknown:
        present = {str(n).rpartition(".")[0] for n in heatmap_collection}
        absent = sorted({n.rpartition(".")[0] for n in unknown} - present - {""})
        hint = (
            f"; variant(s) {absent} have no heatmap set at all: a variant that training.only "
            "does not select and that has no trained model is skipped (train it, or leave "
            "its sets out of saliency.export.sets)"
            if absent
            else ""
        )
        raise ParameterError(
            "saliency.export.sets",
            f"unknown heatmap set(s) {unknown}; available: {sorted(heatmap_collection)}{hint}",
        )
    out = {}
    for name in names:
        hset = heatmap_collection[name]
        ids = hset.index["image_id"].astype(str).unique().tolist()
        rows = image_cache.rows(ids)
        out[name] = ChexlocalizeExport(
            hset, {i: np.asarray(image_cache.images[r]) for i, r in zip(ids, rows)}
        )
    return out
