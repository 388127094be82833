"""Training configuration: shared defaults merged with one variant's overrides, validated.

The resolved config is a plain dict (it crosses Kedro nodes and is stored in checkpoints
and model artifacts). ``resolve_training_config`` is the single place that checks it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from cxr_spurious.errors import ParameterError, check_integer, check_number, unknown_name_error
from cxr_spurious.models import ARCHITECTURES, DENSE_ARCHITECTURES, POOLINGS
from cxr_spurious.stats.bootstrap import check_max_dropped_share
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.training.device import PRECISIONS

logger = logging.getLogger(__name__)

# What a variant learns from (``training.variants.<v>.supervision``): image labels only, or
# dense targets too (coarse masks, boxes, masks, masks + image labels).
SUPERVISIONS: tuple[str, ...] = ("erm", "coarse", "box", "seg", "multitask")
DENSE_SUPERVISIONS: frozenset[str] = frozenset({"coarse", "box", "seg", "multitask"})
SCHEDULES: tuple[str, ...] = ("cosine", "step", "constant")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
SELECTION_METRICS: tuple[str, ...] = ("auroc", "robust_auroc")
COARSE_MODES: tuple[str, ...] = ("dilate", "grid")

DEFAULTS: dict[str, Any] = {
    "supervision": None,
    "tasks": ["Pneumothorax"],
    "architecture": "resnet18",
    "pretrained": None,
    "batch_size": 32,
    "eval_batch_size": 32,
    "optimizer": "adamw",
    "lr": 1e-3,
    "momentum": 0.0,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "step_size": 3,
    "gamma": 0.1,
    "epochs": 6,
    "max_steps": None,
    "time_budget_s": None,
    "patience": None,
    "selection_metric": "auroc",
    "subgroup": "tube",
    "seed": 0,
    "deterministic": True,
    "device": "auto",
    "precision": "auto",
    "num_workers": 0,
    "location_fraction": 1.0,
    "coarse_mode": "dilate",
    "coarse_radius": 4,
    "grid_cell": 8,
    "target_dilation": 0,
    "multitask_weight": 1.0,
    "dense_pooling": "max",
    "pool_kernel": 5,
    "topk": 0.01,
    "base_channels": 16,
    "objective": "bce",
    "objective_params": {},
    "resume": False,
    "checkpoint_dir": "data/06_models/checkpoints",
    "keep_checkpoints": 2,
    "n_boot": 1000,
    "ci_level": 0.95,
    "max_dropped_share": 0.05,
    "resampling": None,
    "progress": True,
}
# Keys that only configure the gate or the variant list, not a model.
_NOT_MODEL_KEYS = {"variants", "only"}
# Keys set per variant only (a shared value would be overridden by every variant).
_VARIANT_ONLY_KEYS = {"supervision"}
# Keys renamed in the parameters (old name -> new key), in the shared ``training`` block and
# in a variant's block. Refused with a message naming both, so an old configuration fails
# instead of being ignored.
_RENAMED_SHARED_KEYS: dict[str, str] = {"method": "training.only"}
_RENAMED_VARIANT_KEYS: dict[str, str] = {"method": "supervision"}


def _choice(cfg: Mapping[str, Any], key: str, valid: Iterable[str], kind: str) -> None:
    if cfg[key] not in tuple(valid):
        raise unknown_name_error(kind, str(cfg[key]), valid, key=f"training.{key}")


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key of a merged config; raise ``ParameterError`` naming the key.

    Returns:
        The numeric keys converted: whole numbers as ``int`` (``--params`` parses
        ``training.epochs=1e1`` as ``10.0``), the others as ``float``.
    """
    _choice(cfg, "supervision", SUPERVISIONS, "supervision")
    _choice(cfg, "architecture", ARCHITECTURES, "architecture")
    _choice(cfg, "schedule", SCHEDULES, "schedule")
    _choice(cfg, "optimizer", OPTIMIZERS, "optimizer")
    _choice(cfg, "selection_metric", SELECTION_METRICS, "selection metric")
    _choice(cfg, "dense_pooling", POOLINGS, "dense pooling")
    _choice(cfg, "coarse_mode", COARSE_MODES, "coarse mode")
    _choice(cfg, "precision", PRECISIONS, "precision")
    if cfg["supervision"] in DENSE_SUPERVISIONS and cfg["architecture"] not in DENSE_ARCHITECTURES:
        raise ParameterError(
            "training.architecture",
            f"supervision '{cfg['supervision']}' needs a dense architecture "
            f"({', '.join(sorted(DENSE_ARCHITECTURES))}), got '{cfg['architecture']}'",
        )
    tasks = cfg["tasks"]
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise ParameterError(
            "training.tasks", f"must be a non-empty list of task names, got {tasks!r}"
        )
    out: dict[str, Any] = {}
    for key in (
        "batch_size",
        "eval_batch_size",
        "epochs",
        "keep_checkpoints",
        "n_boot",
        "pool_kernel",
        "base_channels",
        "grid_cell",
        "step_size",
    ):
        out[key] = check_integer(cfg[key], f"training.{key}", low=1)
    out["seed"] = check_seed(cfg["seed"], "training.seed")
    for key in ("num_workers", "coarse_radius", "target_dilation"):
        out[key] = check_integer(cfg[key], f"training.{key}", low=0)
    for key in ("max_steps", "patience"):
        if cfg[key] is not None:
            out[key] = check_integer(cfg[key], f"training.{key}", low=1, nullable=True)
    if cfg["time_budget_s"] is not None:
        out["time_budget_s"] = check_number(
            cfg["time_budget_s"],
            "training.time_budget_s",
            low=0,
            low_open=True,
            unit="of seconds",
            nullable=True,
        )
    out["max_dropped_share"] = check_max_dropped_share(
        cfg["max_dropped_share"], "training.max_dropped_share"
    )
    out["location_fraction"] = check_number(
        cfg["location_fraction"], "training.location_fraction", low=0, high=1
    )
    # SGD's momentum diverges at 1 and above; a step schedule's gamma of 0 stops learning
    # after the first decay. A learning rate of 0 is allowed (the untrained model, on purpose).
    out["lr"] = check_number(cfg["lr"], "training.lr", low=0)
    out["momentum"] = check_number(
        cfg["momentum"], "training.momentum", low=0, high=1, high_open=True
    )
    out["gamma"] = check_number(cfg["gamma"], "training.gamma", low=0, high=1, low_open=True)
    for key in ("weight_decay", "multitask_weight"):
        out[key] = check_number(cfg[key], f"training.{key}", low=0)
    out["topk"] = check_number(cfg["topk"], "training.topk", low=0, high=1, low_open=True)
    if out["pool_kernel"] % 2 == 0:
        raise ParameterError("training.pool_kernel", f"must be odd, got {cfg['pool_kernel']}")
    if cfg["device"] not in ("auto", "cpu", "mps") and not str(cfg["device"]).startswith("cuda"):
        raise ParameterError(
            "training.device", f"must be auto, cpu, mps or cuda[:k], got {cfg['device']!r}"
        )
    return out


