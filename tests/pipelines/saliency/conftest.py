"""Tiny real inputs for the saliency pipeline: an image cache, a manifest, real model artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

SIZE = 64
TASKS = ["Pneumothorax"]
PARAMS_FILE = Path(__file__).resolve().parents[3] / "conf" / "base" / "parameters_saliency.yml"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    out[prefix] = value
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}", sub, out)


@pytest.fixture
def params() -> dict[str, Any]:
    """``params:saliency.*`` entries from the project's parameter file (all nesting levels)."""
    out: dict[str, Any] = {}
    _flatten("params:saliency", yaml.safe_load(PARAMS_FILE.read_text())["saliency"], out)
    return out


@pytest.fixture
def cache_and_manifest():
    from cxr_spurious.sources.cache import ImageCache

    rng = np.random.default_rng(0)
    n = 6
    ids = [f"patient{i:05d}_study1_view1_frontal" for i in range(n)]
    images = rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8)
    masks = np.zeros((n, 1, SIZE, SIZE), np.uint8)
    masks[::2, 0, 5:20, 5:20] = 1
    cache = ImageCache(
        image_ids=ids,
        tasks=TASKS,
        objects=["Chest Tube"],
        size=SIZE,
        images=images,
        masks=masks,
        boxes=masks.copy(),
        spurious=np.zeros((n, 1, SIZE, SIZE), np.uint8),
        has_mask=np.ones((n, 1), bool),
    )
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "split": ["test"] * 4 + ["val"] * 2,
            "width": 1024,
            "height": 1000,
            "Pneumothorax": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0],
        }
    )
    manifest.attrs["tasks"] = TASKS
    return cache, manifest


@pytest.fixture
def artifacts() -> dict[str, dict[str, Any]]:
    from cxr_spurious import models

    configs = {
        "erm": {"architecture": "resnet18", "tasks": TASKS},
        "box": {"architecture": "unet_small", "tasks": TASKS, "base_channels": 8},
        "seg": {"architecture": "unet_small", "tasks": TASKS, "base_channels": 8},
    }
    out = {}
    for i, (name, config) in enumerate(configs.items()):
        import torch

        torch.manual_seed(i)
        out[name] = {"state_dict": models.build_model(config).state_dict(), "config": config}
    return out
