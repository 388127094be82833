"""Deterministic stand-ins for the CUDA kernels the models would otherwise use.

Under ``torch.use_deterministic_algorithms(True)`` (``training.deterministic: true``) the
CUDA backward of bilinear ``interpolate`` and of ``adaptive_avg_pool2d`` raises, because
both accumulate gradients with atomic adds. On CUDA the models call the equivalents
below instead: bilinear resizing as two matrix products with the interpolation weights
(cuBLAS, deterministic with ``CUBLAS_WORKSPACE_CONFIG``) and global average pooling as
a mean. They agree with the PyTorch kernels up to float rounding (``tests/models``). On
CPU, where every kernel used is deterministic, the PyTorch kernels run unchanged, so CPU
results are bit-identical to those of the plain kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def use_deterministic_equivalents(x: torch.Tensor) -> bool:
    """Whether ``x`` lives where the stand-ins are needed (CUDA)."""
    return x.device.type == "cuda"


def bilinear_weights(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` float64 weights of 1-D linear resizing, ``align_corners=False``.

    Same rule as PyTorch's: output pixel ``o`` samples ``(o + 0.5) * n_in / n_out - 0.5``,
    clamped at 0, between its two neighbouring input pixels (the last one repeated).
    """
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    lo = src.floor().long().clamp_max(n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights


def matmul_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as ``Wy @ x @ Wx^T``.

    Runs in ``x``'s dtype (autocast does not change it), so it matches the kernel under
    bf16 autocast as well.
    """
    height, width = int(size[0]), int(size[1])
    wy = bilinear_weights(x.shape[-2], height).to(device=x.device, dtype=x.dtype)
    wx = bilinear_weights(x.shape[-1], width).to(device=x.device, dtype=x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = torch.matmul(torch.matmul(wy, x), wx.T)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)  # as the kernel keeps it
    return out


def resize_bilinear(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resizing of ``(B, C, H, W)`` to ``size`` (``align_corners=False``),
    deterministic in backward on every device."""
    target = (int(size[0]), int(size[1]))
    if use_deterministic_equivalents(x):
        return matmul_bilinear_resize(x, target)
    return F.interpolate(x, size=target, mode="bilinear", align_corners=False)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C)`` mean over the spatial dimensions, deterministic in
    backward on every device (``adaptive_avg_pool2d``'s CUDA backward is not)."""
    if use_deterministic_equivalents(x):
        return x.mean(dim=(2, 3))
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
