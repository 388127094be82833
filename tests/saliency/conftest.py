"""Toy models implementing the project's model interface, small enough for unit tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

TASKS = ["Pneumothorax", "Lung Lesion"]
SIZE = 32


class ToyClassifier(nn.Module):
    """Conv features (the cam layer) -> global average pool -> linear head, one logit per task."""

    is_dense = False

    def __init__(self, tasks: list[str] = TASKS, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tasks = list(tasks)
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 8, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, len(self.tasks))

    @property
    def cam_layer(self) -> nn.Module:
        return self.features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class ToyDense(nn.Module):
    """Dense model: per-pixel logits; the image logit is the max of the 5x5-averaged map."""

    is_dense = True

    def __init__(self, tasks: list[str] = TASKS, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tasks = list(tasks)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(8, len(self.tasks), 1)

    @property
    def cam_layer(self) -> nn.Module:
        return self.features

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = nn.functional.avg_pool2d(
            self.dense_logits(x), 5, stride=1, padding=2, count_include_pad=False
        )
        return dense.amax(dim=(2, 3))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class RegionMask(nn.Module):
    """Multiplies by a fixed binary mask: what lies outside never reaches the head."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def region_mask(size: int = SIZE) -> np.ndarray:
    """The known region: the top-left quadrant."""
    m = np.zeros((size, size), dtype=bool)
    m[: size // 2, : size // 2] = True
    return m


class RegionModel(nn.Module):
    """A classifier whose logit depends only on the top-left quadrant (the known answer)."""

    is_dense = False

    def __init__(self, size: int = SIZE) -> None:
        super().__init__()
        self.tasks = ["Pneumothorax"]
        conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            conv.weight.fill_(1 / 9)
            conv.bias.zero_()
        self.features = nn.Sequential(
            conv, nn.ReLU(), RegionMask(torch.from_numpy(region_mask(size)).float())
        )
        self.fc = nn.Linear(2, 1)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.fill_(-0.1)

    @property
    def cam_layer(self) -> nn.Module:
        return self.features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class NoCamModel(ToyClassifier):
    """A classifier without a convolutional target layer (e.g. a transformer)."""

    @property
    def cam_layer(self) -> None:
        return None


class LinearModel(nn.Module):
    """logit = w . x: its input gradient is w, so random weights give unrelated maps."""

    is_dense = False

    def __init__(self, size: int = SIZE, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tasks = ["Pneumothorax"]
        self.fc = nn.Linear(size * size, 1)
        self.cam_layer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def blob_images(n: int = 6, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """uint8 images with bright squares both inside and outside the top-left quadrant."""
    rng = np.random.default_rng(seed)
    imgs = (rng.random((n, size, size)) * 30).astype(np.uint8)
    for img in imgs:
        for r0, c0 in ((4, 4), (20, 20), (4, 20), (20, 4)):
            img[r0 : r0 + 6, c0 : c0 + 6] = 200 + rng.integers(0, 50)
    return imgs


def toy_manifest(
    image_ids: list[str], tasks: list[str] = TASKS, split: str = "test"
) -> pd.DataFrame:
    """Manifest rows with labels, sizes and a split."""
    n = len(image_ids)
    df = pd.DataFrame(
        {
            "image_id": image_ids,
            "split": split,
            "width": 100 + np.arange(n),
            "height": 200 + np.arange(n),
        }
    )
    for j, task in enumerate(tasks):
        labels = ((np.arange(n) + j) % 2).astype(float)
        labels[-1] = np.nan
        df[task] = labels
    df.attrs["tasks"] = list(tasks)
    return df


@pytest.fixture
def images() -> np.ndarray:
    return blob_images()


@pytest.fixture
def classifier() -> ToyClassifier:
    return ToyClassifier().eval()


@pytest.fixture
def dense() -> ToyDense:
    return ToyDense().eval()


def hooks_on(model: nn.Module) -> int:
    """Number of forward / backward hooks registered on any module of ``model``."""
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


@pytest.fixture
def toys():
    """The toy classes and helpers of this conftest (tests never import conftest by name)."""
    import types

    return types.SimpleNamespace(
        TASKS=TASKS,
        SIZE=SIZE,
        ToyClassifier=ToyClassifier,
        ToyDense=ToyDense,
        RegionModel=RegionModel,
        NoCamModel=NoCamModel,
        LinearModel=LinearModel,
        blob_images=blob_images,
        toy_manifest=toy_manifest,
        region_mask=region_mask,
        hooks_on=hooks_on,
    )
