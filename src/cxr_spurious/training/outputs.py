"""Tables, metrics, figures and MLflow records built from a trained model.

Everything here is pure given its inputs, except ``resolved_precision_and_device`` (what
this machine resolves ``precision`` / ``device`` to); the Kedro nodes of the ``training``
pipeline are thin calls into these functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from cxr_spurious.errors import ContractError
from cxr_spurious.models import CXRModel
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.stats.bootstrap import MAX_DROPPED_SHARE, bootstrap, bootstrap_or_note
from cxr_spurious.stats.metrics import auroc, reverse_auroc, robust_auroc, undefined_pairing_note
from cxr_spurious.training.checkpoints import NOT_RESULT_KEYS
from cxr_spurious.training.config import DEFAULTS
from cxr_spurious.training.data import CacheBatches, make_loader, subgroup_column
from cxr_spurious.training.device import DeviceSetup, precision_name, resolve_device
from cxr_spurious.training.distributed import process_group
from cxr_spurious.training.engine import predict

RENDERS: tuple[str, ...] = ("original", "no_tube", "no_lesion")
# The keys of ``test_metrics`` that record how it was made (settings, not findings: kept
# out of ``flat_metrics``): the CI settings and ``training_record``'s configuration.
CI_SETTING_KEYS: tuple[str, ...] = ("ci_level", "n_boot")
TRAINING_RECORD_KEYS: tuple[str, ...] = ("training_config", "training_config_digest")
# The key of a model artifact and of its ``test_metrics`` that records what the model was
# trained on: the digest of its training data, of the training code and, for a run from
# pretrained weights, of the weights file (``trained_on``).
TRAINED_ON_KEY = "trained_on"
# The key of a model artifact that records the train split the model was fitted on, as
# its MLflow run reports it (``train_set``): the resampling's name and the row and image
# counts. A run logged later (``kedro run --only-missing-outputs``) reads them from the
# model, not from whatever training table the project holds by then.
TRAIN_SET_KEY = "train_set"
TRAIN_SET_FIELDS: tuple[str, ...] = ("resampling", "n_train_rows", "n_train_images")
# Resolved training keys left out of ``training_record``: those the checkpoint fingerprint
# leaves out (where files go, progress, loader workers, the test-metric CI settings, which
# ``test_metrics`` records apart) except the stopping rules, which change a finished run's
# model (the fingerprint leaves them out only so that a resumed run may change them); and
# the run's own labels: its name, the ``training.only`` gate, the resampling label of run
# names and the inference batch (probabilities do not depend on it).
NOT_RECORDED_KEYS: frozenset[str] = (
    NOT_RESULT_KEYS - {"max_steps", "time_budget_s", "patience"}
) | {"variant", "skip", "only", "resampling", "eval_batch_size"}
# Keys that ``training_record`` records as training resolved them on its machine
# (``resolved_precision_and_device``), not as written: ``auto`` is bf16 on one machine and
# fp32 on another, and bf16 and fp32 runs give different numbers.
RESOLVED_KEYS: tuple[str, ...] = ("precision", "device")


def _inference_table(
    manifest: pd.DataFrame, cache: ImageCache, tasks: Sequence[str]
) -> pd.DataFrame:
    """A minimal table for ``CacheBatches`` (no labels needed for inference)."""
    table = pd.DataFrame(
        {
            "image_id": manifest["image_id"].astype(str).to_numpy(),
            "split": manifest["split"].astype(str).to_numpy(),
        }
    )
    table["row"] = cache.rows(table["image_id"])
    for task in tasks:
        table["y_" + task] = np.nan
    table["weight"], table["augment"], table["group"], table["loc"] = 1.0, False, -1, False
    return table


def predict_images(
    model: CXRModel,
    manifest: pd.DataFrame,
    cache: ImageCache,
    cfg: Mapping[str, Any],
    setup: DeviceSetup,
    *,
    render: str = "original",
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and embeddings of the manifest's images (cache render ``render``)."""
    dataset = CacheBatches(
        _inference_table(manifest, cache, model.tasks), cache, cfg, train=False, render=render
    )
    loader = make_loader(
        dataset,
        int(cfg["eval_batch_size"]),
        seed=0,
        shuffle=False,
        drop_last=False,
        num_workers=int(cfg["num_workers"]),
        pin_memory=setup.pin_memory,
    )
    model = model.to(setup.device)
    if setup.channels_last:  # match the inputs' memory format (else every layer converts)
        model = model.to(memory_format=torch.channels_last)
    return predict(
        model,
        loader,
        setup,
        progress=bool(cfg["progress"]),
        desc=f"predict {render}",
    )


