"""Thin nodes of the ``sweep`` pipeline; the work is in ``cxr_spurious.sweep``.

Per cell (namespace ``cell.namespace``): ``plan_cell`` (the cell's variant block, config
hash and resume decision) -> ``compose_cell`` (the cell's manifest and in-memory image
cache: which images carry the artefact) -> the training template -> ``tag_run_record``
(cell and seed on the MLflow child run) -> the saliency template's ``compute_heatmaps`` ->
``predict_renders`` and ``attribute_saliency`` -> ``summarise_cell`` (one ``sweep_models``
row). A cell whose previous row has the same config hash is skipped: every node returns
``SKIPPED`` and the row's ``SkippableDataset`` keeps the previous file. The hash covers the
cell, the merged training parameters, the sweep settings its row depends on, the precision
and device type its training resolves to on this machine and the source of the code that
computes the row (``ROW_MODULES``): a row written at another precision, on another kind of
device or by other code is computed again, not reused. A cell that
``training.only`` leaves out is skipped too, whatever its hash: ``collect_sweep_models``
compares each row with its cell's plan and leaves out (with a warning) rows of another
configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.datasets.skippable import SKIPPED, is_skipped
from cxr_spurious.errors import ContractError, ParameterError, StaleOutputError, check_number
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.models import model_from_artifact
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.stats.bootstrap import check_ci_level, check_max_dropped_share, check_n_boot
from cxr_spurious.stats.multiplicity import adjust_table, family_note, read_settings
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.sweep.attribution import saliency_table
from cxr_spurious.sweep.confounding import NO_LESION, ORIGINAL, assign_artefacts, render_name
from cxr_spurious.sweep.detection import (
    check_flag_k,
    check_reliance_threshold,
    shortcut_detection,
)
from cxr_spurious.sweep.figures import plot_detection, plot_strength_curves
from cxr_spurious.sweep.grid import ARTEFACT_KINDS, Cell, config_hash, expand_grid
from cxr_spurious.sweep.metrics import model_metrics, model_row, render_table
from cxr_spurious.sweep.summary import (
    check_pairs,
    metric_columns,
    paired_differences,
    summarise_cells,
)
from cxr_spurious.sweep.tables import render_sweep_tables
from cxr_spurious.training.checkpoints import code_digests
from cxr_spurious.training.device import setup_for
from cxr_spurious.training.outputs import (
    predict_images,
    predictions_frame,
    resolved_precision_and_device,
)

logger = logging.getLogger(__name__)

#: Manifest column of a cell: 1 where the image carries the cell's artefact.
ARTEFACT_COLUMN = "artefact"
#: Keys of the ``sweep`` parameters that decide a cell's row besides the cell and training.
HASHED_SWEEP_KEYS: tuple[str, ...] = ("task", "test_p", "ingestion", "saliency", "metrics")
#: Columns of ``sweep_paired_differences`` that split a metric's multiplicity family: one
#: family per compared pair (and location fraction), over the grid's cells.
PAIR_FAMILY: tuple[str, ...] = ("pair", "location_fraction")
#: Keys hashed only when set (not null), so that adding them kept earlier rows' hashes.
OPTIONAL_HASHED_SWEEP_KEYS: tuple[str, ...] = ("test_seed",)
#: Keys of ``sweep.ingestion`` left out of the hash: the sweep's data pipeline is the ingestion
#: pipeline up to ``manifest`` and ``image_cache`` (``pipeline.create_data_pipeline``), without
#: the dataset report (``report_attributes``) and example figure (``examples``) nodes that read
#: them, so they change no row. The shipped file does not set them (the parameter-key check
#: refuses them); they are left out here too, for parameters that bypass that check.
UNREAD_INGESTION_KEYS: frozenset[str] = frozenset({"report_attributes", "examples"})
#: The project modules whose source decides a cell's row; their digests
#: (``training.checkpoints.code_digests``) are hashed, so a row is reused only by the code that
#: wrote it. The import closure of the modules whose functions compute the row (the sweep's
#: phantom, manifest and image cache: ``pipelines.ingestion.nodes`` and the phantom adapter
#: ``sources.adapters.phantom``; the cell, its training and saliency maps and its row:
#: ``pipelines.training.nodes``, ``pipelines.saliency.nodes``, ``pipelines.sweep.nodes``),
#: which holds the training code's ``RESULT_MODULES``, less the pipeline wiring that package
#: imports pull in (``hooks``, ``pipelines._recipe``, ``pipelines.*.pipeline``), the collectors
#: after the rows (``sweep.summary``, ``sweep.detection``, ``sweep.figures``, ``sweep.tables``,
#: ``report.html``) and modules that only draw figures (``phantom.figures``,
#: ``localization.figures``, ``saliency.overlays``, ``sources.report``, ``ci_marks``). A test
#: keeps this list equal to that rule.
ROW_MODULES: tuple[str, ...] = (
    "cxr_spurious.augment",
    "cxr_spurious.datasets.heatmap_folders",
    "cxr_spurious.datasets.phantom_source",
    "cxr_spurious.datasets.skippable",
    "cxr_spurious.debiasing.objectives",
    "cxr_spurious.errors",
    "cxr_spurious.heatmaps",
    "cxr_spurious.io.atomic",
    "cxr_spurious.io.chexlocalize",
    "cxr_spurious.io.images",
    "cxr_spurious.io.masks",
    "cxr_spurious.io.safe_pickle",
    "cxr_spurious.localization.bilinear",
    "cxr_spurious.localization.kernels",
    "cxr_spurious.localization.metrics",
    "cxr_spurious.localization.segmentation",
    "cxr_spurious.logging_filters",
    "cxr_spurious.models.base",
    "cxr_spurious.models.classifiers",
    "cxr_spurious.models.ops",
    "cxr_spurious.models.pretrained",
    "cxr_spurious.models.registry",
    "cxr_spurious.models.unet",
    "cxr_spurious.overlays",
    "cxr_spurious.parallel",
    "cxr_spurious.phantom.anatomy",
    "cxr_spurious.phantom.artefacts",
    "cxr_spurious.phantom.cohort",
    "cxr_spurious.phantom.config",
    "cxr_spurious.phantom.devices",
    "cxr_spurious.phantom.findings",
    "cxr_spurious.phantom.geometry",
    "cxr_spurious.phantom.human_benchmark",
    "cxr_spurious.phantom.render",
    "cxr_spurious.phantom.writer",
    "cxr_spurious.pipelines.ingestion.nodes",
    "cxr_spurious.pipelines.saliency.nodes",
    "cxr_spurious.pipelines.sweep.nodes",
    "cxr_spurious.pipelines.training.nodes",
    "cxr_spurious.progress",
    "cxr_spurious.saliency.compute",
    "cxr_spurious.saliency.registry",
    "cxr_spurious.saliency.sanity",
    "cxr_spurious.sources.adapters._common",
    "cxr_spurious.sources.adapters.base",
    "cxr_spurious.sources.adapters.chexlocalize",
    "cxr_spurious.sources.adapters.phantom",
    "cxr_spurious.sources.cache",
    "cxr_spurious.sources.contract",
    "cxr_spurious.stats.bootstrap",
    "cxr_spurious.stats.metrics",
    "cxr_spurious.stats.seed_param",
    "cxr_spurious.stats.seeds",
    "cxr_spurious.study.counterfactual",
    "cxr_spurious.sweep.attribution",
    "cxr_spurious.sweep.confounding",
    "cxr_spurious.sweep.grid",
    "cxr_spurious.sweep.metrics",
    "cxr_spurious.tasks",
    "cxr_spurious.training.checkpoints",
    "cxr_spurious.training.config",
    "cxr_spurious.training.data",
    "cxr_spurious.training.device",
    "cxr_spurious.training.distributed",
    "cxr_spurious.training.engine",
    "cxr_spurious.training.objectives",
    "cxr_spurious.training.outputs",
    "cxr_spurious.training.provenance",
    "cxr_spurious.variants",
)


def plan_cell(
    previous_row: Mapping[str, Any] | None,
    training: Mapping[str, Any],
    sweep: Mapping[str, Any],
    *,
    cell: Cell,
) -> dict[str, Any]:
    """The cell's variant block, its config hash and whether its previous row still holds.

    The hash covers the cell; the merged training parameters; the sweep's ``task``,
    ``test_p``, ``test_seed`` (when set), ``ingestion`` (less ``UNREAD_INGESTION_KEYS``),
    ``saliency`` and ``metrics``; the precision (``bf16`` / ``fp32``) and device type the
    cell's training resolves to here (``training.precision: auto`` and ``device: auto``
    depend on the machine); and the source digests of ``ROW_MODULES``.

    Args:
        previous_row: The cell's row of an earlier run (None if there is none).
        training: The shared ``training`` parameters.
        sweep: The ``sweep`` parameters (``training`` block and everything hashed).
        cell: The cell (bound when the pipeline is built).

    Returns:
        ``{"cell", "variant", "config_hash", "skip", "reason", "precision", "device"}``:
        ``variant`` is merged over ``sweep.training`` by the training template's
        ``resolve_config``; ``precision`` and ``device`` are the resolved ones (hashed).

    Raises:
        ParameterError: the training device is not available or the precision unknown
            (``training.device.resolve_device``).
    """
    variant = {
        "name": cell.namespace,
        "supervision": cell.supervision,
        "location_fraction": cell.location_fraction,
        "seed": cell.seed,
    }
    shared = {k: v for k, v in training.items() if k not in ("variants", "only")}
    merged = {**shared, **dict(sweep.get("training") or {}), **variant}
    swept = {k: sweep.get(k) for k in HASHED_SWEEP_KEYS}
    swept["ingestion"] = _read_ingestion(swept["ingestion"])
    resolved = resolved_precision_and_device(merged)
    hashed = {
        "training": merged,
        "sweep": {
            **swept,
            **{k: sweep[k] for k in OPTIONAL_HASHED_SWEEP_KEYS if sweep.get(k) is not None},
        },
        "run": {**resolved, "code": code_digests(ROW_MODULES)},
    }
    digest = config_hash(cell, hashed)
    skip = previous_row is not None and previous_row.get("config_hash") == digest
    reason = f"its row for config hash {digest[:12]} exists (resume)" if skip else ""
    return {
        "cell": cell.as_dict(),
        "variant": variant,
        "config_hash": digest,
        "skip": skip,
        "reason": reason,
        **resolved,
    }


def _read_ingestion(ingestion: Any) -> Any:
    """``sweep.ingestion`` without ``UNREAD_INGESTION_KEYS`` (a non-mapping as it is)."""
    if not isinstance(ingestion, Mapping):
        return ingestion
    return {k: v for k, v in ingestion.items() if k not in UNREAD_INGESTION_KEYS}


def compose_cell(
    manifest: pd.DataFrame,
    image_cache: ImageCache,
    plan: Mapping[str, Any],
    task: str,
    test_p: float,
    test_seed: int | None = None,
) -> tuple[Any, Any, Any]:
    """The cell's manifest (column ``artefact``) and image cache (its confounding level).

    Each image is the ``with_<kind>`` render where ``assign_artefacts`` gives it the
    artefact, else the original; the artefact mask is the cache's one spurious object.

    Returns:
        ``(manifest, test_manifest, image_cache)``: the test split's rows are what the
        training template predicts and evaluates (the sweep needs no train / val
        predictions); ``SKIPPED`` three times for a skipped cell.
    """
    if plan["skip"]:
        return SKIPPED, SKIPPED, SKIPPED
    cell = Cell(**plan["cell"])
    has = assign_artefacts(
        manifest,
        task=task,
        p_given_ptx=cell.p_given_ptx,
        p_given_no_ptx=cell.p_given_no_ptx,
        test_p=test_p,
        seed=cell.seed,
        test_seed=test_seed,
    )
    ids = manifest["image_id"].astype(str).tolist()
    carries = has.reindex(ids, fill_value=False).to_numpy(dtype=bool)
    render = render_name(cell.artefact)
    images = image_cache.select_renders(ids, [render if c else ORIGINAL for c in carries])
    order = image_cache.rows(ids)
    spurious = np.zeros((len(image_cache), 1, image_cache.size, image_cache.size), np.uint8)
    spurious[order[carries], 0] = image_cache.render_mask(
        render, [i for i, c in zip(ids, carries) if c]
    )
    full = np.asarray(image_cache.images).copy()
    full[order] = images
    stamp = hashlib.sha256(np.packbits(carries).tobytes() + render.encode()).hexdigest()[:12]
    cache = dataclasses.replace(
        image_cache,
        images=full,
        objects=[cell.artefact],
        spurious=spurious,
        renders={},
        render_ids={},
        render_masks={},
        fingerprint=f"{image_cache.fingerprint}-{stamp}",
    )
    out = manifest.copy()
    out[ARTEFACT_COLUMN] = carries.astype(int)
    out.attrs = dict(manifest.attrs)
    logger.info(
        "[%s] %d of %d images carry %s", cell.namespace, int(carries.sum()), len(ids), cell.artefact
    )
    test = out[out["split"] == "test"].reset_index(drop=True)
    test.attrs = dict(out.attrs)
    return out, test, cache


def tag_run_record(run_record: Any, plan: Mapping[str, Any]) -> Any:
    """The training template's MLflow record with the cell, seed and config hash added as
    tags and params (the MLflow UI compares cells by them)."""
    if is_skipped(run_record):
        return SKIPPED
    cell = {k: str(v) for k, v in plan["cell"].items()}
    extra = {**cell, "config_hash": str(plan["config_hash"]), "pipeline": "sweep"}
    return {
        **run_record,
        "tags": {**run_record.get("tags", {}), **extra},
        "params": {**run_record.get("params", {}), **cell},
    }


def predict_renders(
    model: Any,
    manifest: pd.DataFrame,
    image_cache: ImageCache,
    config: Mapping[str, Any],
    plan: Mapping[str, Any],
) -> Any:
    """P(task) of every test image on the original, ``with_<kind>`` and ``no_lesion``
    renders of the sweep's image cache: ``image_id, render, p_<task>``."""
    if config["skip"] or is_skipped(model):
        return SKIPPED
    net = model_from_artifact(
        model, source=f"{config['variant']}.model", expected_architecture=config["architecture"]
    )
    setup = setup_for(config)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    renders = [ORIGINAL, render_name(plan["cell"]["artefact"])]
    renders += [NO_LESION] if NO_LESION in image_cache.renders else []
    frames = []
    for render in renders:
        wanted = set(image_cache.render_ids.get(render, test["image_id"]))
        subset = test[test["image_id"].isin(wanted)].reset_index(drop=True)
        probs, _ = predict_images(net, subset, image_cache, config, setup, render=render)
        frame = predictions_frame(subset, probs, net.tasks, config["variant"])
        frames.append(frame.drop(columns=["split", "model"]).assign(render=render))
    out = pd.concat(frames, ignore_index=True)
    return out[["image_id", "render", *[c for c in out.columns if c.startswith("p_")]]]


