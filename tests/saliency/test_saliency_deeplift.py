"""DeepLift is refused where Captum's attributions do not sum to the logit change.

Captum applies DeepLift's rules to nonlinearity modules only; the project's models call
some nonlinearities as functions (``F.max_pool2d``, ``amax`` pooling, ``F.relu``), so the
attributions stop summing to ``f(x) - f(0)`` (summation-to-delta). The reference here is
Captum's ``DeepLift`` called directly, and the sum of its attributions compared with the
model's own forward passes.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cxr_spurious.errors import CxrSpuriousError
from cxr_spurious.models import build_model
from cxr_spurious.saliency import compute_maps
from cxr_spurious.saliency.compute import plan_methods
from cxr_spurious.saliency.registry import DEEPLIFT_RTOL, get_method


class AllModules(nn.Module):
    """Every nonlinearity a module used once: DeepLift's attributions sum to the change."""

    is_dense = False

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.tasks = ["Pneumothorax", "Lung Lesion"]
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 2),
        )
        self.cam_layer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _images(n: int = 4, size: int = 64) -> np.ndarray:
    return (np.random.default_rng(0).random((n, size, size)) * 255).astype(np.uint8)


def _captum(model: nn.Module, images: np.ndarray, task: int) -> tuple[np.ndarray, np.ndarray]:
    """Captum's DeepLift (zero baseline) maps, as the project stores them, and the relative
    gap |sum(attr) - (f(x) - f(0))| / |f(x) - f(0)| per image from the model's own passes."""
    from captum.attr import DeepLift

    work = copy.deepcopy(model).eval()
    for module in work.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    x = torch.from_numpy(images).float()[:, None] / 255
    with warnings.catch_warnings():  # captum's notice that it hooks the nonlinearities
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        attr = DeepLift(work).attribute(
            x.clone().requires_grad_(), torch.zeros_like(x), target=task
        )
    with torch.no_grad():
        change = (work(x) - work(torch.zeros_like(x)))[:, task].double()
    total = attr.detach().double().flatten(1).sum(1)
    maps = attr.detach().abs().sum(1).numpy()
    maps = maps / maps.reshape(len(maps), -1).max(1)[:, None, None]
    return maps, ((total - change).abs() / change.abs()).numpy()


def _unet_small() -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        {"architecture": "unet_small", "tasks": ["Pneumothorax"], "base_channels": 8}
    ).eval()


def test_deeplift_on_unet_small_is_refused_naming_the_model_and_the_gap():
    model, images = _unet_small(), _images()
    _, gap = _captum(model, images, 0)
    assert gap.max() > 10 * DEEPLIFT_RTOL  # the reference: far from summing to the change
    with pytest.raises(CxrSpuriousError) as info:
        compute_maps(model, images, "deeplift", ["Pneumothorax"], device="cpu", progress=False)
    message = str(info.value)
    assert re.search(r"deeplift cannot explain this model \(UNetSmall\) faithfully", message)
    assert "summation-to-delta" in message and "integrated_gradients" in message
    image = int(re.search(r"image (\d+) of the batch", message).group(1))
    share = float(re.search(r"= [^,]+, ([\d.]+)% of", message).group(1)) / 100
    assert share == pytest.approx(gap[image], rel=0.02, abs=1e-3)
    assert image == int(np.argmax(gap))


