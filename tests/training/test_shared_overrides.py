"""Shared ``training`` values that the variants override: reported, and validated anyway."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from cxr_spurious.errors import ParameterError
from cxr_spurious.training import config as config_mod
from cxr_spurious.training.config import overridden_shared_keys, resolve_training_config

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "erm": {"name": "erm", "supervision": "erm", "architecture": "unet_small", "epochs": 5},
    "seg": {"name": "seg", "supervision": "seg", "architecture": "unet_small", "epochs": 5},
}


@pytest.fixture(autouse=True)
def _fresh_reports() -> None:
    config_mod._REPORTED_OVERRIDES.clear()


def test_a_shared_value_every_variant_overrides_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = {"epochs": 20, "lr": 0.01, "variants": VARIANTS}
    assert overridden_shared_keys(shared) == {
        "epochs": ["training.variants.erm.epochs", "training.variants.seg.epochs"]
    }
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.training.config"):
        for block in VARIANTS.values():
            cfg = resolve_training_config(shared, block)
            assert cfg["epochs"] == 5 and cfg["lr"] == 0.01
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not once per variant
    assert "training.epochs=20 has no effect" in warnings[0]
    assert "training.variants.erm.epochs=5" in warnings[0]
    assert "training.variants.seg.epochs=5" in warnings[0]


def test_a_value_only_some_variants_override_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    variants = {
        **VARIANTS,
        "box": {"name": "box", "supervision": "box", "architecture": "unet_small"},
    }
    shared = {"epochs": 20, "variants": variants}
    assert overridden_shared_keys(shared) == {}
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.training.config"):
        assert resolve_training_config(shared, variants["box"])["epochs"] == 20
    assert not caplog.records


@pytest.mark.parametrize("value", [-1, 0, 2.5])
def test_an_invalid_shared_value_is_refused_even_where_variants_override_it(value: object) -> None:
    with pytest.raises(
        ParameterError, match=r"parameter 'training\.epochs': must be an integer >= 1"
    ):
        resolve_training_config({"epochs": value, "variants": VARIANTS}, VARIANTS["erm"])


def test_a_shared_architecture_is_checked_by_name_only() -> None:
    # A non-dense shared default stays legal for dense variants that override it...
    cfg = resolve_training_config({"architecture": "resnet18"}, VARIANTS["seg"])
    assert cfg["architecture"] == "unet_small"
    # ...but an unknown name is refused.
    with pytest.raises(
        ParameterError, match=r"training\.architecture.*unknown architecture 'resnet9'"
    ):
        resolve_training_config({"architecture": "resnet9"}, VARIANTS["seg"])


def test_the_shipped_study_variants_leave_the_shared_values_in_effect() -> None:
    params = yaml.safe_load((REPO / "conf/base/parameters_training.yml").read_text())["training"]
    assert overridden_shared_keys(params) == {}
    for block in params["variants"].values():
        override = {**params, "epochs": 20}
        assert resolve_training_config(override, block)["epochs"] == 20
