"""``objective_params`` keys: each objective declares the keys it reads; any other is refused.

Before, ``make_objective("group_dro", ..., {"stepsize": 0.5})`` trained with the default
step size 0.01, and ``bce`` accepted any key.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_spurious.debiasing.objectives import GroupDROObjective, group_dro_factory, make_group_dro
from cxr_spurious.errors import ParameterError
from cxr_spurious.training import objectives
from cxr_spurious.training.objectives import make_objective

LABELS = np.array([[1.0], [0.0], [1.0], [0.0]])
GROUPS = np.array([0, 0, 1, 1])


def test_a_misspelt_group_dro_key_is_refused_naming_the_key_and_the_valid_one() -> None:
    with pytest.raises(ParameterError) as info:
        make_objective("group_dro", LABELS, GROUPS, {"stepsize": 0.5})
    assert info.value.key == "training.objective_params.stepsize"
    assert "did you mean 'step_size'?" in info.value.problem
    assert "size_adjustment, step_size" in info.value.problem


def test_bce_takes_no_parameters() -> None:
    with pytest.raises(ParameterError) as info:
        make_objective("bce", LABELS, GROUPS, {"step_size": 0.5})
    assert info.value.key == "training.objective_params.step_size"
    assert "objective 'bce'" in info.value.problem and "takes none" in info.value.problem
    # the key of the message follows the block the settings came from
    with pytest.raises(ParameterError) as info:
        make_objective(
            "bce", LABELS, GROUPS, {"x": 1}, key="comparison.training_variants.v.objective_params"
        )
    assert info.value.key == "comparison.training_variants.v.objective_params.x"


def test_derived_group_dro_settings_are_not_parameters() -> None:
    # n_groups and group_sizes come from the train groups; a user value would be overwritten
    for key in ("n_groups", "group_sizes"):
        with pytest.raises(ParameterError, match=f"objective_params.{key}"):
            make_objective("group_dro", LABELS, GROUPS, {key: 3})
        with pytest.raises(ParameterError, match=f"objective_params.{key}"):
            group_dro_factory(LABELS, GROUPS, {key: 3})
    with pytest.raises(ParameterError, match=r"training\.group_dro\.stepsize"):
        make_group_dro({"n_groups": 2, "stepsize": 0.5})


def test_a_valid_step_size_is_the_one_used() -> None:
    """One update of ``q`` with step 0.5, against the exponentiated-gradient step by hand."""
    objective = make_objective("group_dro", LABELS, GROUPS, {"step_size": 0.5})
    assert isinstance(objective, GroupDROObjective) and objective.step_size == 0.5
    logits = torch.tensor([[2.0], [0.5], [-1.0], [1.0]])
    labels = torch.tensor(LABELS, dtype=torch.float32)
    batch = {"group": torch.tensor(GROUPS), "weight": torch.ones(4), "index": torch.arange(4)}
    objective(logits, labels, torch.ones(4, 1, dtype=torch.bool), batch)
    per = F.binary_cross_entropy_with_logits(logits[:, 0], labels[:, 0], reduction="none")
    loss0, loss1 = float(per[:2].mean()), float(per[2:].mean())
    q = np.array([np.exp(0.5 * loss0), np.exp(0.5 * loss1)]) / 2
    np.testing.assert_allclose(objective.q.numpy(), q / q.sum(), rtol=1e-5)


def test_an_objective_registered_with_its_keys_refuses_others() -> None:
    def factory(labels, groups, params):
        return objectives.ClassBalancedBCE(labels)

    objectives.register_objective("test_declared", factory, params=["alpha"])
    try:
        make_objective("test_declared", LABELS, GROUPS, {"alpha": 1.0})
        with pytest.raises(ParameterError, match="did you mean 'alpha'"):
            make_objective("test_declared", LABELS, GROUPS, {"alpah": 1.0})
    finally:
        objectives._REGISTRY.pop("test_declared")
        objectives._PARAMS.pop("test_declared")
