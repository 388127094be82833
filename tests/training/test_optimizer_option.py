"""``training.optimizer``: AdamW (default) or plain SGD with ``momentum``; unknown names fail."""

from __future__ import annotations

import pytest
import torch
from tests.training.training_tiny_data import tiny_config

from cxr_spurious.errors import ParameterError
from cxr_spurious.training.engine import make_optimizer


def test_sgd_and_adamw() -> None:
    module = torch.nn.Linear(2, 1)
    sgd = make_optimizer(module, tiny_config(optimizer="sgd", momentum=0.5, lr=0.1))
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["momentum"]) == (0.1, 0.5)
    assert isinstance(make_optimizer(module, tiny_config()), torch.optim.AdamW)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"optimizer": "adam"}, "training.optimizer.*unknown optimizer 'adam'"),
        ({"optimizer": "sgd", "momentum": -1}, r"training.momentum.*in \[0, 1\)"),
    ],
)
def test_invalid_optimizer_settings_name_the_key(overrides: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        tiny_config(**overrides)
