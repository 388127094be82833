"""A tiny synthetic chest-X-ray-like set for training tests: manifest + real ImageCache.

Positives carry a bright square "lesion" (with a mask and a box); a bright vertical "tube"
line is confounded with the label in train/val (``p_confound``) and independent in test.
The cache also holds ``no_tube`` / ``no_lesion`` counterfactual renders of test images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.sources.contract import normalise_manifest

TASK = "Pneumothorax"


def render(
    rng: np.random.Generator, size: int, lesion: tuple[int, int] | None, tube: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8) and its lesion mask."""
    image = rng.normal(90, 12, size=(size, size)).clip(0, 255)
    mask = np.zeros((size, size), dtype=np.uint8)
    if lesion is not None:
        y, x = lesion
        k = max(3, size // 6)
        mask[y : y + k, x : x + k] = 1
        image[mask == 1] += 90
    if tube:
        image[2 : size - 2, size // 2 - 1 : size // 2 + 1] += 120
    return image.clip(0, 255).astype(np.uint8), mask


def tiny_study(
    n_train: int = 16,
    n_val: int = 8,
    n_test: int = 8,
    size: int = 32,
    seed: int = 0,
    p_confound: float = 0.9,
) -> tuple[pd.DataFrame, ImageCache]:
    """Manifest (contract columns) and an in-memory ``ImageCache``."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    images, masks, tubes, no_tube, no_lesion = [], [], [], [], []
    k = max(3, size // 6)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            label = float(i % 2)
            p_tube = (p_confound if label else 1 - p_confound) if split != "test" else 0.5
            tube = bool(rng.random() < p_tube)
            lesion = (
                (int(rng.integers(2, size - k - 2)), int(rng.integers(2, size // 2 - k)))
                if label
                else None
            )
            state = rng.bit_generator.state
            img, mask = render(rng, size, lesion, tube)
            rng2 = np.random.default_rng(0)
            rng2.bit_generator.state = state
            img_nt, _ = render(rng2, size, lesion, False)
            rng3 = np.random.default_rng(0)
            rng3.bit_generator.state = state
            img_nl, _ = render(rng3, size, None, tube)
            image_id = f"patient{len(rows):05d}_study1_view1_frontal"
            rows.append({"image_id": image_id, "patient_id": f"p{len(rows)}",
                         "study_id": f"s{len(rows)}", "split": split,
                         "path": f"/nonexistent/{image_id}.png", "view": "PA", "width": size,
                         "height": size, TASK: label, "tube": float(tube)})  # fmt: skip
            images.append(img)
            masks.append(mask)
            tubes.append(np.zeros_like(mask) if not tube else (img > 200).astype(np.uint8))
            no_tube.append(img_nt)
            no_lesion.append(img_nl)
    manifest = normalise_manifest(pd.DataFrame(rows), [TASK], "tiny")
    m = np.stack(masks)[:, None]
    boxes = m.copy()  # squares: the box is the mask
    test_ids = manifest.loc[manifest["split"] == "test", "image_id"].tolist()
    test_rows = [manifest.index[manifest["image_id"] == i][0] for i in test_ids]
    cache = ImageCache(
        image_ids=manifest["image_id"].tolist(),
        tasks=[TASK],
        objects=["Chest Tube"],
        size=size,
        images=np.stack(images),
        masks=m,
        boxes=boxes,
        spurious=np.stack(tubes)[:, None],
        has_mask=np.ones((len(rows), 1), dtype=bool),
        renders={
            "no_tube": np.stack(no_tube)[test_rows],
            "no_lesion": np.stack(no_lesion)[test_rows],
        },
        render_ids={"no_tube": test_ids, "no_lesion": test_ids},
    )
    return manifest, cache


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A resolved training config for tiny CPU runs (default: ERM on a 4-channel U-Net)."""
    from cxr_spurious.training.config import resolve_training_config

    shared = {"tasks": [TASK], "batch_size": 8, "eval_batch_size": 16, "epochs": 1, "lr": 0.003,
              "device": "cpu", "progress": False, "n_boot": 50, "base_channels": 4,
              "target_dilation": 0, "checkpoint_dir": "unused"}  # fmt: skip
    variant = {
        "name": overrides.pop("name", overrides.get("supervision", "erm")),
        "supervision": overrides.pop("supervision", "erm"),
        "architecture": overrides.pop("architecture", "unet_small"),
    }
    shared.update(overrides)
    return resolve_training_config(shared, variant)
