"""Image-level classifiers on torchvision backbones (ResNet, DenseNet), 1-channel input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cxr_spurious.models.base import CXRModel
from cxr_spurious.models.ops import global_avg_pool
from cxr_spurious.models.pretrained import load_backbone
from cxr_spurious.models.unet import run_small_encoder, small_encoder


class ResNetClassifier(CXRModel):
    """torchvision ResNet-18/34/50 with a linear head over the pooled ``layer4`` features."""

    def __init__(self, depth: int, tasks: Sequence[str], pretrained: str | None = None) -> None:
        super().__init__(tasks)
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        net = load_backbone(net, pretrained, "conv1", ("fc.",))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.embed_dim = net.fc.in_features
        self.fc = nn.Linear(self.embed_dim, len(self.tasks))

    @property
    def cam_layer(self) -> nn.Module:
        """``layer4``."""
        return self.layer4

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image logits and the pooled ``layer4`` features."""
        h = self.maxpool(self.relu(self.bn1(self.conv1(self.normalise(x)))))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        emb = global_avg_pool(h)
        return self.fc(emb), emb


class DenseNetClassifier(CXRModel):
    """torchvision DenseNet-121 (the CheXpert / CheXlocalize backbone)."""

    def __init__(self, tasks: Sequence[str], pretrained: str | None = None) -> None:
        super().__init__(tasks)
        net = torchvision.models.densenet121(weights=None)
        net = load_backbone(net, pretrained, "features.conv0", ("classifier.",))
        self.features = net.features
        self.embed_dim = net.classifier.in_features
        self.classifier = nn.Linear(self.embed_dim, len(self.tasks))

    @property
    def cam_layer(self) -> nn.Module:
        """The ``features`` block (its output feeds the final ReLU and pooling)."""
        return self.features

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image logits and the pooled feature vector."""
        h = F.relu(self.features(self.normalise(x)))
        emb = global_avg_pool(h)
        return self.classifier(emb), emb


class SmallCNNClassifier(CXRModel):
    """The ``unet_small`` encoder (four conv blocks, 2x2 max pooling between them) with a
    global-average-pooled linear head.

    Same encoder as the dense ``unet_small`` models, so that image-label (ERM) and
    location-supervised variants differ in supervision, not in backbone; its last block
    keeps 1/8 of the input resolution (12x12 at 96 px), so CAM methods resolve thin
    structures that a ResNet's 1/32 grid (3x3 at 96 px) cannot.
    """

    def __init__(self, tasks: Sequence[str], base: int = 16) -> None:
        super().__init__(tasks)
        self.enc = small_encoder(1, base)
        self.embed_dim = base * 8
        self.fc = nn.Linear(self.embed_dim, len(self.tasks))

    @property
    def cam_layer(self) -> nn.Module:
        """The last encoder block."""
        return self.enc[-1]

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image logits and the pooled last-block features."""
        h = run_small_encoder(self.enc, self.normalise(x))[-1]
        emb = global_avg_pool(h)
        return self.fc(emb), emb
