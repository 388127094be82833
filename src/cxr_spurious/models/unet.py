"""Dense U-Nets: a small 4-level U-Net (CPU default) and U-Nets on ResNet encoders.

Image-level logits come from the dense map by a pooling rule (``max`` over a k x k
average-pooled map, ``mean`` or ``topk_mean``), or, for the multitask variant
(``image_head="linear"``), from a linear head on the pooled bottleneck features; the
``cam_layer`` of CAM methods is the block the image logit comes from (the last decoder
block, or the bottleneck for the linear head).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cxr_spurious.errors import ParameterError
from cxr_spurious.models.base import POOLINGS, CXRModel, pool_dense_logits
from cxr_spurious.models.ops import global_avg_pool, resize_bilinear
from cxr_spurious.models.pretrained import load_backbone

IMAGE_HEADS: tuple[str, ...] = ("pool", "linear")


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def small_encoder(c_in: int, base: int) -> nn.ModuleList:
    """The four conv blocks of ``unet_small`` (widths base, 2, 4, 8 x base)."""
    c = [base, base * 2, base * 4, base * 8]
    return nn.ModuleList(
        [
            conv_block(c_in, c[0]),
            conv_block(c[0], c[1]),
            conv_block(c[1], c[2]),
            conv_block(c[2], c[3]),
        ]
    )


def run_small_encoder(blocks: nn.ModuleList, h: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output, with 2x2 max pooling (ceil mode) between blocks."""
    outs = []
    for i, block in enumerate(blocks):
        h = block(h if i == 0 else F.max_pool2d(h, 2, ceil_mode=True))
        outs.append(h)
    return outs


class UpBlock(nn.Module):
    """Upsample to the skip's size, concatenate, convolve."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.conv = conv_block(c_in + c_skip, c_out)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Upsample ``x`` (to ``skip``'s or ``size``), concatenate ``skip`` when given, convolve."""
        target = skip.shape[-2:] if skip is not None else size
        x = resize_bilinear(x, target)  # deterministic backward on CUDA too
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class DenseModel(CXRModel):
    """Shared logic of the dense models: pooling, head, ``forward`` and ``embed``."""

    is_dense = True

    def __init__(
        self, tasks: Sequence[str], pooling: str, pool_kernel: int, topk: float, image_head: str
    ) -> None:
        super().__init__(tasks)
        if pooling not in POOLINGS:
            raise ParameterError(
                "training.dense_pooling",
                f"unknown pooling '{pooling}'; valid: {', '.join(POOLINGS)}",
            )
        if image_head not in IMAGE_HEADS:
            raise ParameterError(
                "training.image_head",
                f"unknown image head '{image_head}'; valid: {', '.join(IMAGE_HEADS)}",
            )
        self.pooling, self.pool_kernel, self.topk, self.image_head = (
            pooling,
            int(pool_kernel),
            float(topk),
            image_head,
        )

    def _encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense logits ``(B, T, S, S)`` and bottleneck features ``(B, C, h, w)``."""
        raise NotImplementedError

    def _make_heads(self, c_decoder: int, c_bottleneck: int) -> None:
        self.seg_head = nn.Conv2d(c_decoder, len(self.tasks), 1)
        self.embed_dim = c_bottleneck
        self.cls_head = (
            nn.Linear(c_bottleneck, len(self.tasks)) if self.image_head == "linear" else None
        )

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits ``(B, T, S, S)``."""
        return self._encode_decode(x)[0]

    def all_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image logits, embedding and dense logits from one pass (used by training)."""
        dense, bottleneck = self._encode_decode(x)
        emb = global_avg_pool(bottleneck)
        if self.cls_head is not None:
            logits = self.cls_head(emb)
        else:
            logits = pool_dense_logits(dense, self.pooling, self.pool_kernel, self.topk)
        return logits, emb, dense

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image logits and the pooled bottleneck features."""
        logits, emb, _ = self.all_outputs(x)
        return logits, emb


class UNetSmall(DenseModel):
    """A 4-level U-Net (``base`` channels doubling per level), fast on a CPU at 96 px."""

    def __init__(
        self,
        tasks: Sequence[str],
        base: int = 16,
        pooling: str = "max",
        pool_kernel: int = 5,
        topk: float = 0.01,
        image_head: str = "pool",
    ) -> None:
        super().__init__(tasks, pooling, pool_kernel, topk, image_head)
        c = [base, base * 2, base * 4, base * 8]
        self.enc = small_encoder(1, base)
        self.up = nn.ModuleList(
            [UpBlock(c[3], c[2], c[2]), UpBlock(c[2], c[1], c[1]), UpBlock(c[1], c[0], c[0])]
        )
        self._make_heads(c[0], c[3])

    @property
    def cam_layer(self) -> nn.Module:
        """The block the image logit is computed from, for CAM methods.

        With ``image_head="pool"`` (default) the logit pools the dense map: the last decoder
        conv block. With ``image_head="linear"`` (multitask) the logit is ``cls_head`` of the
        pooled bottleneck and never passes through the decoder: the bottleneck block
        ``enc[-1]`` (1/8 of the input resolution), whose output the logit depends on.
        """
        return self.enc[-1] if self.image_head == "linear" else self.up[-1].conv

    def _encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = run_small_encoder(self.enc, self.normalise(x))
        h = bottleneck = skips[-1]
        for up, skip in zip(self.up, reversed(skips[:-1])):
            h = up(h, skip)
        return self.seg_head(h), bottleneck


_RESNET_CHANNELS = {
    18: (64, 64, 128, 256, 512),
    34: (64, 64, 128, 256, 512),
    50: (64, 256, 512, 1024, 2048),
}


class ResUNet(DenseModel):
    """U-Net with a torchvision ResNet encoder (stem, layer1..layer4) and a light decoder."""

    def __init__(
        self,
        depth: int,
        tasks: Sequence[str],
        pretrained: str | None = None,
        pooling: str = "max",
        pool_kernel: int = 5,
        topk: float = 0.01,
        image_head: str = "pool",
        decoder: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__(tasks, pooling, pool_kernel, topk, image_head)
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        net = load_backbone(net, pretrained, "conv1", ("fc.",))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.maxpool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        e = _RESNET_CHANNELS[depth]
        d = list(decoder)
        self.up = nn.ModuleList(
            [
                UpBlock(e[4], e[3], d[0]),
                UpBlock(d[0], e[2], d[1]),
                UpBlock(d[1], e[1], d[2]),
                UpBlock(d[2], e[0], d[3]),
                UpBlock(d[3], 0, d[4]),
            ]
        )
        self._make_heads(d[4], e[4])

    @property
    def cam_layer(self) -> nn.Module:
        """The block the image logit is computed from, for CAM methods.

        With ``image_head="pool"`` (default) the logit pools the dense map: the last decoder
        conv block. With ``image_head="linear"`` (multitask) the logit is ``cls_head`` of the
        pooled bottleneck and never passes through the decoder: the encoder's ``layer4``
        (1/32 of the input resolution), whose output the logit depends on.
        """
        return self.layer4 if self.image_head == "linear" else self.up[-1].conv

    def _encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = (x.shape[-2], x.shape[-1])
        s0 = self.stem(self.normalise(x))
        s1 = self.layer1(self.maxpool(s0))
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        s4 = self.layer4(s3)
        h = self.up[0](s4, s3)
        h = self.up[1](h, s2)
        h = self.up[2](h, s1)
        h = self.up[3](h, s0)
        h = self.up[4](h, None, size)
        return self.seg_head(h), s4
