"""Architecture registry and the model interface."""

from __future__ import annotations

import re
import zipfile

import pytest
import torch
import torchvision
from torch import nn

from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.models import (
    ARCHITECTURES,
    DENSE_ARCHITECTURES,
    build_model,
    model_from_artifact,
    pool_dense_logits,
    pretrained,
)
from cxr_spurious.models.pretrained import grey_first_conv, load_pretrained_state

TASKS = ["Pneumothorax", "Pleural Effusion"]
FAST = ["resnet18", "densenet121", "resunet18", "unet_small", "cnn_small"]


@pytest.mark.parametrize("arch", FAST)
def test_interface_shapes(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model({"architecture": arch, "tasks": TASKS}).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        logits, emb = model.logits_and_embedding(x)
        assert torch.allclose(model(x), logits)
        assert torch.allclose(model.embed(x), emb)
        assert logits.shape == (2, 2)
        assert emb.shape == (2, model.embed_dim)
        assert model.is_dense == (arch in DENSE_ARCHITECTURES)
        if model.is_dense:
            assert model.dense_logits(x).shape == (2, 2, 32, 32)
    assert model.tasks == TASKS
    assert isinstance(model.cam_layer, nn.Module)
    assert any(isinstance(m, nn.Conv2d) for m in model.cam_layer.modules())


def test_cam_layers_are_the_documented_ones() -> None:
    resnet = build_model({"architecture": "resnet18", "tasks": TASKS})
    dense = build_model({"architecture": "densenet121", "tasks": TASKS})
    unet = build_model({"architecture": "unet_small", "tasks": TASKS})
    assert resnet.cam_layer is resnet.layer4
    assert dense.cam_layer is dense.features
    assert unet.cam_layer is unet.up[-1].conv
    cnn = build_model({"architecture": "cnn_small", "tasks": TASKS, "base_channels": 8}).eval()
    assert cnn.cam_layer is cnn.enc[-1]
    feats = []
    handle = cnn.cam_layer.register_forward_hook(lambda m, i, o: feats.append(o))
    with torch.no_grad():
        cnn(torch.rand(1, 1, 96, 96))
    handle.remove()
    assert feats[0].shape[-2:] == (12, 12)  # 1/8 of the input, against resnet18's 3x3
    # the same encoder as unet_small: its state dict loads into the dense model's encoder
    small_unet = build_model({"architecture": "unet_small", "tasks": TASKS, "base_channels": 8})
    enc_state = {k: v for k, v in cnn.state_dict().items() if k.startswith("enc.")}
    missing, unexpected = small_unet.load_state_dict(enc_state, strict=False)
    assert not unexpected and not any(k.startswith("enc.") for k in missing)


def test_registry_lists_every_documented_architecture() -> None:
    assert set(ARCHITECTURES) == {
        "resnet18",
        "resnet34",
        "resnet50",
        "densenet121",
        "cnn_small",
        "resunet18",
        "resunet34",
        "resunet50",
        "unet_small",
    }


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(ParameterError, match="unknown architecture 'vit'.*densenet121.*unet_small"):
        build_model({"architecture": "vit", "tasks": TASKS})


def test_grey_conv_equals_rgb_conv_on_replicated_grey() -> None:
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
    grey = grey_first_conv(rgb)
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_pretrained_from_local_file_sums_rgb_kernels(tmp_path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model({"architecture": "resnet18", "tasks": TASKS, "pretrained": str(path)})
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert model.fc.out_features == 2


def test_pretrained_name_not_cached_is_refused_without_download(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ParameterError, match="never downloads"):
        build_model(
            {
                "architecture": "resnet18",
                "tasks": TASKS,
                "pretrained": "ResNet18_Weights.IMAGENET1K_V1",
            }
        )


def test_max_pooling_ignores_a_single_hot_pixel() -> None:
    dense = torch.zeros(2, 1, 16, 16)
    dense[0, 0, 8, 8] = 10.0  # one noisy pixel, away from the border
    dense[1, 0, 6:11, 6:11] = 2.0  # a 5x5 blob
    pooled = pool_dense_logits(dense, "max", kernel=5)
    assert pooled[0, 0] == pytest.approx(10 / 25)
    assert pooled[1, 0] == pytest.approx(2.0)
    assert torch.equal(pool_dense_logits(dense, "max", kernel=1), dense.amax(dim=(2, 3)))
    assert torch.allclose(pool_dense_logits(dense, "mean"), dense.mean(dim=(2, 3)))
    top = pool_dense_logits(dense, "topk_mean", topk=25 / 256)
    assert top[1, 0] == pytest.approx(2.0)


@pytest.mark.parametrize("where", [(0, 0), (1, 1), (0, 8), (15, 15), (8, 8)])
def test_max_pooling_weighs_a_hot_pixel_alike_anywhere_even_at_the_border(where) -> None:
    # a corner window padded without counting the padding averaged 9 pixels, not 25: one
    # pixel at the border (markers, collimation edges) weighed 1/9 there, 1/25 inside
    dense = torch.zeros(1, 1, 16, 16)
    dense[(0, 0, *where)] = 10.0
    assert pool_dense_logits(dense, "max", kernel=5)[0, 0] == pytest.approx(10 / 25)
    with pytest.raises(ParameterError, match="training.pool_kernel"):
        pool_dense_logits(dense, "max", kernel=4)
    # a map smaller than the window: one window over the whole map
    assert pool_dense_logits(dense[..., :3, :3], "max", kernel=5)[0, 0] == pytest.approx(
        float(dense[..., :3, :3].mean())
    )


def test_unknown_pooling() -> None:
    with pytest.raises(ParameterError, match="training.dense_pooling"):
        build_model({"architecture": "unet_small", "tasks": TASKS, "dense_pooling": "median"})


def test_artifact_round_trip_and_architecture_mismatch() -> None:
    model = build_model({"architecture": "unet_small", "tasks": TASKS, "base_channels": 4})
    artifact = {
        "state_dict": model.state_dict(),
        "config": {"architecture": "unet_small", "tasks": TASKS, "base_channels": 4},
    }
    rebuilt = model_from_artifact(artifact, source="m.pt")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model.eval()(x))
    with pytest.raises(DataFormatError, match=r"m\.pt.*'unet_small'.*'resnet18'"):
        model_from_artifact(artifact, source="m.pt", expected_architecture="resnet18")
    wrong = {
        "state_dict": model.state_dict(),
        "config": {"architecture": "resnet18", "tasks": TASKS},
    }
    with pytest.raises(DataFormatError, match=r"m\.pt.*'resnet18'.*another architecture"):
        model_from_artifact(wrong, source="m.pt")


def test_pretrained_zip_with_compressed_entries_is_refused(tmp_path, monkeypatch) -> None:
    state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(1000)}
    real = tmp_path / "real.pth"
    torch.save(state, real)
    loaded = load_pretrained_state(str(real))  # a torch.save file (stored entries) loads
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    bomb = tmp_path / "bomb.pth"  # the same entries re-compressed: about 1/100 of the bytes
    with zipfile.ZipFile(real) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size * 10 < real.stat().st_size
    with pytest.raises(DataFormatError, match=r"bomb\.pth: zip entry '[^']+' is compressed"):
        load_pretrained_state(str(bomb))
    with zipfile.ZipFile(real) as archive:
        unpacked = sum(e.file_size for e in archive.infolist())
    monkeypatch.setattr(pretrained, "PRETRAINED_MAX_BYTES", unpacked - 1)
    with pytest.raises(
        DataFormatError,
        match=rf"real\.pth: unpacking the zip entries asks for {unpacked:,} bytes, more than "
        rf"the limit of {unpacked - 1:,} bytes",
    ):
        load_pretrained_state(str(real))