def attribute_saliency(
    heatmaps: Any,
    cell_cache: Any,
    image_cache: ImageCache,
    plan: Mapping[str, Any],
    task: str,
) -> Any:
    """Per-image lesion localisation and artefact attribution of every saliency method
    (``cxr_spurious.sweep.attribution.saliency_table``)."""
    if is_skipped(heatmaps):
        return SKIPPED
    sets: Mapping[str, HeatmapSet] = heatmaps
    ids = sorted({str(i) for s in sets.values() for i in s.index["image_id"]})
    rows = cell_cache.rows(ids)
    lesions = np.asarray(cell_cache.masks[rows, cell_cache.task_index(task)])
    artefacts = np.asarray(cell_cache.spurious[rows, 0])
    if artefacts.shape[1:] != (image_cache.size, image_cache.size):
        raise ContractError(
            f"{plan['cell']['artefact']}: artefact masks {artefacts.shape} do "
            f"not match the cache size {image_cache.size}"
        )
    return saliency_table(sets, ids, lesions, artefacts, task=task)


def summarise_cell(
    render_predictions: Any,
    saliency: Any,
    manifest: Any,
    plan: Mapping[str, Any],
    task: str,
    metrics: Mapping[str, Any],
) -> Any:
    """One ``sweep_models`` row: the cell, seed, config hash and ``model_metrics``.

    Raises:
        ParameterError: a ``sweep.metrics`` setting missing or out of range, naming its key
            (``sweep.metrics.n_boot``: an integer >= 1; ``ci_level``: in (0, 1);
            ``max_dropped_share``: in [0, 1]; ``seed``: an integer in [0, 2**32 - 1]).
    """
    if is_skipped(render_predictions):
        return SKIPPED
    section = "sweep.metrics"
    n_boot = check_n_boot(_setting(metrics, section, "n_boot"), f"{section}.n_boot")
    seed = check_seed(_setting(metrics, section, "seed"), f"{section}.seed")
    level = check_ci_level(_setting(metrics, section, "ci_level"), f"{section}.ci_level")
    share = check_max_dropped_share(
        _setting(metrics, section, "max_dropped_share"), f"{section}.max_dropped_share"
    )
    cell = Cell(**plan["cell"])
    has = manifest.set_index("image_id")[ARTEFACT_COLUMN].astype(bool)
    table = render_table(render_predictions, manifest, has, task=task, artefact=cell.artefact)
    values = model_metrics(
        table,
        None if is_skipped(saliency) else saliency,
        n_boot=n_boot,
        seed=seed,
        level=level,
        max_dropped_share=share,
        label=cell.namespace,
    )
    return _plain(model_row(cell, values, plan["config_hash"]))