def predictions_frame(
    manifest: pd.DataFrame, probs: np.ndarray, tasks: Sequence[str], model_name: str
) -> pd.DataFrame:
    """``image_id, split, model, p_<task>...`` (one row per manifest image)."""
    out = pd.DataFrame(
        {
            "image_id": manifest["image_id"].astype(str).to_numpy(),
            "split": manifest["split"].astype(str).to_numpy(),
            "model": model_name,
        }
    )
    for j, task in enumerate(tasks):
        out["p_" + task] = probs[:, j].astype(float)
    return out


def embeddings_frame(image_ids: Sequence[str], embeddings: np.ndarray) -> pd.DataFrame:
    """``image_id, e0..e{D-1}`` (float32)."""
    cols = {f"e{j}": embeddings[:, j].astype(np.float32) for j in range(embeddings.shape[1])}
    return pd.DataFrame({"image_id": list(image_ids), **cols})


def compute_test_metrics(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    tasks: Sequence[str],
    subgroup: str,
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
) -> dict[str, Any]:
    """Test-split AUROC, robust and reverse AUROC on ``subgroup`` with bootstrap CIs.

    Bootstrap resamples patients (clusters) when ``patient_id`` is present. Each CI comes
    with ``<metric>_dropped``, its undefined replicates (a resample without a positive or a
    negative). Above ``max_dropped_share`` the AUROC raises ``BootstrapDropError``; robust
    and reverse AUROC, which compare two ``subgroup`` groups and may legitimately be
    undefined in many resamples of a small test set, get a NaN CI and a ``ci_note`` instead.

    Returns:
        ``{"n_test": n, "subgroup": name, "ci_level": level, "n_boot": n_boot, "<task>":
        {"auroc", "auroc_lo", "auroc_hi", "auroc_dropped", "robust_auroc", ...,
        "reverse_auroc", ..., "ci_note"}, "mean_auroc": ..., "mean_robust_auroc": ...}``
        (``ci_note``: ``""`` unless a CI was withheld; ``ci_level`` and ``n_boot`` record
        the CI settings, which the study reads when training was skipped).
    """
    test = manifest[manifest["split"] == "test"].merge(
        predictions[["image_id", *("p_" + t for t in tasks)]],
        on="image_id",
        how="left",
        validate="one_to_one",
    )
    # training warned already when the column is missing (build_training_table)
    spurious = subgroup_column(test, subgroup, "manifest", warn_missing=False)
    clusters = test["patient_id"].astype(str).to_numpy() if "patient_id" in test else None
    out: dict[str, Any] = {
        "n_test": len(test),
        "subgroup": subgroup,
        "ci_level": float(level),
        "n_boot": int(n_boot),
    }
    for task in tasks:
        y = pd.to_numeric(test[task], errors="coerce").to_numpy(float)
        p = test["p_" + task].to_numpy(float)
        entry: dict[str, Any] = {}
        notes = []
        kw: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "clusters": clusters, "level": level}
        share = float(max_dropped_share)
        for name, fn in (
            ("auroc", lambda i, y=y, p=p: auroc(y[i], p[i])),
            ("robust_auroc", lambda i, y=y, p=p: robust_auroc(y[i], p[i], spurious[i])),
            ("reverse_auroc", lambda i, y=y, p=p: reverse_auroc(y[i], p[i], spurious[i])),
        ):
            desc = f"test {name} {task}" + (f"/{subgroup}" if name != "auroc" else "")
            if name == "auroc":
                res = bootstrap(fn, len(test), max_dropped_share=share, desc=desc, **kw)
            else:
                res, note = bootstrap_or_note(
                    fn, len(test), max_dropped_share=share, desc=desc, **kw
                )
                if not np.isfinite(res.estimate):  # a side is empty: say which, not a bare NaN
                    note = undefined_pairing_note(y, spurious, name, subgroup)
                if note:
                    notes.append(f"{name}: {note}")
            entry.update(res.as_dict(name))
            entry[f"{name}_dropped"] = float(res.n_dropped)
        entry["ci_note"] = "; ".join(notes)
        out[task] = entry
    out["mean_auroc"] = float(np.nanmean([out[t]["auroc"] for t in tasks]))
    out["mean_robust_auroc"] = float(np.nanmean([out[t]["robust_auroc"] for t in tasks]))
    return out


