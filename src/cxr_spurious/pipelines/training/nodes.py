"""Thin nodes of the ``training`` pipeline; the work is in ``cxr_spurious.training``.

Every node of a variant that ``training.only`` does not select returns ``SKIPPED``
(its outputs are wrapped in ``SkippableDataset``, so previous artifacts are kept).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.datasets.skippable import SKIPPED
from cxr_spurious.models import model_from_artifact
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.training.checkpoints import checkpoint_folder, training_data_digest
from cxr_spurious.training.config import model_config, resolve_training_config, variant_selected
from cxr_spurious.training.data import build_training_table, split_training_table
from cxr_spurious.training.device import precision_name, setup_for
from cxr_spurious.training.distributed import distributed_setup
from cxr_spurious.training.engine import fit
from cxr_spurious.training.outputs import (
    RENDERS,
    TRAIN_SET_FIELDS,
    TRAIN_SET_KEY,
    TRAINED_ON_KEY,
    compute_test_metrics,
    embeddings_frame,
    flat_metrics,
    predict_images,
    predictions_frame,
    recorded_train_set,
    recorded_trained_as,
    recorded_trained_on,
    resolved_precision_and_device,
    run_name,
    run_params,
    train_set,
    trained_as,
    trained_on,
    training_curves,
    training_record,
)
from cxr_spurious.training.provenance import MODEL_FINGERPRINT_KEY, model_fingerprint

logger = logging.getLogger(__name__)


def resolve_config(
    training: Mapping[str, Any],
    variant: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge shared and variant parameters and apply the ``training.only`` gate.

    Args:
        training: The ``training`` parameters (shared defaults, ``only`` gate, ``variants``).
        variant: This variant's block (``name``, ``supervision``, overrides).
        overrides: Optional ``{"variant": {...}, "skip": bool}`` made by an upstream node:
            keys merged over ``variant``, and a skip on top of the gate (the sweep's cells).

    Returns:
        The resolved config with ``skip`` true when the gate does not select the variant
        (or ``overrides`` skips it).
    """
    extra = dict(overrides or {})
    cfg = resolve_training_config(training, {**variant, **dict(extra.get("variant") or {})})
    if extra.get("skip"):
        cfg["skip"] = True
        logger.info("Variant '%s' skipped: %s", cfg["variant"], extra.get("reason", "overrides"))
        return cfg
    cfg["skip"] = not variant_selected(training, cfg)
    if cfg["skip"]:
        logger.info(
            "Variant '%s' not selected by training.only=%s: skipped, previous artifacts kept",
            cfg["variant"],
            training.get("only"),
        )
    return cfg


def prepare_training_table(
    resampled_manifest: pd.DataFrame, image_cache: ImageCache, config: dict[str, Any]
) -> pd.DataFrame | object:
    """Validated training table (train rows from the resampled manifest, val/test rows too)."""
    if config["skip"]:
        return SKIPPED
    return build_training_table(resampled_manifest, image_cache, config)


def train_model(
    training_table: pd.DataFrame, image_cache: ImageCache, config: dict[str, Any]
) -> tuple[Any, Any]:
    """Fit the variant; return the selected model artifact and the per-epoch history.

    Checkpoints go to ``<checkpoint_dir>/<variant>/<fingerprint>/`` (a documented side channel
    used by ``training.resume``); the model itself goes through the catalog. Inside an initialised
    process group (``torchrun -m cxr_spurious.training.distributed``) every rank runs this
    node and trains under DDP; the group's rank and size come from ``distributed_setup``.
    The artifact records how the model trained (``trained_as``: precision, device type,
    processes), on what (``trained_on``: digests of the training data and code) and the
    train split its MLflow run reports (``train_set``: resampling name, row and image
    counts), so a record assembled later describes this model, not the table of that day.
    """
    if config["skip"]:
        return SKIPPED, SKIPPED
    setup, rank, world = distributed_setup(config)
    train, val = split_training_table(training_table)
    result = fit(
        train,
        val,
        image_cache,
        config,
        setup,
        checkpoint_dir=checkpoint_folder(config["checkpoint_dir"], config["variant"]),
        rank=rank,
        world=world,
    )
    logger.info(
        "[%s] selected epoch %d (stopped: %s)", config["variant"], result.best_epoch, result.stopped
    )
    artifact = {
        "state_dict": result.state_dict,
        "config": model_config(config),
        "variant": config["variant"],
        "fingerprint": result.fingerprint,
        "trained_as": trained_as(setup, world),
        "trained_on": trained_on(result.fingerprint_items),
        TRAIN_SET_KEY: train_set(config, training_table),
    }
    return artifact, result.history