def resolve_training_config(
    shared: Mapping[str, Any], variant: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge defaults < shared ``training`` params < one variant's block, and validate.

    Args:
        shared: The ``training`` parameters (its ``variants`` and ``only`` keys are ignored
            here; ``only`` is the gate, see ``variant_selected``).
        variant: The variant's block; must name the variant (``name``) and its
            ``supervision``.

    Returns:
        The full config, with ``variant`` set to the variant name.

    Raises:
        ParameterError: unknown keys, names or out-of-range values, or a key of the old
            spelling (``training.method``, ``training.variants.<v>.method``), naming the key.
    """
    _refuse_renamed_keys(shared, variant)
    if "name" not in variant or "supervision" not in variant:
        raise ParameterError(
            "training.variants.<name>",
            f"each variant needs 'name' and 'supervision'; got keys {sorted(variant)}",
        )
    allowed = set(DEFAULTS) | _NOT_MODEL_KEYS | {"name"}
    shared_allowed = allowed - _VARIANT_ONLY_KEYS
    for where, block, valid in (
        ("training", shared, shared_allowed),
        (f"training.variants.{variant['name']}", variant, allowed),
    ):
        unknown = sorted(set(block) - valid)
        if unknown:
            raise ParameterError(
                f"{where}.{unknown[0]}", f"unknown key(s) {unknown}; valid keys: {sorted(valid)}"
            )
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in shared.items() if k not in _NOT_MODEL_KEYS})
    cfg.update({k: v for k, v in variant.items() if k != "name"})
    cfg["variant"] = str(variant["name"])
    cfg["tasks"] = list(cfg["tasks"]) if not isinstance(cfg["tasks"], str) else cfg["tasks"]
    cfg["objective_params"] = dict(cfg.get("objective_params") or {})
    if cfg["supervision"] == "multitask":
        cfg["image_head"] = "linear"
    cfg.update(validate_config(cfg))
    _check_overridden_shared_values(cfg, shared, variant)
    _warn_unused_shared_values(shared)
    return cfg


def overridden_shared_keys(shared: Mapping[str, Any]) -> dict[str, list[str]]:
    """Shared ``training`` keys that every block of ``training.variants`` overrides.

    Such a shared value has no effect on any variant (``--params training.epochs=20`` would
    change nothing).

    Returns:
        ``{key: ["training.variants.<name>.<key>", ...]}`` (empty without variants).
    """
    variants = shared.get("variants") or {}
    if not isinstance(variants, Mapping) or not variants:
        return {}
    out: dict[str, list[str]] = {}
    for key in shared:
        if key in _NOT_MODEL_KEYS:
            continue
        if all(isinstance(block, Mapping) and key in block for block in variants.values()):
            out[key] = [f"training.variants.{name}.{key}" for name in variants]
    return out


_REPORTED_OVERRIDES: set[str] = set()


def _warn_unused_shared_values(shared: Mapping[str, Any]) -> None:
    """Log once per process each shared value that every variant overrides."""
    variants = shared.get("variants") or {}
    for key, overriding in overridden_shared_keys(shared).items():
        values = ", ".join(
            f"{where}={block[key]!r}" for where, block in zip(overriding, variants.values())
        )
        message = (
            f"training.{key}={shared[key]!r} has no effect: every study variant sets its own value"
            f" ({values}); change or remove those keys for the shared value to apply"
        )
        if message not in _REPORTED_OVERRIDES:
            _REPORTED_OVERRIDES.add(message)
            logger.warning(message)


def _check_overridden_shared_values(
    cfg: Mapping[str, Any], shared: Mapping[str, Any], variant: Mapping[str, Any]
) -> None:
    """Refuse a bad shared value even where this variant overrides it (e.g. epochs=-1)."""
    overridden = [k for k in shared if k in variant and k not in _NOT_MODEL_KEYS | {"name"}]
    if "architecture" in overridden:
        overridden.remove("architecture")  # a shared default may be dense or not; name only
        _choice(shared, "architecture", ARCHITECTURES, "architecture")
    if overridden:
        probe = dict(cfg)
        probe.update({k: shared[k] for k in overridden})
        validate_config(probe)


def _refuse_renamed_keys(shared: Mapping[str, Any], variant: Mapping[str, Any]) -> None:
    """Fail on a key of the old spelling, naming the old and the new key."""
    for old, new in _RENAMED_SHARED_KEYS.items():
        if old in shared:
            raise ParameterError(
                f"training.{old}",
                f"renamed to '{new}' (a variant name, a supervision name or a list of them); "
                f"write {new}: {shared[old]!r}",
            )
    for old, new in _RENAMED_VARIANT_KEYS.items():
        if old in variant:
            name = variant.get("name", "<name>")
            raise ParameterError(
                f"training.variants.{name}.{old}",
                f"renamed to '{new}': write {new}: {variant[old]!r} in the block of variant "
                f"'{name}' (training.variants.{name}, or comparison.training_variants.{name} "
                "for a comparison variant)",
            )


def is_selected(selection: str | Iterable[str] | None, variant: str, supervision: str) -> bool:
    """Whether the ``training.only`` gate ``selection`` selects a variant.

    Args:
        selection: None (all variants), one name, or a list of names; a name matches a
            variant's name or its supervision.
        variant: The variant's name (its Kedro namespace).
        supervision: The variant's supervision (one of ``SUPERVISIONS``).
    """
    if selection is None:
        return True
    names = {selection} if isinstance(selection, str) else set(selection)
    return variant in names or supervision in names


def variant_selected(training: Mapping[str, Any], cfg: Mapping[str, Any]) -> bool:
    """Whether ``training.only`` selects the variant of the resolved config ``cfg``.

    Raises:
        ParameterError: ``training.only`` names neither a supervision nor a variant of
            ``training.variants``.
    """
    selection = training.get("only")
    names = [selection] if isinstance(selection, str) else list(selection or [])
    valid = set(SUPERVISIONS) | set(training.get("variants") or {})
    for name in names:
        if name not in valid:
            raise unknown_name_error("supervision or variant", name, valid, key="training.only")
    return is_selected(selection, str(cfg["variant"]), str(cfg["supervision"]))


def model_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a training config ``build_model`` needs."""
    keys = (
        "architecture",
        "tasks",
        "pretrained",
        "dense_pooling",
        "pool_kernel",
        "topk",
        "base_channels",
    )
    out = {k: cfg[k] for k in keys}
    out["tasks"] = list(out["tasks"])
    out["image_head"] = cfg.get("image_head", "pool")
    return out
