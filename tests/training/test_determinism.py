"""``training.deterministic``: strict deterministic algorithms, cuBLAS workspace, same seed
same weights, and models whose backward has a deterministic implementation on CUDA too."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils.deterministic
from tests.training.training_tiny_data import tiny_config

from cxr_spurious.errors import ParameterError
from cxr_spurious.models import build_model, ops
from cxr_spurious.saliency.compute import compute_maps
from cxr_spurious.training import device as device_module
from cxr_spurious.training.data import build_training_table
from cxr_spurious.training.device import configure_determinism, resolve_device
from cxr_spurious.training.engine import fit, init_model
from cxr_spurious.training.outputs import predict_images

# the default study trains unet_small (erm, box, seg, every comparison variant); the others
# are the registry's other small architectures and the multitask / pooling options
MODEL_CONFIGS = {
    "unet_small": {"architecture": "unet_small", "base_channels": 4},
    "unet_small-linear-head": {
        "architecture": "unet_small",
        "base_channels": 4,
        "image_head": "linear",
    },
    "unet_small-topk": {
        "architecture": "unet_small",
        "base_channels": 4,
        "dense_pooling": "topk_mean",
    },
    "cnn_small": {"architecture": "cnn_small", "base_channels": 4},
    "resnet18": {"architecture": "resnet18"},
    "resunet18": {"architecture": "resunet18"},
    "densenet121": {"architecture": "densenet121"},
}


@pytest.fixture
def restore_determinism():
    """Put the process-wide switches back as they were after each test."""
    state = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    yield
    torch.use_deterministic_algorithms(state[0], warn_only=state[1])
    torch.utils.deterministic.fill_uninitialized_memory = state[5]
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = state[2], state[3]
    if state[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = state[4]


def test_configure_determinism_is_strict_and_sets_the_cublas_workspace(
    restore_determinism, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    configure_determinism(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.utils.deterministic.fill_uninitialized_memory is False  # no NaN fill
    configure_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert torch.utils.deterministic.fill_uninitialized_memory is True  # PyTorch's default


def test_a_deterministic_cublas_setting_is_kept_and_another_refused(
    restore_determinism, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    configure_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    with pytest.raises(
        ParameterError, match=r"training.deterministic.*CUBLAS_WORKSPACE_CONFIG.*':0:0'"
    ):
        configure_determinism(True)
    configure_determinism(False)  # not needed without determinism


def test_importing_the_training_code_sets_the_cublas_workspace_before_any_cuda_work() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    code = (
        "import os, cxr_spurious.training.engine; print(os.environ.get('CUBLAS_WORKSPACE_CONFIG'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ":4096:8"


def test_fit_trains_under_strict_determinism_and_same_seed_gives_same_weights(
    tiny, restore_determinism
) -> None:
    manifest, cache = tiny
    cfg = tiny_config(epochs=1, seed=5, architecture="unet_small", supervision="seg")
    table = build_training_table(manifest, cache, cfg)
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    torch.use_deterministic_algorithms(False)
    a = fit(train, val, cache, cfg, resolve_device("cpu"))
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    b = fit(train, val, cache, cfg, resolve_device("cpu"))
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def _train_predict_explain(
    tiny, architecture: str, supervision: str
) -> tuple[dict[str, torch.Tensor], np.ndarray, list[np.ndarray]]:
    """A strict-deterministic ``fit`` (with validation and model selection), the test
    images' probabilities and embeddings as the training pipeline predicts them, and the
    saliency maps of the trained model (Grad-CAM, integrated gradients)."""
    manifest, cache = tiny
    cfg = tiny_config(epochs=2, seed=3, architecture=architecture, supervision=supervision)
    table = build_training_table(manifest, cache, cfg)
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    setup = resolve_device("cpu")
    result = fit(train, val, cache, cfg, setup)
    model = init_model(cfg)
    model.load_state_dict(result.state_dict)
    model.eval()
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    probs, emb = predict_images(model, test, cache, cfg, setup)
    images = cache.images[cache.rows(test["image_id"])]
    maps = [
        compute_maps(model, images, method, list(model.tasks), batch_size=4, device="cpu",
                     progress=False)[0]
        for method in ("gradcam", "integrated_gradients")
    ]  # fmt: skip
    return result.state_dict, np.concatenate([probs, emb], axis=1), maps


@pytest.mark.parametrize(
    ("architecture", "supervision"),
    [("unet_small", "seg"), ("unet_small", "box"), ("cnn_small", "erm"), ("resnet18", "erm")],
)
def test_no_step_reads_memory_it_did_not_write(
    tiny, architecture: str, supervision: str, restore_determinism, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FILL_UNINITIALIZED_MEMORY`` is off: PyTorch's NaN fill of fresh tensors changes
    nothing only if no operation reads memory it did not write. With the fill on, such a
    read gives NaN; so training, prediction and saliency must give bitwise the same numbers
    with it on and off (and none of them NaN)."""
    runs = {}
    for fill in (True, False):
        monkeypatch.setattr(device_module, "FILL_UNINITIALIZED_MEMORY", fill)
        runs[fill] = _train_predict_explain(tiny, architecture, supervision)
        assert torch.utils.deterministic.fill_uninitialized_memory is fill  # fit switched it
    (w_on, out_on, maps_on), (w_off, out_off, maps_off) = runs[True], runs[False]
    assert w_on.keys() == w_off.keys()
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)
    assert np.isfinite(out_on).all() and np.array_equal(out_on, out_off)
    for m_on, m_off in zip(maps_on, maps_off, strict=True):
        assert m_on.size > 0 and np.isfinite(m_on).all()
        assert np.array_equal(m_on, m_off)