def _setting(params: Mapping[str, Any] | None, section: str, name: str) -> Any:
    """``params[name]``, or a ``ParameterError`` naming ``<section>.<name>`` when it is not
    set (the value itself is checked by the caller)."""
    if not isinstance(params, Mapping):
        raise ParameterError(section, f"must be a mapping of settings, got {params!r}")
    if name not in params:
        raise ParameterError(f"{section}.{name}", "is missing")
    return params[name]


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready values (numpy scalars as Python numbers)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def collect_sweep_models(*rows_then_plans: Any) -> pd.DataFrame:
    """``sweep_models``: one row per trained model of the current configuration.

    The inputs are every cell's ``sweep_row``, then every cell's ``plan``, in the same cell
    order (``pipeline.create_collectors``). A row is kept only when its ``config_hash`` is
    the one ``plan_cell`` computed for this run's configuration. Two kinds of cell are left
    out, each with a warning naming the cells:

    * cells without a row (``training.only`` skipped them and they were never trained);
    * *stale* cells: a hashed setting changed since the row was written, but
      ``training.only`` did not select the cell, so it was not retrained and its row file
      still holds the old configuration's numbers.

    Stale rows are left out rather than kept: a row of another configuration would be
    averaged with, and paired against, rows of this one (e.g. ``seg`` at 8 epochs minus
    ``erm`` at 4), and every table would carry the mix unmarked. Leaving them out keeps
    every number of ``sweep_models`` and the tables from one configuration; the cells and
    pairs they belonged to are absent (``n/a``) until they are retrained.

    Raises:
        ContractError: the inputs are not rows and plans in equal numbers.
        StaleOutputError: no cell has a row of the current configuration and some cells
            hold rows of an earlier one (named, with what to rerun).
        ParameterError: ``training.only`` selected no cell and no cell has any row.
    """
    if len(rows_then_plans) % 2:
        raise ContractError(
            f"collect_sweep_models: expected every cell's row then its plan, got "
            f"{len(rows_then_plans)} inputs (an odd number)"
        )
    half = len(rows_then_plans) // 2
    rows, plans = rows_then_plans[:half], rows_then_plans[half:]
    names = [str(p["variant"]["name"]) for p in plans]
    missing = [n for n, r in zip(names, rows) if is_skipped(r)]
    stale = [
        n
        for n, r, p in zip(names, rows, plans)
        if not is_skipped(r) and r.get("config_hash") != p["config_hash"]
    ]
    if missing:
        logger.warning(
            "sweep_models: %d of %d sweep cells have no row (skipped by training.only and "
            "never trained): %s",
            len(missing),
            len(rows),
            ", ".join(missing),
        )
    if stale:
        logger.warning(
            "sweep_models: %d of %d sweep cells left out, stale: configuration changed but "
            "the cell was not retrained (training.only); their rows hold the previous "
            "configuration's numbers. Run again with training.only selecting them (or "
            "without it) to retrain: %s",
            len(stale),
            len(rows),
            ", ".join(stale),
        )
    kept = [
        dict(r)
        for r, p in zip(rows, plans)
        if not is_skipped(r) and r.get("config_hash") == p["config_hash"]
    ]
    if not kept:
        if stale:
            raise StaleOutputError(
                f"sweep_models: no cell has a row of the current configuration; "
                f"{len(stale)} cell(s) hold rows of an earlier configuration that "
                f"training.only did not retrain ({', '.join(stale)}): run the sweep without "
                "training.only, or with training.only selecting them, to retrain them"
            )
        raise ParameterError(
            "training.only",
            f"selects none of the sweep's {len(rows)} cells and no cell has a row from an "
            "earlier run, so there is nothing to summarise; run the sweep without "
            "training.only, or with training.only naming a supervision or a cell's namespace",
        )
    return pd.DataFrame(kept)


