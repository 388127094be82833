"""The model interface every architecture implements (see docs/ARCHITECTURE.md).

Input is ``(B, 1, S, S)`` float in [0, 1]; normalisation happens inside the model so that
saliency and robustness code can feed raw cache images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxr_spurious.errors import ParameterError

# Grey-level equivalents of the ImageNet statistics (mean of the RGB values), so that
# pretrained kernels summed over RGB see inputs on the scale they were trained on.
GREY_MEAN = (0.485 + 0.456 + 0.406) / 3
GREY_STD = (0.229 + 0.224 + 0.225) / 3

POOLINGS: tuple[str, ...] = ("max", "mean", "topk_mean")


class CXRModel(nn.Module):
    """Base class: normalisation, task names and the image-level / embedding interface.

    Subclasses implement ``_features`` (normalised input -> feature map used by ``embed``)
    and ``forward``; dense subclasses also ``dense_logits``.
    """

    is_dense: bool = False

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks:
            raise ParameterError("training.tasks", "at least one task is required")
        self.tasks: list[str] = list(tasks)
        self.register_buffer("pixel_mean", torch.tensor(GREY_MEAN), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(GREY_STD), persistent=False)

    @property
    def cam_layer(self) -> nn.Module | None:
        """Last convolutional block suitable for CAM methods."""
        return None

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] grey input to the network's input scale."""
        return (x - self.pixel_mean) / self.pixel_std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, D)``."""
        return self.logits_and_embedding(x)[1]

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image logits ``(B, T)`` and embedding ``(B, D)`` in one forward pass."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image-level logits ``(B, T)``."""
        return self.logits_and_embedding(x)[0]

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits ``(B, T, S, S)`` (dense models only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a dense model")


def pool_dense_logits(
    dense: torch.Tensor, pooling: str, kernel: int = 5, topk: float = 0.01
) -> torch.Tensor:
    """Image-level logits from a dense logit map.

    Args:
        dense: ``(B, T, H, W)`` logits.
        pooling: ``max`` (max of the ``kernel`` x ``kernel`` average-pooled map, so a single
            noisy pixel cannot decide), ``mean``, or ``topk_mean`` (mean of the top ``topk``
            fraction of pixels). The windows of ``max`` lie wholly inside the map (no
            padding): each averages ``kernel**2`` pixels, at the border too, where markers
            and collimation edges sit (a map smaller than the window is one window).
        kernel: Averaging window of ``max`` (odd; 1 = plain max).
        topk: Fraction of pixels averaged by ``topk_mean``.

    Returns:
        ``(B, T)`` logits.
    """
    if pooling == "max":
        if kernel % 2 == 0 or kernel < 1:
            raise ParameterError("training.pool_kernel", f"must be odd and >= 1, got {kernel}")
        if kernel > 1:
            k = min(kernel, dense.shape[-2], dense.shape[-1])
            dense = F.avg_pool2d(dense, k, stride=1)
        return dense.amax(dim=(2, 3))
    if pooling == "mean":
        return dense.mean(dim=(2, 3))
    if pooling == "topk_mean":
        flat = dense.flatten(2)
        k = max(1, int(round(topk * flat.shape[-1])))
        return flat.topk(k, dim=-1).values.mean(dim=-1)
    raise ParameterError(
        "training.dense_pooling", f"unknown pooling '{pooling}'; valid: {', '.join(POOLINGS)}"
    )
