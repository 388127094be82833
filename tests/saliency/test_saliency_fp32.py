"""Saliency maps and their probabilities are computed in fp32, also inside a bf16 autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_spurious.models import build_model
from cxr_spurious.saliency.compute import compute_maps


@pytest.mark.parametrize("method", ["gradcam", "saliency", "seg_prob"])
def test_compute_maps_ignores_an_enclosing_bf16_autocast(toys, method: str) -> None:
    model = build_model(
        {"architecture": "unet_small", "tasks": ["Pneumothorax"], "base_channels": 4}
    ).eval()
    images = toys.blob_images(4, size=32)
    kw = {"device": "cpu", "progress": False, "batch_size": 2}
    maps, probs = compute_maps(model, images, method, ["Pneumothorax"], **kw)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        maps_in, probs_in = compute_maps(model, images, method, ["Pneumothorax"], **kw)
    with torch.no_grad():
        x = torch.from_numpy(images).float()[:, None] / 255.0
        ref = torch.sigmoid(model(x)).double().numpy()  # plain fp32 forward
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(probs_in, probs)
    np.testing.assert_array_equal(maps_in, maps)
