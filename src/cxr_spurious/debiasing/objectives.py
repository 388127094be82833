"""Group DRO (Sagawa et al. 2020) as a training objective.

The training loop calls an objective as
``objective(logits (B, T), labels (B, T), valid (B, T) bool, batch) -> scalar`` where
``batch`` holds ``weight (B,)``, ``group (B,)`` long and ``index (B,)`` long. Group DRO
keeps a probability ``q`` over groups, multiplies ``q_g`` by ``exp(step_size * loss_g)``
after each batch (online exponentiated gradient, detached from the graph) and returns
``sum_g q_g * loss_g``. ``loss_g`` is the weighted mean loss of group ``g``'s rows in the
batch, ``sum(w_i * l_i) / sum(w_i)`` with the per-sample ``weight`` (``debiasing.strategy:
reweight``, JTT's ``jtt_mode: weight``; all 1 otherwise, which is the plain mean); a group
whose rows in the batch weigh 0 in all counts as absent. The size adjustment
(``size_adjustment``) reads the train row count of each group (``group_sizes``), not the
summed weights. Groups are the manifest's ``group`` column, written by the debiasing
pipeline from the known groups of ``debiasing.group_by`` (in the comparison,
``comparison.debiasing.group_by``). ``cxr_spurious.debiasing.george.discover_groups``
returns ids of the same form from clusters of the ERM embeddings, but it is a library
function that no pipeline calls. Rows of group ``-1`` are left out of the robust loss.

``group_dro_factory`` is listed under ``group_dro`` in the training registry
(``cxr_spurious.training.objectives`` imports it); this module does not import training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cxr_spurious.errors import ParameterError, check_integer, check_number

#: The keys of ``training.objective_params`` Group DRO reads (any other key is refused).
GROUP_DRO_PARAMS: tuple[str, ...] = ("step_size", "size_adjustment")
# ``make_group_dro``'s config: the parameters plus what the factory derives from the groups.
_GROUP_DRO_CONFIG: frozenset[str] = frozenset({*GROUP_DRO_PARAMS, "n_groups", "group_sizes"})


def _refuse_unknown(config: Mapping[str, Any], valid: frozenset[str], key: str) -> None:
    """Raise ``ParameterError`` naming ``<key>.<k>`` for the first key of ``config`` not in
    ``valid`` (a misspelt ``stepsize`` would otherwise run with the default step size)."""
    unknown = sorted(str(k) for k in config if k not in valid)
    if unknown:
        raise ParameterError(
            f"{key}.{unknown[0]}",
            f"Group DRO has no setting '{unknown[0]}'; valid keys: {', '.join(sorted(valid))}",
        )


def _check_setting(value: object, key: str, *, positive: bool) -> float:
    """``value`` as a float, refused (``ParameterError`` on ``key``) unless it is a finite
    number > 0 (``positive``) or >= 0: a NaN or infinite step size made ``q`` and the loss
    NaN, and a negative or NaN size adjustment was silently no adjustment."""
    return check_number(value, key, low=0, low_open=positive)


class GroupDROObjective:
    """Online Group DRO loss over ``n_groups`` groups (binary cross-entropy per task)."""

    def __init__(
        self,
        n_groups: int,
        *,
        step_size: float = 0.01,
        size_adjustment: float = 0.0,
        group_sizes: torch.Tensor | None = None,
    ) -> None:
        """Set up uniform group weights.

        Args:
            n_groups: Number of groups (ids ``0..n_groups-1``).
            step_size: Exponentiated-gradient step ``eta`` (finite, > 0).
            size_adjustment: Sagawa et al.'s ``C`` (finite, >= 0): adds ``C / sqrt(n_g)`` to
                each group loss.
            group_sizes: Train size of each group (needed when ``size_adjustment > 0``).

        Raises:
            ParameterError: ``n_groups`` < 1, or a setting out of its range (NaN included).
        """
        n_groups = check_integer(n_groups, "training.group_dro.n_groups", low=1)
        step_size = _check_setting(step_size, "training.group_dro.step_size", positive=True)
        size_adjustment = _check_setting(
            size_adjustment, "training.group_dro.size_adjustment", positive=False
        )
        if size_adjustment > 0 and (group_sizes is None or len(group_sizes) != n_groups):
            raise ParameterError(
                "training.group_dro.size_adjustment", "needs group_sizes with one entry per group"
            )
        self.n_groups = int(n_groups)
        self.step_size = float(step_size)
        self.q = torch.full((n_groups,), 1.0 / n_groups)
        adjust = torch.zeros(n_groups)
        if size_adjustment > 0 and group_sizes is not None:
            adjust = size_adjustment / torch.sqrt(
                torch.as_tensor(group_sizes, dtype=torch.float32).clamp_min(1)
            )
        self.adjust = adjust

    def group_sums(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor,
        group: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted loss sum per group (with gradient) and summed weight per group.

        Args:
            logits: ``(B, T)``.
            labels: ``(B, T)`` (NaN where ``valid`` is false).
            valid: ``(B, T)`` bool.
            group: ``(B,)`` group ids (``-1`` = none).
            weight: ``(B,)`` per-sample weights; None: all 1.

        Returns:
            ``(sum_i w_i * l_i, sum_i w_i)`` per group over the rows with a label and a
            group; with all weights 1 the second is the number of such rows. In float32
            whatever the logits' dtype: under bf16 autocast the exponentiated-gradient step
            ``exp(step_size * loss_g)`` (1.0078 for every typical loss at step 0.01) would
            round to the same value for every group and ``q`` would stay uniform.
        """
        logits = logits.float()
        per_elem = F.binary_cross_entropy_with_logits(
            logits, torch.nan_to_num(labels, nan=0.0).to(logits.dtype), reduction="none"
        )
        v = valid.to(logits.dtype)
        per_sample = (per_elem * v).sum(1) / v.sum(1).clamp_min(1.0)
        has_label = valid.any(1) & (group >= 0)
        g = group.clamp_min(0).long()
        onehot = F.one_hot(g, self.n_groups).to(logits.dtype) * has_label.unsqueeze(1).to(
            logits.dtype
        )
        if weight is not None:
            onehot = onehot * weight.to(onehot.device, onehot.dtype).unsqueeze(1)
        return (onehot * per_sample.unsqueeze(1)).sum(0), onehot.sum(0).detach()

    def group_losses(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor,
        group: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted mean loss per group and a mask of the groups present (summed weight > 0)."""
        sums, totals = self.group_sums(logits, labels, valid, group, weight)
        return sums / _denominator(totals), totals > 0

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor,
        batch: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        """Robust loss of one batch; updates ``q`` (no gradient flows through ``q``).

        ``loss_g`` is the weighted mean over group ``g``'s rows (``batch["weight"]``; all 1
        when absent). Under DistributedDataParallel (an initialised process group of more
        than one process) each process holds a share of the global batch: the weighted group
        loss sums and the summed weights are all-reduced before the update, so every rank
        applies the same update to ``q`` as one process would on the whole batch, and the
        loss is scaled so that DDP's gradient average equals the single-process gradient of
        ``sum_g q_g * loss_g``. The returned value is the global batch's robust loss on every
        rank.
        """
        group = batch["group"].to(logits.device)
        if int(group.max()) >= self.n_groups:
            raise ParameterError(
                "training.group_dro.n_groups",
                f"batch has group {int(group.max())} but n_groups is {self.n_groups}",
            )
        weight = batch.get("weight")
        # counts: the summed weight of each group's rows (its row count when all weights are 1)
        sums, counts = self.group_sums(logits, labels, valid, group, weight)
        world = _world_size()
        if world > 1:
            totals = torch.stack([sums.detach().float(), counts.float()])
            dist.all_reduce(totals)
            global_sums, counts = totals[0].to(sums.dtype), totals[1].to(sums.dtype)
        else:
            global_sums = sums.detach()
        present = counts > 0
        adjust = self.adjust.to(sums.device, sums.dtype)
        with torch.no_grad():
            adjusted = global_sums / _denominator(counts) + adjust
            q = self.q.to(sums.device)
            step = torch.where(present, torch.exp(self.step_size * adjusted), torch.ones_like(q))
            q = q * step
            self.q = (q / q.sum()).cpu()
        q = self.q.to(sums.device, sums.dtype)
        mask = present.to(sums.dtype)
        local = sums / _denominator(counts)  # this rank's share of each global group mean
        if world == 1:
            return (q * (local + adjust) * mask).sum()
        value = (q * adjusted * mask).sum()
        grad_part = world * (q * local).sum()  # DDP averages gradients over the ranks
        return grad_part + (value - grad_part).detach()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The group weights (so a resumed run continues the same ``q``)."""
        return {"q": self.q.clone(), "adjust": self.adjust.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore ``q`` (and the size adjustment) from ``state_dict``."""
        q = torch.as_tensor(state["q"], dtype=torch.float32)
        if q.shape != self.q.shape:
            raise ParameterError(
                "training.group_dro.n_groups",
                f"checkpoint has {q.numel()} groups, objective has {self.n_groups}",
            )
        self.q = q.clone()
        self.adjust = torch.as_tensor(state["adjust"], dtype=torch.float32).clone()


def _denominator(totals: torch.Tensor) -> torch.Tensor:
    """The summed weights where positive, else 1 (an absent group's sum is 0, its mean 0).

    Not ``clamp_min(1)``: weights below 1 (``reweight`` gives large groups ``< 1``) must
    divide by their own sum. With all weights 1 the two are equal, so unweighted runs give
    the same losses as before the weights were read.
    """
    return torch.where(totals > 0, totals, torch.ones_like(totals))


def _world_size() -> int:
    """Processes in the default process group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def make_group_dro(config: Mapping[str, Any]) -> GroupDROObjective:
    """Build a Group DRO objective from ``{"n_groups", "step_size", ...}``.

    Args:
        config: ``n_groups`` (required), ``step_size``, ``size_adjustment`` and
            ``group_sizes``; nothing else.

    Raises:
        ParameterError: ``n_groups`` is missing, a key outside those four, or a setting out
            of its range (``GroupDROObjective``).
    """
    _refuse_unknown(config, _GROUP_DRO_CONFIG, "training.group_dro")
    if "n_groups" not in config:
        raise ParameterError(
            "training.group_dro.n_groups",
            "is required (number of groups in the manifest's 'group' column)",
        )
    sizes = config.get("group_sizes")
    return GroupDROObjective(
        int(config["n_groups"]),
        step_size=config.get("step_size", 0.01),  # checked (finite, > 0) by the objective
        size_adjustment=config.get("size_adjustment", 0.0),
        group_sizes=torch.as_tensor(sizes) if sizes is not None else None,
    )


def group_dro_factory(
    labels: np.ndarray, groups: np.ndarray, params: Mapping[str, Any]
) -> GroupDROObjective:
    """Training-registry factory: groups from the train ``group`` column.

    Args:
        labels: Train labels ``(n, T)`` (unused; the signature of the registry).
        groups: Train group ids ``(n,)`` (``-1`` = none).
        params: ``training.objective_params``: ``step_size``, ``size_adjustment``
            (``GROUP_DRO_PARAMS``; the groups give ``n_groups`` and ``group_sizes``).

    Raises:
        ParameterError: no train row has a group, a key of ``params`` outside
            ``GROUP_DRO_PARAMS``, or a setting that is not finite (``step_size`` > 0,
            ``size_adjustment`` >= 0).
    """
    _refuse_unknown(params, frozenset(GROUP_DRO_PARAMS), "training.objective_params")
    for name in GROUP_DRO_PARAMS:
        if name in params:
            _check_setting(
                params[name], f"training.objective_params.{name}", positive=name == "step_size"
            )
    g = np.asarray(groups, dtype=np.int64)
    known = g[g >= 0]
    if known.size == 0:
        raise ParameterError(
            "training.objective",
            "group_dro needs the manifest's 'group' column "
            "(run the debiasing pipeline with group_by set)",
        )
    sizes = np.bincount(known)
    return make_group_dro({**params, "n_groups": int(sizes.size), "group_sizes": sizes.tolist()})
