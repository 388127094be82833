"""CAM methods on the multitask dense models (``image_head="linear"``).

Their image logit is ``cls_head(global_avg_pool(bottleneck))``: it never passes through the
decoder, so the CAM target layer must be the bottleneck block (``enc[-1]`` for
``unet_small``, ``layer4`` for the ResNet U-Nets). The reference is pytorch-grad-cam called
directly on that layer with the raw task logit as target.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxr_spurious.models import build_model
from cxr_spurious.saliency import compute_maps
from cxr_spurious.saliency.compute import heatmap_sets_for, plan_methods

TASKS = ["Pneumothorax", "Lung Lesion"]
CAMS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}


def _multitask(architecture: str) -> torch.nn.Module:
    torch.manual_seed(2)  # weights whose Grad-CAM is not all clipped by its ReLU, both tasks
    config = {"architecture": architecture, "tasks": TASKS, "image_head": "linear"}
    if architecture == "unet_small":
        config["base_channels"] = 8
    return build_model(config).eval()


def _bottleneck(model: torch.nn.Module) -> torch.nn.Module:
    return model.enc[-1] if hasattr(model, "enc") else model.layer4


def _images(n: int = 3, size: int = 64) -> np.ndarray:
    return (np.random.default_rng(0).random((n, size, size)) * 255).astype(np.uint8)


@pytest.mark.parametrize("architecture", ["unet_small", "resunet18"])
def test_the_multitask_logit_depends_on_the_cam_layer(architecture):
    model = _multitask(architecture)
    assert model.cam_layer is _bottleneck(model)
    acts = {}
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    logit = model(torch.rand(1, 1, 64, 64))[0, 0]
    handle.remove()
    (grad,) = torch.autograd.grad(logit, acts["a"], allow_unused=True)
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("architecture", ["unet_small", "resunet18"])
def test_the_pooled_head_keeps_the_last_decoder_block(architecture):
    torch.manual_seed(0)
    model = build_model({"architecture": architecture, "tasks": TASKS})
    assert model.image_head == "pool"
    assert model.cam_layer is model.up[-1].conv


@pytest.mark.parametrize("architecture", ["unet_small", "resunet18"])
@pytest.mark.parametrize("method", sorted(CAMS))
def test_cam_methods_on_a_multitask_model_equal_pytorch_grad_cam(architecture, method):
    model = _multitask(architecture)
    images = _images(size=64 if architecture == "unet_small" else 128)  # layer4: 1/32 of it
    maps, _ = compute_maps(model, images, method, TASKS, device="cpu", progress=False)
    x = torch.from_numpy(images).float()[:, None] / 255
    reference = copy.deepcopy(model)
    cam_class = getattr(pytorch_grad_cam, CAMS[method])
    with cam_class(model=reference, target_layers=[_bottleneck(reference)]) as cam:
        for t in range(len(TASKS)):
            expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(t)] * len(x))
            assert np.ptp(expected) > 0  # a real map, not a constant
            np.testing.assert_allclose(
                maps[:, t].astype(np.float32), expected, rtol=0, atol=2e-3, err_msg=TASKS[t]
            )


def test_the_default_plan_runs_on_a_multitask_seg_model():
    """The study's default pairs plan Grad-CAM for ``seg``; with ``supervision=multitask``
    it used to end in torch's bare 'element 0 of tensors does not require grad'."""
    model = _multitask("unet_small")
    planned = plan_methods("seg", model, None)
    assert planned == ["gradcam", "seg_prob"]
    ids = ["a", "b", "c"]
    manifest = pd.DataFrame(
        {"image_id": ids, "split": "test", "width": 64, "height": 64, **{t: 1.0 for t in TASKS}}
    )
    sets = heatmap_sets_for(
        model, _images(), ids, manifest, model_name="seg", methods=planned, progress=False
    )
    assert sorted(sets) == ["gradcam", "seg_prob"]
    assert np.isfinite(sets["gradcam"].maps.astype(np.float32)).all()
    assert sets["gradcam"].maps.astype(np.float32).max() > 0
