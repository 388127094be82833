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


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A CUDA machine whose current device is 1, without a GPU: ``torch.cuda.set_device``
    runs for real (its argument check refuses an index-less device, as on a GPU machine)
    up to the driver call, which records the index it was given."""
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch._C, "_cuda_setDevice", chosen.append)
    return chosen


@pytest.mark.parametrize(
    ("name", "local_rank", "expected"),
    [
        ("auto", None, "cuda"),
        ("cuda", None, "cuda"),
        ("cuda:0", None, "cuda:0"),
        ("auto", 2, "cuda:2"),
        ("cuda", 2, "cuda:2"),
    ],
)
def test_cuda_resolves_to_this_processs_device(
    fake_cuda: list[int], name: str, local_rank: int | None, expected: str
) -> None:
    """Under DDP a bare ``cuda`` is the process's GPU; in one process it stays the current
    device (what the run's records say, ``cuda``)."""
    setup = resolve_device(name, local_rank=local_rank)
    assert str(setup.device) == expected


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_distributed_setup_selects_the_resolved_cuda_device(
    fake_cuda: list[int], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from tests.training.training_tiny_data import tiny_config

    from cxr_spurious.training import distributed

    cfg = tiny_config(device=name)
    setup, rank, world = distributed.distributed_setup(cfg)  # one process (train_model's path)
    assert (str(setup.device), rank, world) == ("cuda", 0, 1) and fake_cuda == []
    monkeypatch.setattr(distributed, "process_group", lambda: (3, 4))  # under torchrun
    monkeypatch.setenv("LOCAL_RANK", "3")
    setup, rank, world = distributed.distributed_setup(cfg)
    assert (str(setup.device), rank, world) == ("cuda:3", 3, 4) and fake_cuda == [3]
