"""Image-level training objectives and their registry; the dense (Dice + BCE) loss.

An ``Objective`` maps image logits, labels, a validity mask and the batch to a scalar.
The registry below lists every objective by name: ``bce`` (defined here) and
``group_dro`` (imported from ``cxr_spurious.debiasing.objectives``, which does not import
training). ``register_objective`` adds one at run time (tests, experiments).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from cxr_spurious.debiasing.objectives import group_dro_factory
from cxr_spurious.errors import unknown_name_error


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


def register_objective(name: str, factory: ObjectiveFactory) -> None:
    """Add (or replace) an objective factory under ``name``."""
    _REGISTRY[name] = factory


def available_objectives() -> list[str]:
    """Registered names."""
    return sorted(_REGISTRY)


def make_objective(
    name: str, labels: np.ndarray, groups: np.ndarray, params: Mapping[str, Any] | None = None
) -> Objective:
    """Build the objective registered as ``name``.

    Raises:
        ParameterError: unknown name (on ``training.objective``), listing the valid ones.
    """
    if name not in _REGISTRY:
        raise unknown_name_error("objective", name, _REGISTRY, key="training.objective")
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
