"""Batched saliency maps for a model, a method and a list of tasks -> ``HeatmapSet``."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from cxr_spurious.errors import ContractError, CxrSpuriousError, ParameterError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.saliency.registry import MethodOptions, get_method

logger = logging.getLogger(__name__)


def resolve_device(device: str | None) -> torch.device:
    """``"auto"`` / ``None`` -> CUDA when present, else CPU; otherwise ``torch.device(device)``."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(str(device))
    except RuntimeError as exc:
        raise ParameterError(
            "saliency.device", f"expected 'auto', 'cpu' or 'cuda[:n]', got {device!r}"
        ) from exc


def load_model(artifact: dict[str, Any], name: str = "model") -> nn.Module:
    """Rebuild a model from its artifact ``{"state_dict", "config"}`` (eval mode, CPU).

    Delegates to ``cxr_spurious.models.model_from_artifact`` (one loader in the project).

    Args:
        artifact: What ``TorchModelDataset`` loads.
        name: Variant name, used in error messages as ``<name>.model``.

    Returns:
        The model with its trained weights.
    """
    from cxr_spurious.models import model_from_artifact

    return model_from_artifact(artifact, source=f"{name}.model")


def resolve_tasks(
    model: nn.Module, tasks: Sequence[str] | None, model_name: str = "model"
) -> list[str]:
    """The tasks to explain: ``tasks`` (checked against ``model.tasks``) or all of the model's.

    Raises:
        ParameterError: a requested task is not one the model was trained on (lists the valid ones).
    """
    model_tasks = [str(t) for t in model.tasks]
    if tasks is None:
        return model_tasks
    wanted = name_list(tasks, spaces=False) or []
    unknown = [t for t in wanted if t not in model_tasks]
    if unknown:
        raise ParameterError(
            "saliency.tasks",
            f"{model_name} was not trained on task(s) {unknown}; its tasks are {model_tasks}",
        )
    return wanted