def predict_manifest(
    model: Any, manifest: pd.DataFrame, image_cache: ImageCache, config: dict[str, Any]
) -> tuple[Any, Any]:
    """Per-image probabilities (every split) and penultimate embeddings."""
    if config["skip"]:
        return SKIPPED, SKIPPED
    net = model_from_artifact(
        model, source=f"{config['variant']}.model", expected_architecture=config["architecture"]
    )
    probs, embs = predict_images(net, manifest, image_cache, config, setup_for(config))
    return predictions_frame(manifest, probs, net.tasks, config["variant"]), embeddings_frame(
        manifest["image_id"].astype(str).tolist(), embs
    )


def predict_counterfactuals(
    model: Any, manifest: pd.DataFrame, image_cache: ImageCache, config: dict[str, Any]
) -> Any:
    """Test images scored on each cache render available (original, no_tube, no_lesion)."""
    if config["skip"]:
        return SKIPPED
    net = model_from_artifact(
        model, source=f"{config['variant']}.model", expected_architecture=config["architecture"]
    )
    setup = setup_for(config)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    frames = []
    for render in RENDERS:
        if render != "original" and render not in image_cache.renders:
            logger.warning(
                "Image cache has no '%s' render; counterfactual predictions skip it", render
            )
            continue
        ids = set(image_cache.render_ids.get(render, test["image_id"]))
        subset = test[test["image_id"].isin(ids)].reset_index(drop=True)
        probs, _ = predict_images(net, subset, image_cache, config, setup, render=render)
        frame = predictions_frame(subset, probs, net.tasks, config["variant"]).drop(
            columns=["split", "model"]
        )
        frames.append(frame.assign(render=render))
    out = pd.concat(frames, ignore_index=True)
    return out[["image_id", "render", *[c for c in out.columns if c.startswith("p_")]]]


def evaluate_test_metrics(
    predictions: Any,
    manifest: pd.DataFrame,
    config: dict[str, Any],
    model: Mapping[str, Any] | None = None,
) -> Any:
    """Test AUROC, robust and reverse AUROC on ``training.subgroup`` with bootstrap CIs.

    The trained model's supervision and architecture travel with the metrics, so reports
    name what was trained even when a run overrode the variant on the command line; so do
    the CI settings (``ci_level``, ``n_boot``) and the training configuration
    (``training_record``), so a later run that reuses the model (the study, the comparison)
    can check them against its own parameters. The record holds the precision (``bf16`` /
    ``fp32``), device type and DDP process count the model trained with, as the model
    artifact records them (``trained_as``): not ``auto`` as written, and not what they
    would resolve to on the machine that evaluates (``kedro run --from-nodes`` elsewhere).
    A model file that predates the record gets what they resolve to here, with a warning.
    The model artifact's ``trained_on`` (digests of the training data and the training
    code) is copied as it is, so the comparison can check that the model it reuses was
    trained on its data by its code; a model file without it leaves it out.
    """
    if config["skip"]:
        return SKIPPED
    metrics = compute_test_metrics(
        predictions,
        manifest,
        config["tasks"],
        config["subgroup"],
        n_boot=int(config["n_boot"]),
        seed=check_seed(config["seed"], "training.seed"),
        level=float(config["ci_level"]),
        max_dropped_share=float(config["max_dropped_share"]),
    )
    resolved = recorded_trained_as(model) if model is not None else None
    if resolved is None:
        resolved = resolved_precision_and_device(config)
        if model is not None:
            logger.warning(
                "[%s] the model file does not record the precision and device it trained "
                "with (written by an older version); test_metrics records what they resolve "
                "to here (%s), which is right only if it trained on this machine",
                config["variant"],
                ", ".join(f"{k}={v}" for k, v in resolved.items()),
            )
    provenance = (
        recorded_trained_on(model, f"{config['variant']}.model") if model is not None else None
    )
    fingerprint = model_fingerprint(model)
    return {
        "supervision": config["supervision"],
        "architecture": config["architecture"],
        **metrics,
        **training_record(config, resolved),
        **({TRAINED_ON_KEY: provenance} if provenance is not None else {}),
        # the artifact these metrics describe; heatmap sets record it too, so the study
        # can tell localization results of an earlier training of the model
        **({MODEL_FINGERPRINT_KEY: fingerprint} if fingerprint else {}),
    }


def plot_training_curves(training_history: Any, config: dict[str, Any]) -> Figure | object:
    """Loss and validation AUROC / robust AUROC per epoch."""
    if config["skip"]:
        return SKIPPED
    return _curves(training_history, config)


