"""Class-balanced BCE (against scikit-learn), the objective registry and the dense loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from cxr_spurious.errors import ParameterError
from cxr_spurious.training.objectives import (
    ClassBalancedBCE,
    Objective,
    available_objectives,
    dense_loss,
    make_objective,
    register_objective,
)


def _batch(n: int, weight: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    w = np.ones(n) if weight is None else weight
    return {
        "weight": torch.tensor(w, dtype=torch.float32),
        "group": torch.zeros(n, dtype=torch.long),
        "index": torch.arange(n),
    }


def test_class_balanced_bce_matches_sklearn_weighted_log_loss() -> None:
    rng = np.random.default_rng(0)
    train = np.array([1.0, 0, 0, 0, 1, 0, 0, 0, np.nan])  # 2 positives, 6 negatives
    objective = ClassBalancedBCE(train[:, None])
    y = rng.integers(0, 2, size=12).astype(float)
    logits = rng.normal(size=12)
    sample_w = rng.uniform(0.5, 2, size=12)
    loss = objective(
        torch.tensor(logits[:, None], dtype=torch.float32),
        torch.tensor(y[:, None], dtype=torch.float32),
        torch.ones(12, 1, dtype=torch.bool),
        _batch(12, sample_w),
    )
    class_w = np.where(y == 1, 8 / (2 * 2), 8 / (2 * 6))
    prob = 1 / (1 + np.exp(-logits))
    expected = (
        log_loss(y, prob, sample_weight=class_w * sample_w, normalize=False, labels=[0, 1]) / 12
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_invalid_labels_are_masked_out() -> None:
    objective = ClassBalancedBCE(np.array([[1.0], [0.0]]))
    logits = torch.tensor([[0.3], [-1.0], [50.0]])
    labels = torch.tensor([[1.0], [0.0], [0.0]])
    valid = torch.tensor([[True], [True], [False]])
    masked = objective(logits, labels, valid, _batch(3))
    reference = objective(logits[:2], labels[:2], valid[:2], _batch(2))
    assert float(masked) == pytest.approx(float(reference))


def test_registry_unknown_name_and_registration() -> None:
    with pytest.raises(ParameterError, match="training.objective.*unknown objective 'nope'.*bce"):
        make_objective("nope", np.zeros((2, 1)), np.zeros(2), {})

    class Scaled:
        def __init__(self, scale: float) -> None:
            self.scale = scale

        def __call__(self, logits, labels, valid, batch):
            return self.scale * logits.sum()

    register_objective("test_scaled", lambda labels, groups, params: Scaled(params["scale"]))
    objective = make_objective("test_scaled", np.zeros((2, 1)), np.zeros(2), {"scale": 3.0})
    assert isinstance(objective, Objective)
    assert float(objective(torch.ones(2, 1), None, None, {})) == 6.0
    assert {"bce", "test_scaled"} <= set(available_objectives())


def test_dense_loss_is_zero_for_a_confident_perfect_map_and_masks_invalid() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:5, 2:5] = 1
    perfect = (target * 2 - 1) * 30
    valid = torch.tensor([[True], [True]])
    assert float(dense_loss(perfect, target, valid)) == pytest.approx(0.0, abs=1e-4)
    wrong = -perfect
    assert float(dense_loss(wrong, target, valid)) > 10
    only_first = dense_loss(
        torch.cat([perfect[:1], wrong[1:]]), target, torch.tensor([[True], [False]])
    )
    assert float(only_first) == pytest.approx(0.0, abs=1e-4)
