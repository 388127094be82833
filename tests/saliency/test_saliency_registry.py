"""Registry: every method on a classifier and a dense model, known answers, hooks, errors."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from cxr_spurious.errors import CxrSpuriousError, ParameterError
from cxr_spurious.saliency import available_methods, compute_maps, get_method
from cxr_spurious.saliency.registry import MethodOptions

FAST = MethodOptions(ig_steps=4, smoothgrad_samples=3, occlusion_window=8, occlusion_stride=8)
CLASSIFIER_METHODS = [m for m in available_methods() if m != "seg_prob"]


def test_registry_lists_the_documented_methods():
    assert set(available_methods()) == {
        "gradcam",
        "gradcam++",
        "eigencam",
        "layercam",
        "integrated_gradients",
        "deeplift",
        "occlusion",
        "saliency",
        "smoothgrad",
        "seg_prob",
    }


@pytest.mark.parametrize("method", CLASSIFIER_METHODS)
def test_classifier_maps_finite_right_shape_and_hooks_released(method, classifier, images, toys):
    maps, probs = compute_maps(
        classifier,
        images,
        method,
        toys.TASKS,
        batch_size=4,
        device="cpu",
        options=FAST,
        progress=False,
    )
    assert maps.shape == (len(images), 2, toys.SIZE, toys.SIZE)
    assert maps.dtype == np.float16
    assert np.isfinite(maps).all() and (maps >= 0).all() and maps.max() <= 1.0
    with torch.inference_mode():
        expected = torch.sigmoid(
            classifier(torch.from_numpy(images).float()[:, None] / 255)
        ).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    # the caller's model is untouched (compute_maps works on a copy of it)
    assert toys.hooks_on(classifier) == 0
    assert all(p.requires_grad for p in classifier.parameters())


def test_deeplift_on_the_amax_pooled_dense_toy_is_refused(dense, images, toys):
    """``ToyDense`` pools its map with ``amax`` (a function, as the project's dense models
    do): DeepLift's attributions miss the logit change, so the method is refused."""
    with pytest.raises(CxrSpuriousError, match=r"\(ToyDense\) faithfully.*summation-to-delta"):
        compute_maps(dense, images, "deeplift", ["Lung Lesion"], device="cpu", progress=False)
    assert toys.hooks_on(dense) == 0


@pytest.mark.parametrize("method", [m for m in available_methods() if m != "deeplift"])
def test_dense_maps_finite_right_shape_and_hooks_released(method, dense, images, toys):
    maps, probs = compute_maps(
        dense,
        images,
        method,
        ["Lung Lesion"],
        batch_size=4,
        device="cpu",
        options=FAST,
        progress=False,
    )
    assert maps.shape == (len(images), 1, toys.SIZE, toys.SIZE)
    assert np.isfinite(maps).all()
    assert probs.shape == (len(images), 1)
    assert toys.hooks_on(dense) == 0


@pytest.mark.parametrize("method", available_methods())
def test_a_method_leaves_the_model_it_explains_as_it_found_it(
    method, classifier, dense, images, toys
):
    """On the model the method runs on (``compute_maps`` hands it a copy of the caller's):
    its hooks are gone and every parameter's ``requires_grad`` is back after the method's
    context closes, whatever the method froze or hooked while attributing."""
    from cxr_spurious.saliency.compute import to_input

    spec = get_method(method)
    model = copy.deepcopy(dense if spec.needs_dense else classifier)
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a caller's own choice, to be kept as well
    before = [p.requires_grad for p in params]
    x = to_input(images[:2], torch.device("cpu"))
    with spec.open(model, FAST) as attribute:
        for_tasks = getattr(attribute, "for_tasks", None)
        out = list(for_tasks(x, [0])) if for_tasks is not None else [attribute(x, 0)]
    assert out[0][0].shape[0] == 2
    assert [p.requires_grad for p in params] == before
    assert toys.hooks_on(model) == 0
    assert not model.training


