"""Device choice and per-device settings (autocast, channels_last, pinned memory), and
the deterministic-algorithms switch of ``training.deterministic``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.deterministic

from cxr_spurious.errors import ParameterError

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
"""cuBLAS workspace setting that makes cuBLAS deterministic (``:16:8`` also does)."""
DETERMINISTIC_CUBLAS_CONFIGS: tuple[str, ...] = (":4096:8", ":16:8")

# cuBLAS reads this once, when a process first uses it, so it is set when the training
# code is imported (before any CUDA work); an existing value is left alone and checked by
# ``configure_determinism``. It has no effect on CPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)

#: ``torch.utils.deterministic.fill_uninitialized_memory`` while deterministic algorithms
#: are on. PyTorch's default (True) writes NaN into every tensor that ``torch.empty``
#: allocates, so that an operation reading memory it never wrote would still give the same
#: numbers. That fill is memory traffic on every activation and gradient buffer: without it
#: the training loop ran 4-12 % faster in fp32 (``bench_training.py --fill-ab``, README). No
#: operation of the project's training, prediction or saliency reads such memory:
#: ``tests/training/test_determinism.py`` checks that they give bitwise the same numbers
#: with the fill on and off (a read of unwritten memory would give NaN with it on).
FILL_UNINITIALIZED_MEMORY = False


@dataclass(frozen=True)
class DeviceSetup:
    """Where and how to run."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    pin_memory: bool

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to ``autocast_dtype`` on this device (nothing when it is None)."""
        if self.autocast_dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            yield

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Plain fp32 for predictions, embeddings and scores: autocast off, whatever the
        training precision (bf16 keeps 8 bits of mantissa, so bf16 scores tie)."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            yield

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch of images to the device in the preferred memory format."""
        x = x.to(self.device, non_blocking=self.pin_memory)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX), not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ParameterError(
            "training.precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    if precision == "fp32" or device.type == "mps":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    # auto on CPU: bf16 only where the hardware has it (unet_small at 96 px trained at ~80
    # instead of ~45 img/s on a 2-core AMX machine); emulated bf16 would be slower than fp32
    return torch.bfloat16 if cpu_has_native_bf16() else None


def resolve_device(
    name: str = "auto", *, local_rank: int | None = None, precision: str = "auto"
) -> DeviceSetup:
    """Pick the device (``auto`` = CUDA when present, else MPS, else CPU) and the precision.

    Under DDP, ``auto`` and a bare ``cuda`` are ``cuda:<local_rank>`` (this process's GPU);
    in one process a bare ``cuda`` stays index-less (the current CUDA device, as recorded
    in the run's outputs), and ``distributed_setup`` selects only an indexed device
    (``torch.cuda.set_device`` refuses a bare ``cuda``).

    Args:
        name: ``auto``, ``cpu``, ``mps`` or ``cuda[:k]``.
        local_rank: Under DDP, the CUDA device index of this process.
        precision: ``auto`` (bf16 autocast on CUDA and on CPUs with native bf16, i.e.
            AVX512-BF16 or AMX; fp32 elsewhere), ``fp32`` or ``bf16`` (forced; slow where
            the CPU emulates it): the training precision. Predictions and embeddings are
            fp32 either way (``DeviceSetup.inference``). Results are deterministic per
            machine either way, but bf16 and fp32 runs differ.

    Raises:
        ParameterError: the requested device is not available, or an unknown precision.
    """
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError("training.device", f"'{name}' requested but CUDA is not available")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        return DeviceSetup(device, _autocast_dtype(device, precision), True, True)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ParameterError("training.device", "'mps' requested but MPS is not available")
    # channels_last also pays on CPU (oneDNN): measured +20 % img/s for unet_small and
    # +7 % for resnet18 at 96 px on a 2-core machine.
    return DeviceSetup(device, _autocast_dtype(device, precision), device.type == "cpu", False)


def setup_for(cfg: Mapping[str, Any], *, local_rank: int | None = None) -> DeviceSetup:
    """``resolve_device`` from a training config's ``device`` and ``precision``."""
    return resolve_device(
        str(cfg["device"]), local_rank=local_rank, precision=str(cfg.get("precision", "auto"))
    )


def precision_name(setup: DeviceSetup) -> str:
    """``bf16`` or ``fp32``: what a run actually used (recorded with its metrics)."""
    return "bf16" if setup.autocast_dtype == torch.bfloat16 else "fp32"


def configure_determinism(deterministic: bool) -> None:
    """Switch PyTorch's deterministic algorithms on (strictly) or off, process-wide.

    On: ``torch.use_deterministic_algorithms(True)`` without ``warn_only``, so an operation
    with no deterministic implementation raises instead of warning (the models replace
    the CUDA ones they used, see ``cxr_spurious.models.ops``), cuDNN picks deterministic
    algorithms without autotuning, and ``CUBLAS_WORKSPACE_CONFIG`` is ``:4096:8`` when unset.
    Fresh tensors are not filled with NaN (``FILL_UNINITIALIZED_MEMORY``).
    Same seed, same machine, same precision: same numbers. Other CPU models or GPUs,
    library versions or precisions give other numbers.

    Raises:
        ParameterError: ``CUBLAS_WORKSPACE_CONFIG`` is set to a value under which cuBLAS
            is not deterministic.
    """
    if deterministic:
        current = os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
        if current not in DETERMINISTIC_CUBLAS_CONFIGS:
            raise ParameterError(
                "training.deterministic",
                f"needs the environment variable CUBLAS_WORKSPACE_CONFIG to be one of "
                f"{', '.join(DETERMINISTIC_CUBLAS_CONFIGS)} (or unset), got {current!r}; "
                "unset it or set training.deterministic: false",
            )
    torch.use_deterministic_algorithms(bool(deterministic))
    # PyTorch's default (True) again when off: the flag acts only under deterministic algorithms
    torch.utils.deterministic.fill_uninitialized_memory = (
        FILL_UNINITIALIZED_MEMORY if deterministic else True
    )
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = bool(deterministic)
