"""Local pretrained weights: never downloaded, read from a path or the torch hub cache."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision
from torch import nn

from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.io.safe_pickle import MODEL_FILE_MAX_BYTES, check_torch_zip


def resolve_weights_file(pretrained: str) -> Path:
    """File holding the weights named by ``pretrained``.

    Args:
        pretrained: A path to a ``.pth`` state dict, or a torchvision weights name such as
            ``ResNet18_Weights.IMAGENET1K_V1`` whose file is already in the torch hub cache
            (``$TORCH_HOME/hub/checkpoints``).

    Returns:
        The existing file.

    Raises:
        ParameterError: the path does not exist and the name is not an already cached
            torchvision weights file (nothing is ever downloaded).
    """
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    try:
        weights = torchvision.models.get_weight(pretrained)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ParameterError(
            "training.pretrained",
            f"'{pretrained}' is neither an existing file nor a torchvision weights name "
            "(e.g. ResNet18_Weights.IMAGENET1K_V1)",
        ) from exc
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise ParameterError(
            "training.pretrained",
            f"weights '{pretrained}' are not available locally (expected {cached}); "
            "this project never downloads weights: copy the file there or give its path",
        )
    return cached


PRETRAINED_MAX_BYTES = MODEL_FILE_MAX_BYTES
"""Largest total size (bytes) of the entries of a pretrained weights zip archive."""


def load_pretrained_state(pretrained: str) -> dict[str, torch.Tensor]:
    """Read a pretrained state dict with ``torch.load(weights_only=True)``.

    A zip archive (``torch.save``) is checked first (``check_torch_zip``): stored entries
    only, within the file's size and ``PRETRAINED_MAX_BYTES``, so a compressed archive
    cannot unpack to many times its size.

    Raises:
        DataFormatError: the file is not a readable state dict, or a zip archive with
            compressed entries or entries larger than ``PRETRAINED_MAX_BYTES``.
    """
    path = resolve_weights_file(pretrained)
    with path.open("rb") as fh:
        if fh.read(2) == b"PK":
            check_torch_zip(path, max_bytes=PRETRAINED_MAX_BYTES)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataFormatError(path, f"not a readable torch state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataFormatError(path, f"expected a state dict, got {type(state).__name__}")
    return state


# torchvision's DenseNet ImageNet files name a dense layer's parameters ``norm.1``,
# ``conv.1``, ``norm.2``, ``conv.2`` (the layout before its modules became ``norm1`` ...);
# torchvision renames them when it loads such a file, and so does ``load_backbone``.
_OLD_DENSE_LAYER_KEY = re.compile(r"(?:^|(?<=\.))(denselayer\d+\.(?:norm|conv))\.([12])(?=\.)")


def current_key_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with DenseNet keys of the old layout (``...denselayer3.norm.1.weight``)
    renamed to torchvision's current one (``...denselayer3.norm1.weight``); other keys as
    they are."""
    return {_OLD_DENSE_LAYER_KEY.sub(r"\1\2", k): v for k, v in state.items()}


def grey_first_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A 1-input-channel copy of ``conv`` whose kernel is the sum of the RGB kernels.

    Summing is exact for a grey image replicated to three channels, so pretrained features
    are preserved.
    """
    out = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        out.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out


def load_backbone(
    model: nn.Module, pretrained: str | None, first_conv: str, skip_prefixes: tuple[str, ...]
) -> nn.Module:
    """Load RGB ``pretrained`` weights into a torchvision backbone, then make it grey.

    Args:
        model: A torchvision model with a 3-channel first convolution.
        pretrained: Weights path / name, or None for random initialisation.
        first_conv: Dotted name of the first convolution (``conv1``, ``features.conv0``).
        skip_prefixes: Parameters not to load (the ImageNet classifier head).

    Returns:
        ``model`` with its first convolution replaced by a 1-channel one.

    DenseNet files in torchvision's old key layout (its own ImageNet weights) are read
    as torchvision reads them (``current_key_layout``).
    """
    if pretrained:
        state = {
            k: v
            for k, v in current_key_layout(load_pretrained_state(pretrained)).items()
            if not k.startswith(skip_prefixes)
        }
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(skip_prefixes)]
        if missing or unexpected:
            raise DataFormatError(
                pretrained,
                f"weights do not fit the backbone: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}",
            )
    parent_name, _, attr = first_conv.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, grey_first_conv(getattr(parent, attr)))
    return model