def _forward_backward(
    model: torch.nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    if model.is_dense:
        logits, emb, dense = model.all_outputs(x)
        loss = logits.sum() + emb.square().mean() + dense.sigmoid().mean()
    else:
        logits, emb = model.logits_and_embedding(x)
        loss = logits.sum() + emb.square().mean()
    loss.backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_models_train_under_strict_determinism_with_the_cuda_code_path_too(
    name: str, restore_determinism, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPU, the CUDA path (matrix bilinear resize, mean pooling) is forced and must
    agree with the kernels within float rounding, forward and backward."""
    configure_determinism(True)
    torch.manual_seed(0)
    model = build_model({"tasks": ["Pneumothorax", "Effusion"], **MODEL_CONFIGS[name]}).train()
    x = torch.rand(2, 1, 45, 45)  # odd size: ceil-mode pooling, non-2x upsampling
    kernels = _forward_backward(model, x)
    calls: list[bool] = []
    monkeypatch.setattr(ops, "use_deterministic_equivalents", lambda _x: not calls.append(True))
    equivalents = _forward_backward(model, x)
    assert calls  # the model went through the stand-ins
    torch.testing.assert_close(equivalents[0], kernels[0], rtol=1e-5, atol=1e-5)
    assert len(equivalents[1]) == len(kernels[1]) > 0
    for g_eq, g_k in zip(equivalents[1], kernels[1], strict=True):
        torch.testing.assert_close(g_eq, g_k, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(24, 24), (45, 45), (11, 17), (3, 3)])
def test_matrix_bilinear_resize_equals_interpolate(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, 12, 9, dtype=torch.float64, requires_grad=True)
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    out = ops.matmul_bilinear_resize(x, size)
    grad = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    (g_out,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-12)


def test_cpu_keeps_the_plain_kernels_bit_for_bit() -> None:
    x = torch.randn(2, 3, 12, 9)
    assert torch.equal(
        ops.resize_bilinear(x, (24, 18)),
        F.interpolate(x, size=(24, 18), mode="bilinear", align_corners=False),
    )
    assert torch.equal(ops.global_avg_pool(x), torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU; the CPU tests above force the CUDA code path",
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_default_model_is_deterministic_on_cuda(precision: str, restore_determinism) -> None:
    configure_determinism(True)
    setup = resolve_device("cuda", precision=precision)
    x = torch.rand(8, 1, 96, 96, device="cuda")
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = (
            build_model({"tasks": ["Pneumothorax"], "architecture": "unet_small"})
            .to("cuda")
            .train()
        )
        with setup.autocast():
            runs.append(_forward_backward(model, x))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    with pytest.raises(RuntimeError, match="deterministic"):  # why the model avoids the kernel
        y = torch.rand(1, 1, 4, 4, device="cuda", requires_grad=True)
        F.interpolate(y, size=(8, 8), mode="bilinear", align_corners=False).sum().backward()
