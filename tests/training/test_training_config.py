"""Config resolution, validation, renamed keys and the training.only gate."""

from __future__ import annotations

import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.training.config import (
    DEFAULTS,
    is_selected,
    resolve_training_config,
    variant_selected,
)


def test_variant_overrides_shared_defaults() -> None:
    cfg = resolve_training_config(
        {"epochs": 3, "lr": 0.01},
        {"name": "seg", "supervision": "seg", "architecture": "unet_small", "epochs": 8},
    )
    assert cfg["epochs"] == 8 and cfg["lr"] == 0.01 and cfg["variant"] == "seg"
    assert cfg["batch_size"] == DEFAULTS["batch_size"]


def test_unknown_supervision_is_a_clear_error() -> None:
    with pytest.raises(
        ParameterError,
        match="training.supervision.*unknown supervision 'pixels'"
        ".*box, coarse, erm, multitask, seg",
    ):
        resolve_training_config({}, {"name": "x", "supervision": "pixels"})


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(
        ParameterError, match="training.architecture.*unknown architecture 'resnet9'"
    ):
        resolve_training_config({}, {"name": "x", "supervision": "erm", "architecture": "resnet9"})


def test_dense_supervision_needs_dense_architecture() -> None:
    with pytest.raises(ParameterError, match="supervision 'seg' needs a dense architecture"):
        resolve_training_config(
            {}, {"name": "seg", "supervision": "seg", "architecture": "resnet18"}
        )


def test_unknown_key_names_the_key() -> None:
    with pytest.raises(ParameterError, match=r"training\.epoch"):
        resolve_training_config({"epoch": 3}, {"name": "erm", "supervision": "erm"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("location_fraction", 1.5),
        ("batch_size", 0),
        ("pool_kernel", 4),
        ("device", "tpu"),
        ("precision", "fp16"),
    ],
)
def test_out_of_range_values(key: str, value: object) -> None:
    with pytest.raises(ParameterError, match=f"training.{key}"):
        resolve_training_config(
            {key: value}, {"name": "seg", "supervision": "seg", "architecture": "unet_small"}
        )


def test_multitask_uses_a_linear_image_head() -> None:
    cfg = resolve_training_config(
        {}, {"name": "mt", "supervision": "multitask", "architecture": "unet_small"}
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


def test_a_variant_without_supervision_is_refused() -> None:
    with pytest.raises(ParameterError, match="each variant needs 'name' and 'supervision'"):
        resolve_training_config({}, {"name": "erm", "architecture": "unet_small"})


def test_the_old_variant_key_method_names_the_new_key() -> None:
    with pytest.raises(ParameterError) as info:
        resolve_training_config({}, {"name": "seg", "method": "seg", "architecture": "unet_small"})
    assert info.value.key == "training.variants.seg.method"
    assert "renamed to 'supervision'" in str(info.value)
    assert "comparison.training_variants.seg" in str(info.value)


def test_the_old_gate_training_method_names_training_only() -> None:
    variant = {"name": "seg", "supervision": "seg", "architecture": "unet_small"}
    with pytest.raises(ParameterError) as info:
        resolve_training_config({"method": "seg"}, variant)
    assert info.value.key == "training.method"
    assert "renamed to 'training.only'" in str(info.value)


def test_supervision_is_set_per_variant_not_shared() -> None:
    variant = {"name": "seg", "supervision": "seg", "architecture": "unet_small"}
    with pytest.raises(ParameterError, match=r"training\.supervision.*unknown key"):
        resolve_training_config({"supervision": "erm"}, variant)


@pytest.mark.parametrize(
    ("only", "expected"),
    [
        (None, {"erm", "box", "seg", "seg_small"}),
        ("seg", {"seg", "seg_small"}),  # a supervision selects every variant with it
        ("seg_small", {"seg_small"}),  # a variant name selects that variant
        (["erm", "box"], {"erm", "box"}),
        ("coarse", set()),
    ],
)
def test_only_selects_by_variant_or_supervision(only: object, expected: set[str]) -> None:
    supervision = {"erm": "erm", "box": "box", "seg": "seg", "seg_small": "seg"}
    training = {"only": only, "variants": {v: {} for v in supervision}}
    chosen = {
        v
        for v, s in supervision.items()
        if variant_selected(training, {"variant": v, "supervision": s})
    }
    assert chosen == expected


def test_only_with_an_unknown_name_is_refused() -> None:
    with pytest.raises(
        ParameterError, match="training.only.*unknown supervision or variant 'pixel'"
    ):
        variant_selected(
            {"only": ["seg", "pixel"], "variants": {"seg": {}}},
            {"variant": "seg", "supervision": "seg"},
        )


@pytest.mark.parametrize("value", ["30m", -5, 0, 0.0, True, float("nan"), float("inf"), [60]])
def test_a_bad_time_budget_names_the_key(value: object) -> None:
    """A bad ``time_budget_s`` used to be accepted: the run trained a whole epoch and then
    failed with a bare ValueError (text) or stopped silently (<= 0)."""
    with pytest.raises(ParameterError, match=r"training\.time_budget_s.*> 0 or null"):
        resolve_training_config({"time_budget_s": value}, {"name": "erm", "supervision": "erm"})


@pytest.mark.parametrize("value", [None, 60, 0.5, 3600.0])
def test_a_time_budget_may_be_any_positive_number_or_null(value: object) -> None:
    cfg = resolve_training_config({"time_budget_s": value}, {"name": "erm", "supervision": "erm"})
    assert cfg["time_budget_s"] == value