def select_image_ids(
    manifest: pd.DataFrame, split: str, max_images: int | None, seed: int
) -> list[str]:
    """Image ids of one split, optionally a seeded random subset of at most ``max_images``.

    The subset keeps manifest order, and the same seed gives the same subset.

    Raises:
        ParameterError: the split has no images or ``max_images`` < 1.
    """
    ids = manifest.loc[manifest["split"] == split, "image_id"].astype(str).to_numpy()
    if ids.size == 0:
        raise ParameterError(
            "saliency.split",
            f"no manifest rows with split == {split!r}; "
            f"splits present: {sorted(manifest['split'].unique())}",
        )
    if max_images is None or int(max_images) >= ids.size:
        return ids.tolist()
    if int(max_images) < 1:
        raise ParameterError("saliency.max_images", f"must be >= 1 or null, got {max_images}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(ids.size, size=int(max_images), replace=False))
    return ids[keep].tolist()


def image_batches(images: np.ndarray, batch_size: int) -> list[slice]:
    """Slices of ``batch_size`` rows covering ``images``."""
    if batch_size < 1:
        raise ParameterError("saliency.batch_size", f"must be >= 1, got {batch_size}")
    return [slice(i, min(i + batch_size, len(images))) for i in range(0, len(images), batch_size)]


def to_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, S, S) (or float in [0, 1]) -> float (B, 1, S, S) in [0, 1] on ``device``."""
    arr = np.asarray(images)
    x = torch.from_numpy(np.ascontiguousarray(arr)).float()
    if arr.dtype == np.uint8:
        x = x / 255.0
    return x[:, None].to(device)


def compute_maps(
    model: nn.Module,
    images: np.ndarray,
    method: str,
    tasks: Sequence[str],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
    options: MethodOptions | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps and probabilities of ``model`` for ``images`` and ``tasks`` with one method.

    Args:
        model: A model following the project's interface (``forward``, ``tasks``, ...).
        images: (N, S, S) uint8 (or float in [0, 1]) images.
        method: Registry name.
        tasks: Task names (a subset of ``model.tasks``).
        batch_size: Images per batch.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        options: Method options.
        progress: Show a tqdm progress bar over batches.
        desc: Progress-bar label.

    Returns:
        ``maps`` (N, len(tasks), h, w) float16 and ``probs`` (N, len(tasks)) float64
        (``sigmoid(forward(x))``), both computed in fp32 with autocast off.

    Raises:
        ParameterError: unknown method or task.
        CxrSpuriousError: the method cannot explain this model (no cam layer, not dense).
    """
    spec = get_method(method)
    task_names = resolve_tasks(model, tasks)
    task_idx = [list(model.tasks).index(t) for t in task_names]
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = model.to(device=dev, dtype=torch.float32)
    model.eval()
    n = len(images)
    maps: np.ndarray | None = None
    probs = np.zeros((n, len(task_idx)), dtype=np.float64)
    batches = image_batches(images, batch_size)
    # fp32 whatever the training precision or an enclosing autocast (bf16 ties scores)
    with (
        torch.autocast(device_type=dev.type, enabled=False),
        spec.open(model, options) as attribute,
    ):
        for sl in tqdm(
            batches, desc=desc or f"saliency {method}", leave=False, disable=not progress
        ):
            x = to_input(images[sl], dev)
            logits = None
            for j, t in enumerate(task_idx):
                batch_maps, pass_logits = attribute(x, t)
                logits = pass_logits if logits is None else logits
                if maps is None:
                    maps = np.zeros((n, len(task_idx), *batch_maps.shape[1:]), dtype=np.float16)
                maps[sl, j] = batch_maps
            if logits is None:  # the method had no forward pass of its own
                with torch.inference_mode():
                    logits = model(x)
            probs[sl] = torch.sigmoid(logits[:, task_idx].float()).double().cpu().numpy()
    if maps is None:
        maps = np.zeros((0, len(task_idx), *images.shape[1:]), dtype=np.float16)
    if not np.isfinite(maps).all():
        raise CxrSpuriousError(
            f"saliency method '{method}' produced non-finite maps "
            f"for {int((~np.isfinite(maps)).sum())} pixels"
        )
    return maps, probs


def build_heatmap_set(
    maps: np.ndarray,
    probs: np.ndarray,
    image_ids: Sequence[str],
    tasks: Sequence[str],
    manifest: pd.DataFrame,
    model_name: str,
    method: str,
) -> HeatmapSet:
    """Assemble a ``HeatmapSet`` (rows image-major, then task) from ``compute_maps`` output.

    ``gt`` comes from the manifest task columns, ``cxr_w`` / ``cxr_h`` from its
    ``width`` / ``height`` (original image size).

    Raises:
        ContractError: an image id or task column is missing from the manifest.
    """
    missing_cols = [t for t in tasks if t not in manifest.columns]
    if missing_cols:
        raise ContractError(
            f"manifest lacks task column(s) {missing_cols} needed for heatmap labels"
        )
    table = manifest.assign(image_id=manifest["image_id"].astype(str)).set_index("image_id")
    ids = [str(i) for i in image_ids]
    absent = [i for i in ids if i not in table.index]
    if absent:
        raise ContractError(f"image id(s) {absent[:5]} are not in the manifest")
    rows = table.loc[ids]
    n, t = len(ids), len(tasks)
    index = pd.DataFrame(
        {
            "image_id": np.repeat(ids, t),
            "task": np.tile(np.asarray(list(tasks), dtype=object), n),
            "prob": probs.reshape(-1).astype(np.float64),
            "gt": rows[list(tasks)].to_numpy(dtype=np.float64).reshape(-1),
            "cxr_w": np.repeat(rows["width"].to_numpy(dtype=np.int64), t),
            "cxr_h": np.repeat(rows["height"].to_numpy(dtype=np.int64), t),
            "model": model_name,
            "method": method,
        }
    )
    flat = maps.reshape(n * t, *maps.shape[2:]).astype(np.float16, copy=False)
    return HeatmapSet(index=index, maps=flat)


