"""Image-level training objectives and their registry; the dense (Dice + BCE) loss.

An ``Objective`` maps image logits, labels, a validity mask and the batch to a scalar.
The registry below lists every objective by name: ``bce`` (defined here) and
``group_dro`` (imported from ``cxr_spurious.debiasing.objectives``, which does not import
training). ``register_objective`` adds one at run time (tests, experiments).

Each objective declares the keys of ``training.objective_params`` it reads (``bce``: none;
``group_dro``: ``step_size``, ``size_adjustment``); ``make_objective`` refuses any other key
(``check_objective_params``), so a misspelt ``stepsize`` is an error instead of a silent
default.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from cxr_spurious.debiasing.objectives import GROUP_DRO_PARAMS, group_dro_factory
from cxr_spurious.errors import ParameterError, unknown_name_error


@runtime_checkable
class Objective(Protocol):
    """A training objective over image-level logits.

    ``batch`` carries at least ``weight (B,)`` float, ``group (B,)`` long and ``index (B,)``
    long (position in the training table). Stateful objectives also implement
    ``state_dict()`` / ``load_state_dict(state)`` so checkpoints can resume them; they may
    update their state inside ``__call__`` (training steps only).
    """

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor,
        batch: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        """Scalar loss."""
        ...


# A factory builds an objective from the train labels (n, T) (NaN = unknown), the train
# groups (n,) and the ``training.objective_params`` dict.
ObjectiveFactory = Callable[[np.ndarray, np.ndarray, Mapping[str, Any]], Objective]


class ClassBalancedBCE:
    """BCE where positives and negatives of each task weigh equally overall.

    Per task, ``w_pos = n / (2 n_pos)`` and ``w_neg = n / (2 n_neg)`` over the known train
    labels; the loss is ``sum(w_class * weight * bce * valid) / max(sum(valid), 1)``, so
    NaN labels (``valid`` false) drop out and per-sample ``weight`` (resampling) scales rows.
    """

    def __init__(self, labels: np.ndarray) -> None:
        y = np.asarray(labels, dtype=float)
        n_pos = np.nansum(y == 1, axis=0).astype(float)
        n_neg = np.nansum(y == 0, axis=0).astype(float)
        n = n_pos + n_neg
        self.pos_weight = torch.tensor(n / (2 * np.maximum(n_pos, 1)), dtype=torch.float32)
        self.neg_weight = torch.tensor(n / (2 * np.maximum(n_neg, 1)), dtype=torch.float32)

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor,
        batch: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        """Weighted mean BCE over the valid (sample, task) entries."""
        logits = logits.float()
        pos_w = self.pos_weight.to(logits.device)
        neg_w = self.neg_weight.to(logits.device)
        class_w = torch.where(labels > 0.5, pos_w, neg_w)
        per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        mask = valid.to(logits.dtype)
        sample_w = batch["weight"].to(logits.device, logits.dtype)[:, None]
        return (per * class_w * sample_w * mask).sum() / mask.sum().clamp_min(1.0)


_REGISTRY: dict[str, ObjectiveFactory] = {
    "bce": lambda labels, groups, params: ClassBalancedBCE(labels),
    "group_dro": group_dro_factory,
}
# The keys of ``objective_params`` each objective reads; None: not declared (its factory
# checks them itself, e.g. one registered at run time without ``params``).
_PARAMS: dict[str, frozenset[str] | None] = {
    "bce": frozenset(),
    "group_dro": frozenset(GROUP_DRO_PARAMS),
}


def register_objective(
    name: str, factory: ObjectiveFactory, params: Iterable[str] | None = None
) -> None:
    """Add (or replace) an objective factory under ``name``.

    Args:
        name: Registry name (``training.objective``).
        factory: Builds the objective from labels, groups and ``objective_params``.
        params: The keys of ``objective_params`` it reads (any other key is refused by
            ``make_objective``); None leaves the keys to the factory.
    """
    _REGISTRY[name] = factory
    _PARAMS[name] = None if params is None else frozenset(params)


def available_objectives() -> list[str]:
    """Registered names."""
    return sorted(_REGISTRY)


def objective_param_keys(name: str) -> frozenset[str] | None:
    """The ``objective_params`` keys objective ``name`` reads (None: not declared or unknown)."""
    return _PARAMS.get(name)


def check_objective_params(
    name: str, params: Mapping[str, Any] | None, key: str = "training.objective_params"
) -> None:
    """Refuse an ``objective_params`` key that objective ``name`` does not read.

    Args:
        name: A registered objective (an unknown name is left to ``make_objective``).
        params: The ``objective_params`` mapping.
        key: Its dotted parameter key, for the message.

    Raises:
        ParameterError: naming ``<key>.<unknown key>``, the closest valid key and the valid
            keys; or ``key`` when ``params`` is not a mapping.
    """
    if params is None:
        return
    if not isinstance(params, Mapping):
        raise ParameterError(key, f"must be a mapping of settings, got {params!r}")
    valid = objective_param_keys(name)
    if valid is None:
        return
    unknown = sorted(str(k) for k in params if k not in valid)
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], sorted(valid), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    more = f"; unknown keys: {unknown}" if len(unknown) > 1 else ""
    takes = f"its parameters are {', '.join(sorted(valid))}" if valid else "it takes none"
    raise ParameterError(
        f"{key}.{unknown[0]}",
        f"objective '{name}' has no parameter '{unknown[0]}'{hint}{more}; {takes}",
    )


def make_objective(
    name: str,
    labels: np.ndarray,
    groups: np.ndarray,
    params: Mapping[str, Any] | None = None,
    *,
    key: str = "training.objective_params",
) -> Objective:
    """Build the objective registered as ``name``.

    Args:
        name: Registry name (``training.objective``).
        labels: Train labels ``(n, T)`` (NaN = unknown).
        groups: Train group ids ``(n,)`` (``-1`` = none).
        params: ``objective_params``; only the keys the objective declares.
        key: The dotted key of ``params`` in error messages.

    Raises:
        ParameterError: unknown name (on ``training.objective``), listing the valid ones; a
            key of ``params`` the objective does not read (``check_objective_params``).
    """
    if name not in _REGISTRY:
        raise unknown_name_error("objective", name, _REGISTRY, key="training.objective")
    check_objective_params(name, params, key)
    return _REGISTRY[name](labels, groups, dict(params or {}))


def dense_loss(
    dense_logits: torch.Tensor, target: torch.Tensor, dense_valid: torch.Tensor, eps: float = 1.0
) -> torch.Tensor:
    """Mean over the valid (sample, task) maps of pixel BCE + soft Dice loss.

    Args:
        dense_logits: ``(B, T, S, S)``.
        target: ``(B, T, S, S)`` in {0, 1}.
        dense_valid: ``(B, T)`` bool, the location label is used.
        eps: Dice smoothing (an empty target and empty prediction give a Dice loss of 0).

    Returns:
        A scalar (0 with a gradient path when nothing is valid).
    """
    logits = dense_logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(2, 3))
    dice = 1 - (2 * inter + eps) / (prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + eps)
    mask = dense_valid.to(logits.dtype)
    return ((bce + dice) * mask).sum() / mask.sum().clamp_min(1.0)