def _densenet_file_in_the_old_key_layout(path) -> dict[str, torch.Tensor]:
    """A DenseNet-121 state dict saved as torchvision's own ImageNet file lays it out
    (``denselayerN.norm.1.weight`` for ``norm1.weight``, no ``num_batches_tracked``);
    returns the reference (new layout) state dict."""
    torch.manual_seed(0)
    reference = torchvision.models.densenet121(weights=None).state_dict()
    old = {
        re.sub(r"(denselayer\d+)\.(norm|conv)([12])\.", r"\1.\2.\3.", k): v
        for k, v in reference.items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, path)
    return reference


def test_densenet_weights_in_torchvisions_old_key_layout_load(tmp_path, monkeypatch) -> None:
    """torchvision's DenseNet-121 ImageNet file used to be refused ("weights do not fit")."""
    reference = _densenet_file_in_the_old_key_layout(tmp_path / "d121.pth")
    cached = tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    cached.parent.mkdir(parents=True)
    _densenet_file_in_the_old_key_layout(cached)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for weights in (str(tmp_path / "d121.pth"), "DenseNet121_Weights.IMAGENET1K_V1"):
        model = build_model({"architecture": "densenet121", "tasks": TASKS, "pretrained": weights})
        state = model.state_dict()
        for key in (
            "features.denseblock1.denselayer1.norm1.weight",
            "features.denseblock4.denselayer16.conv2.weight",
            "features.denseblock3.denselayer24.norm2.running_var",
            "features.transition1.norm.weight",
        ):
            assert torch.equal(state[key], reference[key]), key
        assert torch.allclose(
            state["features.conv0.weight"],
            reference["features.conv0.weight"].sum(dim=1, keepdim=True),
        )


def test_artifact_loads_after_its_pretrained_file_is_gone(tmp_path) -> None:
    """Rebuilding a trained model used to read ``config['pretrained']`` again (all its weights
    are in the artifact): once the file was moved the artifact could not be loaded."""
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    config = {"architecture": "resnet18", "tasks": TASKS, "pretrained": str(weights)}
    model = build_model(config).eval()
    artifact = {"state_dict": model.state_dict(), "config": dict(config)}
    weights.unlink()
    rebuilt = model_from_artifact(artifact, source="m.pt")
    assert artifact["config"]["pretrained"] == str(weights)  # the provenance is kept
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