def _seg_prob_and_exact(dense, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stored maps, image probabilities) of ``seg_prob`` for Pneumothorax, and the float32
    probability map ``sigmoid(dense_logits)`` computed here."""
    maps, probs = compute_maps(
        dense, images, "seg_prob", ["Pneumothorax"], device="cpu", progress=False
    )
    with torch.inference_mode():
        exact = torch.sigmoid(dense.dense_logits(torch.from_numpy(images).float()[:, None] / 255))[
            :, 0
        ].numpy()
    return maps, probs, exact


def test_seg_prob_is_the_dense_probability_map_over_its_maximum(dense, images):
    maps, probs, exact = _seg_prob_and_exact(dense, images)
    expected = exact / exact.reshape(len(exact), -1).max(axis=1)[:, None, None]
    np.testing.assert_allclose(maps[:, 0].astype(np.float32), expected, rtol=1e-3)
    assert (maps.reshape(len(maps), -1).max(axis=1) == 1).all()
    assert ((probs > 0) & (probs < 1)).all()  # the image's probability stays a probability


def test_a_confident_negative_seg_prob_map_keeps_its_segmentation(dense, images):
    """Dense logits near -20: the probabilities (about 2e-9) underflow to 0 in float16. The
    stored map must still segment as the float32 probability map does."""
    from cxr_spurious.localization.segmentation import heatmap_to_segmentation

    with torch.no_grad():
        dense.head.bias -= 20.0
    maps, _, probs32 = _seg_prob_and_exact(dense, images)
    assert probs32.max() < 1e-7 and not probs32.astype(np.float16).any()  # the underflow
    for stored, exact in zip(maps[:, 0], probs32):
        got = heatmap_to_segmentation(stored.astype(np.float32), 64, 64)
        want = heatmap_to_segmentation(exact, 64, 64)
        assert got.any()
        assert (got != want).mean() < 0.01  # float16 rounding of the scaled map only


def test_gradcam_matches_a_manual_computation(classifier, images):
    """Grad-CAM = ReLU(sum_c mean(dlogit/dA_c) A_c), min-max scaled, resized to the input."""
    maps, _ = compute_maps(
        classifier, images[:1], "gradcam", ["Lung Lesion"], device="cpu", progress=False
    )
    x = torch.from_numpy(images[:1]).float()[:, None] / 255
    acts = classifier.features(x).detach().requires_grad_(True)
    logit = classifier.fc(acts.mean(dim=(2, 3)))[0, 1]
    (grad,) = torch.autograd.grad(logit, acts)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * acts).sum(1))[0].detach().numpy()
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(cam)[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False
    )[0, 0].numpy()
    # cv2.resize and torch bilinear differ slightly at borders: compare ranks and values loosely.
    assert np.corrcoef(maps[0, 0].astype(float).ravel(), up.ravel())[0, 1] > 0.97


def _captum_ig_maps(model: torch.nn.Module, x: torch.Tensor, task: int, steps: int):
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=task, n_steps=steps,
        internal_batch_size=len(x) * steps,
    )  # fmt: skip
    maps = attr.abs().sum(dim=1).detach().numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return (maps / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float16)


@pytest.mark.parametrize("architecture", ["toy", "unet_small"])
def test_integrated_gradients_equal_captum_called_once_per_task(architecture, classifier, images):
    """The shared forward pass per batch gives Captum's maps for every task and batch."""
    if architecture == "toy":
        model, tasks = classifier, ["Lung Lesion", "Pneumothorax"]
    else:
        from cxr_spurious.models import build_model

        torch.manual_seed(0)
        tasks = ["Pneumothorax", "Lung Lesion", "Edema"]
        model = build_model({"architecture": "unet_small", "tasks": tasks}).eval()
    steps = 5
    maps, _ = compute_maps(
        model, images, "integrated_gradients", tasks, batch_size=3, device="cpu",
        options=MethodOptions(ig_steps=steps), progress=False,
    )  # fmt: skip
    x = torch.from_numpy(images).float()[:, None] / 255
    # the project runs a channels_last copy on the CPU: Captum on the same layout gives the
    # same maps exactly; on the caller's (default) layout, the same up to float rounding
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for t, task in enumerate(tasks):
        index = list(model.tasks).index(task)
        same_layout = np.concatenate(
            [_captum_ig_maps(model_cl, x_cl[i : i + 3], index, steps) for i in range(0, len(x), 3)]
        )
        assert np.abs(maps[:, t].astype(np.float32) - same_layout.astype(np.float32)).max() == 0
        default = np.concatenate(
            [_captum_ig_maps(model, x[i : i + 3], index, steps) for i in range(0, len(x), 3)]
        )
        np.testing.assert_allclose(maps[:, t], default, rtol=0, atol=2e-3, err_msg=task)
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # the caller's model untouched


