"""Device and precision resolution (``training.device``, ``training.precision``)."""

from __future__ import annotations

import pytest
import torch

from cxr_spurious.errors import ParameterError
from cxr_spurious.training import device as device_module
from cxr_spurious.training.device import precision_name, resolve_device, setup_for


def test_fp32_and_bf16_are_what_they_say_on_cpu() -> None:
    fp32 = resolve_device("cpu", precision="fp32")
    bf16 = resolve_device("cpu", precision="bf16")
    assert fp32.autocast_dtype is None and precision_name(fp32) == "fp32"
    assert bf16.autocast_dtype == torch.bfloat16 and precision_name(bf16) == "bf16"
    assert (
        fp32.device.type == bf16.device.type == "cpu" and fp32.channels_last and not fp32.pin_memory
    )


@pytest.mark.parametrize("native", [True, False])
def test_auto_uses_bf16_on_cpu_only_where_the_hardware_has_it(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    setup = resolve_device("cpu")  # precision defaults to auto
    assert setup.autocast_dtype == (torch.bfloat16 if native else None)
    assert precision_name(setup_for({"device": "cpu", "precision": "auto"})) == (
        "bf16" if native else "fp32"
    )


def test_unknown_precision_names_the_key() -> None:
    with pytest.raises(ParameterError, match="training.precision.*auto, fp32, bf16.*'half'"):
        resolve_device("cpu", precision="half")


def test_bf16_autocast_really_computes_in_bf16_and_fp32_does_not() -> None:
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.rand(1, 1, 8, 8)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        setup = resolve_device("cpu", precision=precision)
        with setup.autocast():
            assert conv(x).dtype == dtype
