"""Config resolution, validation and the training.method gate."""

from __future__ import annotations

import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.training.config import DEFAULTS, is_selected, resolve_training_config


def test_variant_overrides_shared_defaults() -> None:
    cfg = resolve_training_config(
        {"epochs": 3, "lr": 0.01},
        {"name": "seg", "method": "seg", "architecture": "unet_small", "epochs": 8},
    )
    assert cfg["epochs"] == 8 and cfg["lr"] == 0.01 and cfg["variant"] == "seg"
    assert cfg["batch_size"] == DEFAULTS["batch_size"]


def test_unknown_method_is_a_clear_error() -> None:
    with pytest.raises(
        ParameterError, match="unknown training method 'pixels'.*box, coarse, erm, multitask, seg"
    ):
        resolve_training_config({}, {"name": "x", "method": "pixels"})


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(
        ParameterError, match="training.architecture.*unknown architecture 'resnet9'"
    ):
        resolve_training_config({}, {"name": "x", "method": "erm", "architecture": "resnet9"})


def test_dense_method_needs_dense_architecture() -> None:
    with pytest.raises(ParameterError, match="method 'seg' needs a dense architecture"):
        resolve_training_config({}, {"name": "seg", "method": "seg", "architecture": "resnet18"})


def test_unknown_key_names_the_key() -> None:
    with pytest.raises(ParameterError, match=r"training\.epoch"):
        resolve_training_config({"epoch": 3}, {"name": "erm", "method": "erm"})


@pytest.mark.parametrize(
    ("key", "value"),
    [("location_fraction", 1.5), ("batch_size", 0), ("pool_kernel", 4), ("device", "tpu"), ("precision", "fp16")],
)
def test_out_of_range_values(key: str, value: object) -> None:
    with pytest.raises(ParameterError, match=f"training.{key}"):
        resolve_training_config(
            {key: value}, {"name": "seg", "method": "seg", "architecture": "unet_small"}
        )


def test_multitask_uses_a_linear_image_head() -> None:
    cfg = resolve_training_config(
        {}, {"name": "mt", "method": "multitask", "architecture": "unet_small"}
    )
    assert cfg["image_head"] == "linear"


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (None, {"erm", "box", "seg"}),
        ("seg", {"seg"}),
        (["erm", "box"], {"erm", "box"}),
        ("coarse", set()),
    ],
)
def test_gate(selection: object, expected: set[str]) -> None:
    assert {v for v in ("erm", "box", "seg") if is_selected(selection, v, v)} == expected