def summarise_sweep(
    models: pd.DataFrame, summary: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``sweep_summary`` (per cell, across seeds) and ``sweep_paired_differences``.

    ``sweep_paired_differences`` gets ``<metric>_p_adj`` beside each p-value:
    ``summary.multiplicity`` (``method`` holm | bonferroni | fdr_bh | none, ``family``
    metric: each metric within each pair and location fraction, over the grid's cells |
    table: every p-value), Holm within each metric and pair when it is not set.

    Raises:
        ParameterError: ``sweep.summary.ci_level`` not in (0, 1); ``sweep.summary.pairs``
            not a list of two different supervision names (``grid.SUPERVISIONS``), naming
            the pair (``sweep.summary.pairs[1]``); a bad ``sweep.summary.multiplicity``.
    """
    level = _summary_level(summary)
    pairs = check_pairs(_setting(summary, "sweep.summary", "pairs"), "sweep.summary.pairs")
    method, family = read_settings(summary.get("multiplicity"), "sweep.summary.multiplicity")
    cells = summarise_cells(models, level=level)
    metrics = metric_columns(models)
    paired = paired_differences(models, pairs, metrics=metrics, level=level)
    if not paired.empty:
        paired = adjust_table(
            paired,
            metrics,
            method=method,
            family=family,
            groups=PAIR_FAMILY,
            source="sweep_paired_differences",
        )
        paired["p_adj_note"] = family_note(method, family, PAIR_FAMILY)
    return cells, paired


def _summary_level(summary_params: Mapping[str, Any]) -> float:
    """``sweep.summary.ci_level``, checked (in (0, 1))."""
    value = _setting(summary_params, "sweep.summary", "ci_level")
    return check_ci_level(value, "sweep.summary.ci_level")


def _detection_level(detection_params: Mapping[str, Any]) -> float:
    """``sweep.detection.ci_level``, checked (in (0, 1))."""
    value = _setting(detection_params, "sweep.detection", "ci_level")
    return check_ci_level(value, "sweep.detection.ci_level")


def detect_shortcuts(models: pd.DataFrame, detection: Mapping[str, Any]) -> pd.DataFrame:
    """``shortcut_detection``: per saliency method and artefact.

    Every setting is checked before the table is read, naming its key: a fraction for
    ``n_boot`` or a boolean for a number is refused, not truncated or read as 1.

    Raises:
        ParameterError: ``sweep.detection.seed`` not an integer in [0, 2**32 - 1];
            ``reliance_threshold`` not a finite number; ``flag_k`` not > 0; ``n_boot`` not
            an integer >= 1; ``ci_level`` not in (0, 1); any of them missing.
    """
    section = "sweep.detection"
    seed = check_seed(_setting(detection, section, "seed"), f"{section}.seed")
    threshold = check_reliance_threshold(
        _setting(detection, section, "reliance_threshold"), f"{section}.reliance_threshold"
    )
    flag_k = check_flag_k(_setting(detection, section, "flag_k"), f"{section}.flag_k")
    n_boot = check_n_boot(_setting(detection, section, "n_boot"), f"{section}.n_boot")
    level = _detection_level(detection)
    return shortcut_detection(
        models,
        reliance_threshold=threshold,
        flag_k=flag_k,
        n_boot=n_boot,
        seed=seed,
        level=level,
    )


def plot_sweep_strength(summary: pd.DataFrame, summary_params: Mapping[str, Any]) -> Figure:
    """Robust AUROC and reliance against confounding strength (``plot_strength_curves``),
    the band at ``sweep.summary.ci_level`` (checked: in (0, 1))."""
    return plot_strength_curves(summary, level=_summary_level(summary_params))


def plot_sweep_detection(detection: pd.DataFrame, detection_params: Mapping[str, Any]) -> Figure:
    """Detection AUROC per saliency method and artefact (``plot_detection``), the CI at
    ``sweep.detection.ci_level`` (checked: in (0, 1))."""
    return plot_detection(detection, level=_detection_level(detection_params))


def write_sweep_tables(
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    detection: pd.DataFrame,
    tables: Mapping[str, Any],
    summary_params: Mapping[str, Any],
    detection_params: Mapping[str, Any],
    grid: Mapping[str, Any] | None = None,
) -> str:
    """``sweep_tables``: the findings as Markdown (``cxr_spurious.sweep.tables``), naming
    the levels of ``sweep.summary.ci_level`` and ``sweep.detection.ci_level``.

    ``sweep.tables.study_cell`` is null or ``{artefact, strength}``: ``artefact`` one of the
    phantom's artefact kinds, ``strength`` one of the grid's strength labels (``grid``,
    ``sweep.grid``; without it, the strengths of ``summary``). A valid cell that this run
    has no row of (not in the grid, or no model of it trained) leaves its section out with
    a warning.

    Raises:
        ParameterError: ``sweep.tables.onset_threshold`` not a finite number;
            ``sweep.tables.study_cell`` not null or a mapping of exactly ``artefact`` and
            ``strength``, or naming an unknown artefact kind or strength label (the valid
            names listed); a level not in (0, 1).
    """
    threshold = check_number(
        _setting(tables, "sweep.tables", "onset_threshold"), "sweep.tables.onset_threshold"
    )
    level = _summary_level(summary_params)
    detection_level = _detection_level(detection_params)
    study_cell = _study_cell(tables.get("study_cell"), summary, grid)
    return render_sweep_tables(
        summary,
        paired,
        detection,
        onset_threshold=threshold,
        study_cell=study_cell,
        level=level,
        detection_level=detection_level,
    )


def _study_cell(
    cell: Any, summary: pd.DataFrame, grid: Mapping[str, Any] | None
) -> tuple[str, str] | None:
    """``sweep.tables.study_cell`` as ``(artefact, strength)``, checked (see
    ``write_sweep_tables``); a warning when this run has no row of that cell."""
    key = "sweep.tables.study_cell"
    if cell is None:
        return None
    if not isinstance(cell, Mapping) or set(cell) != {"artefact", "strength"}:
        got = sorted(map(str, cell)) if isinstance(cell, Mapping) else repr(cell)
        raise ParameterError(
            key, f"must be null or a mapping with the keys ['artefact', 'strength'], got {got}"
        )
    artefact, strength = cell["artefact"], cell["strength"]
    if artefact not in ARTEFACT_KINDS:
        raise ParameterError(
            f"{key}.artefact",
            f"unknown artefact kind {artefact!r}; valid names are {sorted(ARTEFACT_KINDS)}",
        )
    if grid is not None:
        cells = expand_grid(grid)
        strengths = list(dict.fromkeys(c.strength for c in cells))
        artefacts = sorted({c.artefact for c in cells})
        source = "the grid's strength labels (sweep.grid.strengths)"
    else:
        has = "strength" in summary.columns
        strengths = sorted(summary["strength"].astype(str).unique()) if has else []
        artefacts = None
        source = "the strengths of sweep_summary"
    if strength not in strengths:
        raise ParameterError(
            f"{key}.strength",
            f"unknown strength {strength!r}; valid names are {source}: {strengths}",
        )
    columns = {"artefact", "strength"} <= set(summary.columns)
    here = columns and bool(
        ((summary["artefact"] == artefact) & (summary["strength"] == strength)).any()
    )
    if not here:
        why = (
            f"the grid's artefacts {artefacts} leave it out"
            if artefacts is not None and artefact not in artefacts
            else "sweep_summary has no row of it: no model of the cell was trained in this "
            "configuration"
        )
        logger.warning(
            "sweep_tables: %s %s / %s is not in this run's results (%s); its section is left out",
            key,
            artefact,
            strength,
            why,
        )
    return str(artefact), str(strength)
