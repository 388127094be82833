"""Saliency runs the model in channels_last where training does (CPU, CUDA), with the maps
and probabilities of the default memory format up to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxr_spurious.models import build_model
from cxr_spurious.saliency import compute as saliency_compute
from cxr_spurious.saliency.compute import compute_maps, to_input, uses_channels_last


def _unet() -> nn.Module:
    torch.manual_seed(0)
    config = {"architecture": "unet_small", "tasks": ["Pneumothorax"], "base_channels": 4}
    return build_model(config).eval()


def _record_conv_input_formats(model: nn.Module) -> tuple[list[bool], list]:
    """Whether each multi-channel conv input is channels_last (and not plain contiguous)."""
    seen: list[bool] = []

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        if x.dim() == 4 and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
            seen.append(
                x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            )

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    return seen, handles


def test_cpu_uses_channels_last_as_training_does() -> None:
    assert uses_channels_last(torch.device("cpu"))
    x = to_input(np.zeros((2, 8, 8), np.uint8), torch.device("cpu"), channels_last=True)
    assert x.shape == (2, 1, 8, 8)
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients", "seg_prob"])
def test_channels_last_maps_match_the_default_format(toys, monkeypatch, method: str) -> None:
    images = toys.blob_images(4, size=32)
    kw = {"device": "cpu", "progress": False, "batch_size": 2}

    model = _unet()
    seen, handles = _record_conv_input_formats(model)
    maps_cl, probs_cl = compute_maps(model, images, method, ["Pneumothorax"], **kw)
    for h in handles:
        h.remove()
    assert seen and all(seen), f"conv inputs not channels_last: {seen}"

    monkeypatch.setattr(saliency_compute, "uses_channels_last", lambda device: False)
    model = _unet()
    seen, handles = _record_conv_input_formats(model)
    maps, probs = compute_maps(model, images, method, ["Pneumothorax"], **kw)
    for h in handles:
        h.remove()
    assert seen and not any(seen), "the monkeypatched run should use the default format"

    np.testing.assert_allclose(probs_cl, probs, rtol=0, atol=1e-5)
    # float16 maps in [0, 1] (CAM, per-map max scaled) or probabilities: rounding only
    np.testing.assert_allclose(maps_cl.astype(np.float32), maps.astype(np.float32), atol=2e-3)