@pytest.mark.parametrize(
    "method",
    [
        "gradcam",
        "gradcam++",
        "layercam",
        "integrated_gradients",
        "deeplift",
        "occlusion",
        "saliency",
        "smoothgrad",
    ],
)
def test_map_mass_concentrates_where_the_logit_looks(method, toys):
    """The RegionModel sees only the top-left quadrant, although every quadrant has a blob."""
    model = toys.RegionModel().eval()
    images = toys.blob_images(4)
    maps, _ = compute_maps(
        model,
        images,
        method,
        ["Pneumothorax"],
        device="cpu",
        options=MethodOptions(
            ig_steps=8,
            smoothgrad_samples=4,
            smoothgrad_stdev=0.02,
            occlusion_window=4,
            occlusion_stride=4,
        ),
        progress=False,
    )
    region = toys.region_mask()
    grown = np.zeros_like(region)
    grown[: toys.SIZE // 2 + 1, : toys.SIZE // 2 + 1] = True  # a 3x3 conv reaches one pixel out
    mass = maps[:, 0].astype(np.float64)
    share = mass[:, grown].sum(axis=1) / mass.sum(axis=(1, 2))
    assert (share > 0.9).all(), share


def test_unknown_method_lists_valid_names(classifier, images):
    with pytest.raises(
        ParameterError, match="unknown saliency method 'gradcamz'.*eigencam.*seg_prob"
    ):
        compute_maps(classifier, images, "gradcamz", ["Pneumothorax"], progress=False)
    with pytest.raises(ParameterError, match="saliency.methods"):
        get_method("nope")


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "layercam"])
def test_cam_method_without_cam_layer_is_a_clear_error(method, images, toys):
    model = toys.NoCamModel().eval()
    with pytest.raises(
        CxrSpuriousError,
        match=re.escape(f"'{method}' needs a convolutional target layer")
        + ".*integrated_gradients",
    ):
        compute_maps(model, images, method, ["Pneumothorax"], progress=False)
    assert toys.hooks_on(model) == 0


def test_seg_prob_on_a_classifier_is_a_clear_error(classifier, images):
    with pytest.raises(CxrSpuriousError, match="'seg_prob' needs a dense model.*gradcam"):
        compute_maps(classifier, images, "seg_prob", ["Pneumothorax"], progress=False)


def test_task_not_trained_lists_the_model_tasks(classifier, images):
    with pytest.raises(
        ParameterError, match=r"task\(s\) \['Edema'\].*\['Pneumothorax', 'Lung Lesion'\]"
    ):
        compute_maps(classifier, images, "gradcam", ["Edema"], progress=False)


@pytest.mark.parametrize("tasks", [[], ""])
def test_no_task_named_is_refused_instead_of_empty_maps(classifier, images, tasks):
    # an empty list (or a blank --params string) used to give zero-row heatmap sets
    with pytest.raises(ParameterError, match=r"saliency\.tasks.*names no task.*null for all"):
        compute_maps(classifier, images, "gradcam", tasks, progress=False)
    assert compute_maps(classifier, images, "gradcam", None, progress=False)[0].shape[1] == 2


def test_smoothgrad_is_seeded_and_leaves_global_rng_alone(classifier, images):
    state = torch.random.get_rng_state()

    def smoothgrad(seed: int) -> np.ndarray:
        options = MethodOptions(seed=seed, smoothgrad_samples=4)
        return compute_maps(
            classifier, images, "smoothgrad", ["Pneumothorax"], options=options, progress=False
        )[0]

    a, b, c = smoothgrad(3), smoothgrad(3), smoothgrad(4)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_smoothgrad_map_of_an_image_is_its_own_whatever_the_order_or_subset(classifier, images):
    options = MethodOptions(seed=3, smoothgrad_samples=4)

    def smoothgrad(imgs: np.ndarray, batch_size: int) -> np.ndarray:
        return compute_maps(
            classifier, imgs, "smoothgrad", ["Pneumothorax"], batch_size=batch_size,
            options=options, progress=False,
        )[0].astype(np.float32)  # fmt: skip

    every = smoothgrad(images, len(images))
    reversed_order = smoothgrad(images[::-1], 3)[::-1]
    np.testing.assert_allclose(reversed_order, every, atol=1e-3)
    alone = smoothgrad(images[2:3], 1)
    np.testing.assert_allclose(alone[0], every[2], atol=1e-3)