def _curves(training_history: pd.DataFrame, config: dict[str, Any]) -> Figure:
    return training_curves(
        training_history, f"{config['variant']} ({config['supervision']}, {config['architecture']})"
    )


#: The resampling of a run name whose model does not record its train split and whose
#: training data the training table no longer matches (``assemble_run_record``).
UNKNOWN_RESAMPLING = "unknown"


def assemble_run_record(
    config: dict[str, Any],
    training_table: Any,
    training_history: Any,
    metrics: Any,
    model: Any,
    image_cache: ImageCache | None = None,
) -> Any:
    """The MLflow record of one variant (see ``MlflowChildRunDataset``).

    The record describes the model it logs: the resampling name and the train row and image
    counts come from the model artifact (``train_set``, recorded by ``train_model``), not
    from this run's training table, which may be another one (``kedro run
    --only-missing-outputs`` after the resampling changed, with this model not retrained).
    A model file written before that record gets the table's values only when the table
    (with ``image_cache``) is the data it trained on (its ``trained_on`` data digest);
    otherwise the run is logged without them, its name says resampling ``unknown``, and a
    warning names the variant. The tags carry the model's ``model_fingerprint``, by which
    ``MlflowChildRunDataset`` finds the run of a model that has one.

    The curves figure is drawn again from the history (figures are write-only datasets, and
    a resumed run may skip ``plot_training_curves``).
    """
    if config["skip"]:
        return SKIPPED
    trained = _recorded_train_set(config, training_table, image_cache, model)
    resampling = trained["resampling"] if trained is not None else UNKNOWN_RESAMPLING
    params = run_params(
        config,
        resampling,
        trained["n_train_rows"] if trained is not None else 0,
        trained["n_train_images"] if trained is not None else 0,
    )
    if trained is None:
        params = {k: v for k, v in params.items() if k not in TRAIN_SET_FIELDS}
    history_cols = (
        "train_loss",
        "image_loss",
        "dense_loss",
        "val_auroc",
        "val_robust_auroc",
        "lr",
        "images_per_s",
        "data_wait_fraction",
    )
    fingerprint = model_fingerprint(model)
    return {
        "run_name": run_name(config, resampling),
        "tags": {
            "variant": config["variant"],
            "supervision": config["supervision"],
            "architecture": config["architecture"],
            # what `precision: auto` resolved to where the model trained
            "precision": (recorded_trained_as(model) or {}).get("precision")
            or precision_name(setup_for(config)),
            "pipeline": "training",
            # the trained model this run logs (``MlflowChildRunDataset`` looks it up by it)
            **({MODEL_FINGERPRINT_KEY: fingerprint} if fingerprint else {}),
        },
        "params": params,
        "metric_history": {c: training_history[c].astype(float).tolist() for c in history_cols},
        "metrics": {
            **flat_metrics(metrics),
            "selected_epoch": float(
                training_history.loc[training_history["selected"], "epoch"].max()
            ),
        },
        "figures": {"training_curves.png": _curves(training_history, config)},
        "model": model,  # the catalog's {"state_dict", "config"}: logged as a torch file, no pickle
    }


def _recorded_train_set(
    config: Mapping[str, Any],
    training_table: pd.DataFrame,
    image_cache: ImageCache | None,
    model: Mapping[str, Any],
) -> dict[str, Any] | None:
    """The model's train split as its MLflow run reports it (``train_set``): recorded in
    the artifact; for an artifact without the record, the training table's when the model
    trained on it (the ``trained_on`` data digest equals the table's); else None, with a
    warning naming the variant."""
    variant = config["variant"]
    source = f"{variant}.model"
    recorded = recorded_train_set(model, source)
    if recorded is not None:
        return recorded
    provenance = recorded_trained_on(model, source)
    if provenance is None:
        why = "nor the digest of its training data (trained_on)"
    elif image_cache is None:
        why = "and no image cache was given to check its training data digest against"
    elif provenance["data"] != training_data_digest(
        *split_training_table(training_table), image_cache
    ):
        why = (
            "and it was trained on other data than the training table holds now "
            "(resampled_manifest or the image cache changed since it was trained)"
        )
    else:
        return train_set(config, training_table)
    logger.warning(
        "[%s] the model file does not record the train split it was fitted on (written by "
        "an older version) %s: its MLflow run is logged without resampling, n_train_rows "
        "and n_train_images (resampling '%s' in the run name); retrain it for a full "
        "record (kedro run --pipeline training --params training.only=%s)",
        variant,
        why,
        UNKNOWN_RESAMPLING,
        variant,
    )
    return None