def heatmap_set_for(
    model: nn.Module,
    images: np.ndarray,
    image_ids: Sequence[str],
    manifest: pd.DataFrame,
    *,
    model_name: str,
    method: str,
    tasks: Sequence[str] | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
    options: MethodOptions | None = None,
    progress: bool = True,
) -> HeatmapSet:
    """``compute_maps`` + ``build_heatmap_set`` for one model and method.

    Args:
        model: The model.
        images: (N, S, S) images aligned with ``image_ids``.
        image_ids: Ids of the images (manifest ``image_id``).
        manifest: The manifest (labels and original sizes).
        model_name: Variant name written to the index.
        method: Registry name.
        tasks: Tasks to explain (default: all of the model's).
        batch_size: Images per batch.
        device: Device spec.
        options: Method options.
        progress: Show a progress bar.

    Returns:
        The heatmap set (float16 maps at map resolution).
    """
    if len(images) != len(image_ids):
        raise ContractError(f"{len(images)} images but {len(image_ids)} image ids")
    task_names = resolve_tasks(model, tasks, model_name)
    maps, probs = compute_maps(
        model,
        images,
        method,
        task_names,
        batch_size=batch_size,
        device=device,
        options=options,
        progress=progress,
        desc=f"{model_name} {method}",
    )
    return build_heatmap_set(maps, probs, image_ids, task_names, manifest, model_name, method)


def name_list(value: str | Sequence[str] | None, *, spaces: bool = True) -> list[str] | None:
    """A parameter that names several things, as a list (``None`` stays ``None``).

    Kedro's ``--params`` splits its argument on commas, so a list cannot be passed as
    ``[a,b]`` there; a string ``"a b"`` or ``"a;b"`` is accepted instead.

    Args:
        value: ``None``, a list, or a string of names separated by ``;`` (and by spaces
            when ``spaces``; task names contain spaces, method and set names do not).
        spaces: Whether whitespace separates names too.

    Returns:
        The names, or ``None``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        pattern = r"[;\s]+" if spaces else r";"
        return [v.strip() for v in re.split(pattern, value) if v.strip()]
    return [str(v) for v in value]


def plan_methods(
    model_name: str,
    model: nn.Module,
    requested: Sequence[str] | None,
    default_pairs: Sequence[tuple[str, str]] | None = None,
) -> list[str]:
    """The saliency methods to run for one model.

    Args:
        model_name: Variant name.
        model: The model (its ``is_dense`` / ``cam_layer`` decide what applies).
        requested: ``saliency.methods`` (a list, or a string, see ``name_list``):
            ``None`` -> the variant's methods in ``default_pairs``; a list -> those methods
            for every model. Either way a method the model does not support (``seg_prob``
            on an image classifier, e.g. after
            ``--params training.variants.erm.architecture=resnet18``; CAM methods without a
            cam layer) is skipped with a warning.
        default_pairs: (model, method) pairs; default ``cxr_spurious.variants.STUDY_HEATMAPS``.

    Returns:
        Method names, in order, without duplicates.

    Raises:
        ParameterError: an unknown method name (listing the valid ones).
    """
    if requested is None:
        if default_pairs is None:
            from cxr_spurious.variants import STUDY_HEATMAPS

            default_pairs = STUDY_HEATMAPS
        names = [method for name, method in default_pairs if name == model_name]
    else:
        names = name_list(requested) or []
    planned: list[str] = []
    for name in dict.fromkeys(names):
        spec = get_method(name)
        if spec.supports(model):
            planned.append(name)
        else:
            logger.warning(
                "skipping saliency method '%s' for %s: %s",
                name,
                model_name,
                "needs a dense model" if spec.needs_dense else "needs a cam layer",
            )
    return planned