def test_method_options_reject_unknown_keys():
    with pytest.raises(ParameterError, match="unknown option.*ig_stepz"):
        MethodOptions.from_params({"ig_stepz": 3})
    with pytest.raises(ParameterError, match="ig_steps"):
        MethodOptions.from_params({"ig_steps": 0})


def test_occlusion_settings_are_checked(classifier, images):
    """0 used to mean the default (``x or default``), a negative window failed in torch and
    a window larger than the image in Captum, none naming the setting."""
    for name in ("occlusion_window", "occlusion_stride"):
        for bad in (0, -4, 2.5, True):
            with pytest.raises(ParameterError, match=r"an integer >= 1 or null, got") as e:
                MethodOptions.from_params({name: bad})
            assert e.value.key == f"saliency.method_options.{name}"
    assert MethodOptions.from_params({"occlusion_window": None}).occlusion_window is None
    size = int(images.shape[-1])
    with pytest.raises(ParameterError, match=f"{size + 1} px is larger than") as e:
        compute_maps(
            classifier, images, "occlusion", ["Pneumothorax"], progress=False,
            options=MethodOptions(occlusion_window=size + 1),
        )  # fmt: skip
    assert e.value.key == "method_options.occlusion_window"


@pytest.mark.parametrize(
    ("method", "model_name"),
    [
        ("gradcam", "classifier"),
        ("integrated_gradients", "classifier"),
        ("smoothgrad", "classifier"),
        ("seg_prob", "dense"),
    ],
)
def test_maps_and_probabilities_do_not_depend_on_the_batch_size(method, model_name, request):
    """``saliency.batch_size`` is a speed setting (README, Benchmarks): each image's map and
    probability are its own, whatever batch it is computed in (eval mode, per-map scaling)."""
    model = request.getfixturevalue(model_name)
    images = request.getfixturevalue("images")
    tasks = ["Lung Lesion"]
    out = {
        b: compute_maps(
            model,
            images,
            method,
            tasks,
            batch_size=b,
            device="cpu",
            options=FAST,
            progress=False,
        )
        for b in (1, 4, len(images))
    }
    for b in (1, 4):
        np.testing.assert_allclose(
            out[b][0].astype(np.float32), out[len(images)][0].astype(np.float32), atol=1e-3
        )
        np.testing.assert_allclose(out[b][1], out[len(images)][1], rtol=1e-6)
    assert out[1][0].max() > 0  # maps with content, not all zeros


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, "0.1", True])
def test_smoothgrad_stdev_must_be_a_finite_number_at_least_zero(bad):
    # NaN failed inside torch.normal, inf gave non-finite maps, both after from_params
    with pytest.raises(ParameterError, match="finite number >= 0") as e:
        MethodOptions.from_params({"smoothgrad_stdev": bad})
    assert e.value.key == "saliency.method_options.smoothgrad_stdev"
    assert MethodOptions.from_params({"smoothgrad_stdev": 0}).smoothgrad_stdev == 0


def test_an_occlusion_stride_larger_than_the_window_names_the_setting(classifier, images):
    # it passed from_params, then failed in Captum with a bare AssertionError
    with pytest.raises(ParameterError, match="larger than occlusion_window") as e:
        MethodOptions.from_params({"occlusion_window": 4, "occlusion_stride": 8})
    assert e.value.key == "saliency.method_options.occlusion_stride"
    options = MethodOptions.from_params({"occlusion_stride": 8})  # window: 32 px // 8 = 4
    with pytest.raises(ParameterError, match="8 px is larger than the 4 px occlusion") as e:
        compute_maps(
            classifier, images, "occlusion", ["Pneumothorax"], options=options, progress=False
        )
    assert e.value.key == "method_options.occlusion_stride"


@pytest.mark.parametrize("method", CLASSIFIER_METHODS)
def test_maps_under_a_callers_inference_mode_equal_those_outside(method, classifier, images):
    # gradient methods failed under torch.inference_mode() ("does not require grad")
    def run() -> tuple[np.ndarray, np.ndarray]:
        return compute_maps(
            classifier, images, method, ["Pneumothorax"], options=FAST, device="cpu",
            progress=False,
        )  # fmt: skip

    outside = run()
    with torch.inference_mode():
        inside = run()
    np.testing.assert_array_equal(inside[0], outside[0])
    np.testing.assert_array_equal(inside[1], outside[1])