@pytest.fixture
def nondeterministic():
    """Deterministic algorithms off for the test (a training test in the same process may
    have left them on), restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.mark.parametrize("architecture", ["cnn_small", "densenet121"])
def test_deeplift_is_refused_on_the_other_functional_architectures(architecture, nondeterministic):
    torch.manual_seed(0)
    config = {"architecture": architecture, "tasks": ["Pneumothorax"]}
    if architecture == "cnn_small":
        config["base_channels"] = 8
    model = build_model(config).eval()
    images = _images(size=96)
    _, gap = _captum(model, images, 0)
    assert gap.max() > DEEPLIFT_RTOL
    with pytest.raises(CxrSpuriousError, match="summation-to-delta.*integrated_gradients"):
        compute_maps(model, images, "deeplift", ["Pneumothorax"], device="cpu", progress=False)


def test_deeplift_on_an_all_module_model_runs_and_equals_captum(nondeterministic):
    model, images = AllModules().eval(), _images()
    maps, _ = compute_maps(
        model, images, "deeplift", model.tasks, device="cpu", batch_size=3, progress=False
    )
    for t in range(2):
        expected, gap = _captum(model, images, t)
        assert gap.max() < 1e-4  # summation-to-delta holds (float error only)
        np.testing.assert_allclose(maps[:, t].astype(np.float32), expected, rtol=0, atol=2e-3)


def test_deeplift_under_deterministic_algorithms_is_refused_clearly(nondeterministic, caplog):
    """Captum's max-pooling rule needs max_unpool2d, which deterministic mode (left on by
    training in a ``kedro run``) forbids: a clear refusal, and planning skips the method."""
    model, images = AllModules().eval(), _images()
    torch.use_deterministic_algorithms(True)
    with pytest.raises(CxrSpuriousError, match="under deterministic algorithms.*max_unpool2d"):
        compute_maps(model, images, "deeplift", model.tasks, device="cpu", progress=False)
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.saliency.compute"):
        assert plan_methods("toy", model, ["deeplift"], probe=images) == []
    assert "skipping saliency method 'deeplift' for toy" in caplog.text


def test_planning_skips_deeplift_where_it_is_refused(caplog, nondeterministic):
    images = _images()
    resnet = build_model({"architecture": "resnet18", "tasks": ["Pneumothorax"]}).eval()
    methods = ["deeplift", "integrated_gradients"]
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.saliency.compute"):
        assert plan_methods("seg", _unet_small(), methods, probe=images) == ["integrated_gradients"]
        assert plan_methods("erm", resnet, methods, probe=images) == ["integrated_gradients"]
    text = caplog.text
    assert "skipping saliency method 'deeplift' for seg: deeplift cannot explain" in text
    assert "(UNetSmall) faithfully" in text
    assert "skipping saliency method 'deeplift' for erm" in text and "more than once" in text
    assert plan_methods("toy", AllModules().eval(), methods, probe=images) == methods
    # without images only the attributes are checked (the method fails when it runs)
    assert plan_methods("seg", _unet_small(), methods) == methods
    assert get_method("deeplift").unfit_reason(AllModules(), None) is None


def test_deeplift_refused_after_its_probe_passed_is_left_out_not_fatal(caplog, nondeterministic):
    """The probe runs on the first ``PROBE_IMAGES`` images; where those pass and a later
    batch does not (here: blank first images, for which f(x) - f(0) = 0 and the attributions
    are 0), generating the heatmaps stopped the whole run after the other methods' work.
    ``heatmap_sets_for(skip_unfit=True)`` (the saliency node) leaves DeepLift out with a
    warning naming the batch and the reason, and keeps the other methods' maps."""
    import pandas as pd

    from cxr_spurious.saliency.compute import PROBE_IMAGES, heatmap_sets_for

    model = _unet_small()
    images = _images(n=12)
    images[:PROBE_IMAGES] = 0  # the probe's images: blank, DeepLift's sums hold there
    _, gap = _captum(model, images[PROBE_IMAGES:], 0)
    assert gap.max() > 10 * DEEPLIFT_RTOL  # the reference: the later images fail
    methods = ["deeplift", "integrated_gradients"]
    assert plan_methods("seg", model, methods, probe=images) == methods  # the probe passed
    ids = [f"patient{i:05d}_study1_view1_frontal" for i in range(len(images))]
    manifest = pd.DataFrame({"image_id": ids, "Pneumothorax": 1.0, "width": 64, "height": 64})
    kwargs = dict(model_name="seg", methods=methods, batch_size=4, device="cpu", progress=False)
    with pytest.raises(CxrSpuriousError, match="summation-to-delta"):  # the library default
        heatmap_sets_for(model, images, ids, manifest, **kwargs)
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.saliency.compute"):
        sets = heatmap_sets_for(model, images, ids, manifest, skip_unfit=True, **kwargs)
    assert list(sets) == ["integrated_gradients"]
    assert sets["integrated_gradients"].maps.shape[0] == len(images)
    assert re.search(
        r"seg saliency: saliency method 'deeplift' left out: it refused the model on batch "
        r"2 of 3 \(after its probe on the first 4 images passed\): deeplift cannot explain",
        caplog.text,
    )
    alone = heatmap_sets_for(model, images, ids, manifest, **{**kwargs, "methods": methods[1:]})
    np.testing.assert_array_equal(
        sets["integrated_gradients"].maps, alone["integrated_gradients"].maps
    )


def test_the_sanity_check_leaves_out_deeplift_refused_on_the_randomised_copy(
    caplog, nondeterministic
):
    """The model-randomisation check explains the trained model and a re-initialised copy;
    DeepLift can pass on the first (the planning probe) and miss the logit change on the
    second, which stopped the saliency pipeline. The method now has no rows, with a warning,
    and the other methods' rows are unchanged."""
    from cxr_spurious.saliency.sanity import model_randomisation_check

    images = _images(n=6)
    trained = AllModules().eval()  # DeepLift's sums hold on it
    random = _unet_small()  # ... and not on this "randomised copy"
    kwargs = dict(model_name="toy", n_boot=20, device="cpu", random_model=random)
    assert get_method("deeplift").unfit_reason(random, None) is None  # attributes pass
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.saliency.sanity"):
        table = model_randomisation_check(
            trained, images, ["deeplift", "saliency"], ["Pneumothorax"], **kwargs
        )
    assert list(table["method"]) == ["saliency"]
    assert "sanity toy: saliency method 'deeplift' left out (refused on the randomised model)" in (
        caplog.text
    )
    alone = model_randomisation_check(trained, images, ["saliency"], ["Pneumothorax"], **kwargs)
    pd_equal = alone.reset_index(drop=True).equals(table.reset_index(drop=True))
    assert pd_equal
