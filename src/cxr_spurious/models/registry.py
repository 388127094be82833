"""Architecture registry: a name -> builder map, and rebuilding models from artifacts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from cxr_spurious.errors import DataFormatError, ParameterError, unknown_name_error
from cxr_spurious.models.base import CXRModel
from cxr_spurious.models.classifiers import DenseNetClassifier, ResNetClassifier, SmallCNNClassifier
from cxr_spurious.models.unet import ResUNet, UNetSmall

Builder = Callable[[Mapping[str, Any]], CXRModel]


def _dense_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "pooling": str(config.get("dense_pooling", "max")),
        "pool_kernel": int(config.get("pool_kernel", 5)),
        "topk": float(config.get("topk", 0.01)),
        "image_head": str(config.get("image_head", "pool")),
    }


ARCHITECTURES: dict[str, Builder] = {
    "resnet18": lambda c: ResNetClassifier(18, c["tasks"], c.get("pretrained")),
    "resnet34": lambda c: ResNetClassifier(34, c["tasks"], c.get("pretrained")),
    "resnet50": lambda c: ResNetClassifier(50, c["tasks"], c.get("pretrained")),
    "densenet121": lambda c: DenseNetClassifier(c["tasks"], c.get("pretrained")),
    "cnn_small": lambda c: SmallCNNClassifier(c["tasks"], int(c.get("base_channels", 16))),
    "resunet18": lambda c: ResUNet(18, c["tasks"], c.get("pretrained"), **_dense_kwargs(c)),
    "resunet34": lambda c: ResUNet(34, c["tasks"], c.get("pretrained"), **_dense_kwargs(c)),
    "resunet50": lambda c: ResUNet(50, c["tasks"], c.get("pretrained"), **_dense_kwargs(c)),
    "unet_small": lambda c: UNetSmall(
        c["tasks"], int(c.get("base_channels", 16)), **_dense_kwargs(c)
    ),
}
DENSE_ARCHITECTURES: frozenset[str] = frozenset(
    {"resunet18", "resunet34", "resunet50", "unet_small"}
)


def build_model(config: Mapping[str, Any]) -> CXRModel:
    """Build a model from its config.

    Args:
        config: ``architecture`` (a registry name), ``tasks`` (list of task names), and
            optionally ``pretrained`` (path or torchvision weights name; default None, no
            download ever), ``dense_pooling`` (max | mean | topk_mean), ``pool_kernel``,
            ``topk``, ``image_head`` (pool | linear, dense models), ``base_channels``
            (``unet_small``).

    Returns:
        The model, in training mode, on CPU.

    Raises:
        ParameterError: unknown architecture (listing the valid ones) or missing keys.
    """
    name = config.get("architecture")
    if name not in ARCHITECTURES:
        raise unknown_name_error(
            "architecture", str(name), ARCHITECTURES, key="training.architecture"
        )
    if not config.get("tasks"):
        raise ParameterError("training.tasks", "a model needs at least one task")
    return ARCHITECTURES[str(name)](config)


def model_from_artifact(
    artifact: Mapping[str, Any],
    *,
    source: str = "model artifact",
    expected_architecture: str | None = None,
) -> CXRModel:
    """Rebuild a model from ``{"state_dict", "config"}`` (as saved by ``TorchModelDataset``).

    Args:
        artifact: The saved dict.
        source: File name used in error messages.
        expected_architecture: If given, the artifact must hold this architecture.

    Returns:
        The model with its weights, in eval mode (built without ``config['pretrained']``:
        the artifact holds every weight).

    Raises:
        DataFormatError: not an artifact dict, another architecture than expected, or
            weights that do not fit the architecture; the message names ``source`` and both
            architectures.
    """
    if (
        not isinstance(artifact, Mapping)
        or "state_dict" not in artifact
        or "config" not in artifact
    ):
        raise DataFormatError(source, "expected a dict with 'state_dict' and 'config'")
    config = dict(artifact["config"])
    arch = config.get("architecture")
    if expected_architecture is not None and arch != expected_architecture:
        raise DataFormatError(
            source,
            f"holds a '{arch}' model but architecture '{expected_architecture}' was expected",
        )
    # Every weight comes from the artifact: the pretrained file it started from (kept in
    # its config as provenance) is not read again, and may be gone.
    model = build_model({**config, "pretrained": None})
    load_weights(model, artifact["state_dict"], source=source, architecture=str(arch))
    return model.eval()


def load_weights(
    model: CXRModel, state_dict: Mapping[str, torch.Tensor], *, source: str, architecture: str
) -> None:
    """Load ``state_dict`` strictly, with an error naming the file and architectures on mismatch."""
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise DataFormatError(
            source,
            f"weights do not fit architecture '{architecture}' ({type(model).__name__}); "
            f"were they saved from another architecture? {first}",
        ) from exc