def trained_as(setup: DeviceSetup, world: int = 1) -> dict[str, Any]:
    """The precision, device type and process count a model trains with under ``setup``.

    Args:
        setup: The device settings training uses (``training.device.setup_for``).
        world: Number of DDP processes.

    Returns:
        ``{"precision": "bf16" | "fp32", "device": "cpu" | "cuda" | "mps"}``, with
        ``"processes": world`` when above 1 (1- and N-process runs give different weights).
    """
    out: dict[str, Any] = {"precision": precision_name(setup), "device": setup.device.type}
    if int(world) > 1:
        out["processes"] = int(world)
    return out


def resolved_precision_and_device(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a training config's ``precision`` and ``device`` resolve to in this process.

    Resolved as the training node resolves them (``training.device.setup_for``), with
    ``training.config.DEFAULTS`` where a key is unset, and the process group's size; the
    sweep hashes it, and the comparison checks the study's models against it.

    Returns:
        ``trained_as``: ``{"precision": "bf16" | "fp32", "device": "cpu" | "cuda" | "mps"}``
        (the device type: ``cuda:1`` trains as ``cuda:0`` does), with ``processes`` inside
        a process group of several.

    Raises:
        ParameterError: the device is not available here or the precision is unknown
            (``training.device.resolve_device``).
    """
    device = config.get("device", DEFAULTS["device"])
    precision = config.get("precision", DEFAULTS["precision"])
    setup = resolve_device(str(device), precision=str(precision))
    return trained_as(setup, process_group()[1])


def trained_on(items: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a model trained on, from its run's ``result_fingerprint`` items.

    Returns:
        ``{"data": digest, "code": {module: digest}}``: ``data`` the digest of the train
        and validation rows and the image cache (``checkpoints.training_data_digest``),
        ``code`` the source digest of each module of ``checkpoints.RESULT_MODULES``; with
        ``"weights": sha256`` of the pretrained weights file when the run started from one
        (``checkpoints.weights_digest``: ``training.pretrained`` is only its path, the same
        for other weights put there). None without items (a result read back from a
        spawned process group).
    """
    if items is None:
        return None
    code = {str(k): str(v) for k, v in items["_code"].items()}
    record: dict[str, Any] = {"data": str(items["_data"]), "code": code}
    if items.get("_weights") is not None:
        record["weights"] = str(items["_weights"])
    return record


def recorded_trained_on(record: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """The ``trained_on`` record of a model artifact or ``test_metrics``; None when absent.

    Returns:
        ``{"data": str, "code": {module: str}}``, with ``"weights": str`` (the pretrained
        weights file's SHA-256, ``trained_on``) where the record has it.

    Raises:
        ContractError: the record is there but not ``{"data": str, "code": {module: str}}``
            (and an optional ``"weights": str``); ``source`` names what it was read from.
    """
    value = record.get(TRAINED_ON_KEY)
    if value is None:
        return None
    if (
        not isinstance(value, Mapping)
        or not isinstance(value.get("data"), str)
        or not isinstance(value.get("code"), Mapping)
        or not isinstance(value.get("weights", ""), str)
    ):
        raise ContractError(
            f"{source}: '{TRAINED_ON_KEY}' should map 'data' to the training data's digest "
            "and 'code' to {module: source digest} (and 'weights', where there is one, to "
            f"the pretrained weights file's SHA-256), got {value!r}"
        )
    out: dict[str, Any] = {"data": value["data"], "code": dict(value["code"])}
    if "weights" in value:
        out["weights"] = value["weights"]
    return out


def train_set(cfg: Mapping[str, Any], table: pd.DataFrame) -> dict[str, Any]:
    """What the MLflow run of a model trained on ``table`` reports of its train split.

    Args:
        cfg: The variant's resolved training config (``training.resampling``, if set, names
            the resampling; ``resampling_name``).
        table: The training table the model is fitted on (``build_training_table``).

    Returns:
        ``{"resampling": name, "n_train_rows": rows, "n_train_images": unique images}`` of
        the table's ``train`` split (rows repeat under upsampling), stored in the model
        artifact as ``TRAIN_SET_KEY``.
    """
    train = table[table["split"] == "train"]
    return {
        "resampling": resampling_name(cfg, table),
        "n_train_rows": int(len(train)),
        "n_train_images": int(train["image_id"].nunique()),
    }


def recorded_train_set(artifact: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """The ``train_set`` record of a model artifact (``train_model``); None when absent
    (a model file written before the record existed).

    Raises:
        ContractError: the record is there but not ``{"resampling": str, "n_train_rows":
            int, "n_train_images": int}``; ``source`` names what it was read from.
    """
    value = artifact.get(TRAIN_SET_KEY)
    if value is None:
        return None
    if (
        not isinstance(value, Mapping)
        or not isinstance(value.get("resampling"), str)
        or not all(
            isinstance(value.get(k), int) and not isinstance(value.get(k), bool)
            for k in ("n_train_rows", "n_train_images")
        )
    ):
        raise ContractError(
            f"{source}: '{TRAIN_SET_KEY}' should map 'resampling' to the resampling's name "
            f"and 'n_train_rows', 'n_train_images' to counts, got {value!r}"
        )
    return {k: value[k] for k in TRAIN_SET_FIELDS}


def recorded_trained_as(artifact: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``trained_as`` record of a model artifact (``train_model``), None when absent.

    Raises:
        ContractError: the record is there but not a ``trained_as`` mapping.
    """
    record = artifact.get("trained_as")
    if record is None:
        return None
    if not isinstance(record, Mapping) or not set(RESOLVED_KEYS) <= set(record):
        raise ContractError(
            f"model of variant '{artifact.get('variant')}': 'trained_as' should map "
            f"{list(RESOLVED_KEYS)} (and 'processes') to what training used, got {record!r}"
        )
    return dict(record)


def training_record(cfg: Mapping[str, Any], resolved: Mapping[str, str]) -> dict[str, Any]:
    """What ``test_metrics`` records of the training configuration of its model.

    Args:
        cfg: The variant's resolved training config (``resolve_training_config``, with the
            variant's overrides).
        resolved: What ``cfg``'s precision and device resolved to where the model trained
            (``trained_as``, stored in the model artifact): recorded for ``RESOLVED_KEYS`` in
            place of the values as written (``auto``), with ``processes`` when above 1.

    Returns:
        ``{"training_config": {key: value}, "training_config_digest": sha256}``: every
        resolved key except ``NOT_RECORDED_KEYS`` (JSON values, keys sorted; ``precision``
        and ``device`` from ``resolved``), and the SHA-256 of their JSON. Two runs with the
        same record trained under the same settings; a comparison that reuses a model
        checks it with ``recorded_differences``.
    """
    items = {k: v for k, v in sorted(cfg.items()) if k not in NOT_RECORDED_KEYS}
    items.update({k: resolved[k] for k in RESOLVED_KEYS})
    if int(resolved.get("processes", 1)) > 1:
        items["processes"] = int(resolved["processes"])  # DDP: only then, older records hold
    items = json.loads(json.dumps(items, sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
    return {"training_config": items, "training_config_digest": digest}


def recorded_differences(
    recorded: Mapping[str, Any], cfg: Mapping[str, Any], resolved: Mapping[str, str]
) -> dict[str, tuple[Any, Any]] | None:
    """The training keys where ``recorded`` (a ``test_metrics``) differs from ``cfg``.

    Args:
        recorded: A model's ``test_metrics``.
        cfg: The resolved training config the model should have been trained with.
        resolved: What ``cfg``'s precision and device resolve to on this machine
            (``resolved_precision_and_device``): the model should have trained at them.

    Returns:
        ``{key: (recorded value, value under cfg)}`` (a key missing on one side: None),
        empty when they agree; None when ``recorded`` has no ``training_record`` (written
        before the record existed).
    """
    config = recorded.get("training_config")
    if not isinstance(config, Mapping):
        return None
    expected = training_record(cfg, resolved)
    now = expected["training_config"]
    differs = {
        k: (config.get(k), now.get(k))
        for k in sorted(set(config) | set(now))
        if config.get(k) != now.get(k)
    }
    digest = recorded.get("training_config_digest")
    if not differs and digest != expected["training_config_digest"]:
        differs["training_config_digest"] = (digest, expected["training_config_digest"])
    return differs


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "test") -> dict[str, float]:
    """``{"test_<task>_auroc": v, ...}``: the numeric leaves of ``test_metrics``.

    The recorded settings (``CI_SETTING_KEYS``, ``TRAINING_RECORD_KEYS``, ``trained_on``)
    are not metrics and are left out.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in CI_SETTING_KEYS or key in TRAINING_RECORD_KEYS or key == TRAINED_ON_KEY:
            continue
        if isinstance(value, Mapping):
            out.update(
                {
                    f"{prefix}_{key}_{k}": float(v)
                    for k, v in value.items()
                    if isinstance(v, int | float)
                }
            )
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}_{key}"] = float(value)
    return out


def training_curves(history: pd.DataFrame, title: str) -> Figure:
    """Two panels: train loss per epoch; val AUROC and robust AUROC, selected epoch marked."""
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_loss, ax_auc = fig.subplots(1, 2)
    ax_loss.plot(history["epoch"], history["train_loss"], marker="o", label="train loss")
    if (history["dense_loss"] > 0).any():
        ax_loss.plot(
            history["epoch"], history["dense_loss"], marker=".", ls="--", label="dense part"
        )
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_loss.legend()
    ax_auc.plot(history["epoch"], history["val_auroc"], marker="o", label="val AUROC")
    ax_auc.plot(history["epoch"], history["val_robust_auroc"], marker="s", label="val robust AUROC")
    selected = history[history["selected"].astype(bool)]
    for epoch in selected["epoch"]:
        ax_auc.axvline(epoch, color="grey", ls=":", label="selected")
    ax_auc.set(xlabel="epoch", ylabel="AUROC", ylim=(0, 1.02), title="validation")
    ax_auc.legend(loc="lower right")
    fig.suptitle(title)
    return fig


def run_name(cfg: Mapping[str, Any], resampling: str) -> str:
    """``<variant>-<supervision>-<architecture>-<resampling>-seed<k>``."""
    return (
        f"{cfg['variant']}-{cfg['supervision']}-{cfg['architecture']}-"
        f"{resampling}-seed{cfg['seed']}"
    )


def resampling_name(cfg: Mapping[str, Any], manifest: pd.DataFrame) -> str:
    """``training.resampling`` if set, else the table's ``attrs``, else ``none``.

    The ``attrs`` key is ``resampling`` or ``strategy``.
    """
    if cfg.get("resampling"):
        return str(cfg["resampling"])
    for key in ("resampling", "strategy"):
        if manifest.attrs.get(key):
            return str(manifest.attrs[key])
    return "none"


def run_params(
    cfg: Mapping[str, Any], resampling: str, n_train: int, n_train_unique: int
) -> dict[str, Any]:
    """The parameter table of a variant's MLflow run."""
    keys = (
        "variant", "supervision", "architecture", "pretrained", "tasks", "batch_size", "lr",
        "weight_decay", "schedule", "epochs", "max_steps", "patience", "selection_metric",
        "subgroup", "seed", "deterministic", "location_fraction", "coarse_mode", "coarse_radius",
        "target_dilation", "multitask_weight", "dense_pooling", "pool_kernel", "objective",
    )  # fmt: skip
    params = {k: cfg.get(k) for k in keys}
    params["tasks"] = ",".join(cfg["tasks"])
    params.update(
        {"resampling": resampling, "n_train_rows": n_train, "n_train_images": n_train_unique}
    )
    return {k: ("null" if v is None else v) for k, v in params.items()}
