"""Batched saliency maps for a model, a method and a list of tasks -> ``HeatmapSet``."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxr_spurious.errors import ContractError, CxrSpuriousError, ParameterError, check_integer
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.parallel import on_dask_worker, ordered_map
from cxr_spurious.progress import progress_bar
from cxr_spurious.saliency.registry import MethodOptions, MethodUnfitError, get_method

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
        ParameterError: a requested task is not one the model was trained on (lists the valid ones),
            ``tasks`` names none (an empty list or string would explain nothing), or names a
            task twice (its rows would be duplicated in the heatmap set).
    """
    model_tasks = [str(t) for t in model.tasks]
    if tasks is None:
        return model_tasks
    wanted = name_list(tasks, spaces=False) or []
    if not wanted:
        raise ParameterError(
            "saliency.tasks",
            f"names no task (got {tasks!r}), so no map would be made; give some of "
            f"{model_name}'s tasks {model_tasks}, or null for all of them",
        )
    unknown = [t for t in wanted if t not in model_tasks]
    if unknown:
        raise ParameterError(
            "saliency.tasks",
            f"{model_name} was not trained on task(s) {unknown}; its tasks are {model_tasks}",
        )
    repeated = sorted({t for t in wanted if wanted.count(t) > 1})
    if repeated:
        raise ParameterError(
            "saliency.tasks",
            f"names task(s) {repeated} more than once (got {tasks!r}); each task's maps are "
            "made once, so name each task once",
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
    if max_images is None:
        return ids.tolist()
    n = check_integer(max_images, "saliency.max_images", low=1, nullable=True)
    if n >= ids.size:
        return ids.tolist()
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(ids.size, size=n, replace=False))
    return ids[keep].tolist()


def image_batches(images: np.ndarray, batch_size: int) -> list[slice]:
    """Slices of ``batch_size`` rows covering ``images``."""
    batch_size = check_integer(batch_size, "saliency.batch_size", low=1)
    return [slice(i, min(i + batch_size, len(images))) for i in range(0, len(images), batch_size)]


def check_images(images: np.ndarray) -> np.ndarray:
    """``images`` as an array, checked to be model inputs: (N, H, W) uint8 (0-255), or
    floating point with every value finite and in [0, 1].

    Any other integer type (uint16, int64 ...) is refused rather than guessed at: its values
    in 0-255 would otherwise be taken as [0, 1] intensities.

    Raises:
        ContractError: another shape (a channel axis, a single 2-D image), another dtype, or
            float values that are not finite or outside [0, 1].
    """
    arr = np.asarray(images)
    if arr.ndim != 3:
        raise ContractError(
            f"saliency images must be an (N, H, W) array, got shape {arr.shape} "
            "(no channel axis; a single image as images[None])"
        )
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ContractError(
            f"saliency images must be uint8 (0-255) or float in [0, 1], got dtype {arr.dtype}"
        )
    if arr.size and not np.isfinite(arr).all():
        raise ContractError(
            f"saliency images hold {int((~np.isfinite(arr)).sum())} non-finite value(s) "
            "(float images must be finite, in [0, 1])"
        )
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ContractError(
            f"float saliency images must be in [0, 1], got range [{arr.min()}, {arr.max()}] "
            f"(dtype {arr.dtype}; pass uint8 for 0-255 images)"
        )
    return arr


def to_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, S, S) (or float in [0, 1]) -> float (B, 1, S, S) in [0, 1] on ``device``.

    Raises:
        ContractError: see ``check_images``.
    """
    arr = check_images(images)
    x = torch.from_numpy(np.ascontiguousarray(arr)).float()
    if arr.dtype == np.uint8:
        x = x / 255.0
    return x[:, None].to(device)


@dataclass(frozen=True)
class SaliencyChunk:
    """One unit of saliency work: a method over consecutive whole batches of the images.

    Attributes:
        method: Registry name.
        first_batch: Index of the chunk's first batch among all the batches of the images.
        images: The chunk's images (whole batches of ``batch_size``, the last may be short).
    """

    method: str
    first_batch: int
    images: np.ndarray


@dataclass(frozen=True)
class UnfitChunk:
    """A chunk whose method refused the model on one of its batches (``MethodUnfitError``)."""

    method: str
    batch: int  #: the refused batch's index among all the batches of the images
    reason: str


class ChunkMaps:
    """Picklable function of a ``SaliencyChunk``: its maps and probabilities.

    Opens the chunk's method once and runs its batches in order, so a chunk of all the
    batches is exactly the sequential computation. The one seeded method (SmoothGrad)
    seeds each image's noise from the image itself (``registry.image_noise_seed``), so the
    maps do not depend on the chunking either.
    """

    def __init__(
        self,
        model: nn.Module,
        task_idx: Sequence[int],
        *,
        batch_size: int,
        device: str | torch.device | None,
        options: MethodOptions,
        progress: bool = False,
        desc: str = "",
        skip_unfit: bool = False,
    ) -> None:
        self.model = model
        self.skip_unfit = bool(skip_unfit)
        self.task_idx = list(task_idx)
        self.batch_size = int(batch_size)
        self.device = device
        self.options = options
        self.progress = progress
        self.desc = desc

    def __call__(self, chunk: SaliencyChunk) -> tuple[np.ndarray, np.ndarray] | UnfitChunk:
        """(maps (n, T, h, w) float16, probs (n, T) float64) of the chunk's images; with
        ``skip_unfit``, an ``UnfitChunk`` where the method refused the model on a batch."""
        if not self.skip_unfit:
            return self._maps(chunk)
        try:
            return self._maps(chunk)
        except MethodUnfitError as exc:
            return UnfitChunk(chunk.method, getattr(exc, "batch", chunk.first_batch), str(exc))

    # Out of a caller's torch.inference_mode(): the gradient methods need autograd, and the
    # model copy and inputs made under it would be inference tensors (no requires_grad).
    @torch.inference_mode(False)
    def _maps(self, chunk: SaliencyChunk) -> tuple[np.ndarray, np.ndarray]:
        spec = get_method(chunk.method)
        dev = self.device if isinstance(self.device, torch.device) else resolve_device(self.device)
        # channels_last on the CPU, as training and predictions run there (oneDNN's faster
        # convolutions; the inputs follow below); maps differ from the default layout's by
        # float rounding only. On a copy: the caller's model keeps its device and layout.
        layout = torch.channels_last if dev.type == "cpu" else torch.contiguous_format
        model = copy.deepcopy(self.model).to(device=dev, dtype=torch.float32, memory_format=layout)
        model.eval()
        images = chunk.images
        n, task_idx = len(images), self.task_idx
        options = self.options
        maps: np.ndarray | None = None
        probs = np.zeros((n, len(task_idx)), dtype=np.float64)
        batches = image_batches(images, self.batch_size)
        # fp32 whatever the training precision or an enclosing autocast (bf16 ties scores)
        with (
            torch.autocast(device_type=dev.type, enabled=False),
            spec.open(model, options) as attribute,
        ):
            for b, sl in enumerate(
                progress_bar(
                    batches,
                    desc=self.desc or f"saliency {chunk.method}",
                    disable=not self.progress,
                )
            ):
                x = to_input(images[sl], dev).contiguous(memory_format=layout)
                logits = None
                for_tasks = getattr(attribute, "for_tasks", None)
                per_task = (
                    for_tasks(x, task_idx)
                    if for_tasks is not None
                    else (attribute(x, t) for t in task_idx)
                )
                try:
                    for j, (batch_maps, pass_logits) in enumerate(per_task):
                        logits = pass_logits if logits is None else logits
                        if maps is None:
                            shape = (n, len(task_idx), *batch_maps.shape[1:])
                            maps = np.zeros(shape, dtype=np.float16)
                        maps[sl, j] = batch_maps
                except MethodUnfitError as exc:
                    exc.batch = chunk.first_batch + b  # type: ignore[attr-defined]
                    raise
                if logits is None:  # the method had no forward pass of its own
                    with torch.inference_mode():
                        logits = model(x)
                probs[sl] = torch.sigmoid(logits[:, task_idx].float()).double().cpu().numpy()
        if maps is None:
            maps = np.zeros((0, len(task_idx), *images.shape[1:]), dtype=np.float16)
        return maps, probs


def saliency_chunks(
    images: np.ndarray, methods: Sequence[str], batch_size: int, *, per_batch: bool
) -> list[SaliencyChunk]:
    """The chunks of the work: per (method, batch) when ``per_batch``, else one per method."""
    batches = image_batches(images, batch_size)
    if not per_batch or len(batches) <= 1:
        return [SaliencyChunk(m, 0, images) for m in methods]
    return [SaliencyChunk(m, b, images[sl]) for m in methods for b, sl in enumerate(batches)]


def compute_method_maps(
    model: nn.Module,
    images: np.ndarray,
    methods: Sequence[str],
    tasks: Sequence[str],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
    options: MethodOptions | None = None,
    progress: bool = True,
    desc: str | None = None,
    workers: int | None = None,
    skip_unfit: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``compute_maps`` for several methods, the work cut into (method, batch) chunks.

    In a Dask task (a node run by ``DaskRunner``) the (method, image batch) chunks run as
    Dask tasks on the cluster (``cxr_spurious.parallel.ordered_map``); elsewhere each
    method runs in this process over all its batches, as one sequential pass (on a few
    CPU cores, torch's own threads already use them). The maps are the same either way.

    Args:
        model: The model.
        images: (N, S, S) uint8 (or float in [0, 1]) images.
        methods: Registry names.
        tasks: Task names (a subset of ``model.tasks``).
        batch_size: Images per batch (a chunk holds whole batches).
        device: Device spec.
        options: Method options.
        progress: Show a progress bar over the batches (in-process runs).
        desc: Progress-bar label (default ``saliency <method>``).
        workers: Chunks in flight on Dask (``None``: twice the cluster's threads; 1: all
            in this task); ignored off Dask.
        skip_unfit: A method that refuses the model on some batch (``MethodUnfitError``:
            DeepLift whose attributions miss the logit change there, after ``plan_methods``'
            probe passed on the first images) is left out of the result with a warning
            giving the reason and the batch, instead of stopping the run; its other
            batches' maps are discarded.

    Returns:
        ``{method: (maps, probs)}`` in the order of ``methods`` (see ``compute_maps``; a
        method named twice once, at its first place), without the methods ``skip_unfit``
        left out.

    Raises:
        ParameterError: unknown method or task, a task named twice, or ``batch_size`` < 1.
        ContractError: ``images`` are not (N, H, W) uint8 or float in [0, 1] (``check_images``).
        CxrSpuriousError: a method cannot explain this model (``MethodUnfitError`` only
            without ``skip_unfit``), or produced non-finite maps.
    """
    methods = list(dict.fromkeys(methods))  # a method named twice is computed once
    specs = [get_method(m) for m in methods]
    images = check_images(images)
    task_names = resolve_tasks(model, tasks)
    task_idx = [list(model.tasks).index(t) for t in task_names]
    for spec in specs:  # before any work is sent anywhere
        spec.check_model(model)
    on_dask = on_dask_worker()
    chunks = saliency_chunks(images, methods, batch_size, per_batch=on_dask)
    func = ChunkMaps(
        model,
        task_idx,
        batch_size=batch_size,
        device=device,
        options=options or MethodOptions(),
        progress=progress and len(chunks) == len(methods),
        desc=desc or "",
        skip_unfit=skip_unfit,
    )
    parts: dict[str, list[Any]] = {m: [] for m in methods}
    results = ordered_map(
        func,
        chunks,
        n_items=len(chunks),
        workers=workers if on_dask else 1,  # off Dask: in this process, as one pass
        chunksize=1,
        desc=desc or "saliency",
        progress=False,
        min_items=2,
    )
    for chunk, result in zip(chunks, results, strict=True):  # the map run to its end
        parts[chunk.method].append(result)
    out = {}
    n_batches = len(image_batches(images, batch_size))
    for method, pieces in parts.items():
        unfit = [p for p in pieces if isinstance(p, UnfitChunk)]
        if unfit:
            logger.warning(
                "%s: saliency method '%s' left out: it refused the model on batch %d of %d "
                "(after its probe on the first %d images passed): %s",
                desc or "saliency",
                method,
                unfit[0].batch + 1,
                n_batches,
                PROBE_IMAGES,
                unfit[0].reason,
            )
            continue
        if len(pieces) == 1:
            maps, probs = pieces[0]
        else:
            maps = np.concatenate([m for m, _ in pieces])
            probs = np.concatenate([p for _, p in pieces])
        if not np.isfinite(maps).all():
            raise CxrSpuriousError(
                f"saliency method '{method}' produced non-finite maps "
                f"for {int((~np.isfinite(maps)).sum())} pixels"
            )
        out[method] = (maps, probs)
    return out


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
    return compute_method_maps(
        model,
        images,
        [method],
        tasks,
        batch_size=batch_size,
        device=device,
        options=options,
        progress=progress,
        desc=desc or f"saliency {method}",
    )[method]


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


def heatmap_sets_for(
    model: nn.Module,
    images: np.ndarray,
    image_ids: Sequence[str],
    manifest: pd.DataFrame,
    *,
    model_name: str,
    methods: Sequence[str],
    tasks: Sequence[str] | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
    options: MethodOptions | None = None,
    progress: bool = True,
    skip_unfit: bool = False,
) -> dict[str, HeatmapSet]:
    """``compute_method_maps`` + ``build_heatmap_set`` for one model and several methods.

    Args:
        model: The model.
        images: (N, S, S) images aligned with ``image_ids``.
        image_ids: Ids of the images (manifest ``image_id``).
        manifest: The manifest (labels and original sizes).
        model_name: Variant name written to the index.
        methods: Registry names.
        tasks: Tasks to explain (default: all of the model's).
        batch_size: Images per batch.
        device: Device spec.
        options: Method options.
        progress: Show a progress bar.
        skip_unfit: Leave out, with a warning, a method that refuses the model on a batch
            (see ``compute_method_maps``).

    Returns:
        ``{method: heatmap set}`` (float16 maps at map resolution), in the order of
        ``methods``, without the methods ``skip_unfit`` left out.
    """
    if len(images) != len(image_ids):
        raise ContractError(f"{len(images)} images but {len(image_ids)} image ids")
    task_names = resolve_tasks(model, tasks, model_name)
    computed = compute_method_maps(
        model,
        images,
        methods,
        task_names,
        batch_size=batch_size,
        device=device,
        options=options,
        progress=progress,
        desc=f"{model_name} saliency",
        skip_unfit=skip_unfit,
    )
    return {
        method: build_heatmap_set(maps, probs, image_ids, task_names, manifest, model_name, method)
        for method, (maps, probs) in computed.items()
    }


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
    """``heatmap_sets_for`` with one method (same arguments, ``method`` a registry name)."""
    return heatmap_sets_for(
        model,
        images,
        image_ids,
        manifest,
        model_name=model_name,
        methods=[method],
        tasks=tasks,
        batch_size=batch_size,
        device=device,
        options=options,
        progress=progress,
    )[method]


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


#: Images of the run that ``plan_methods`` tries a method's ``probe`` on (``deeplift``).
PROBE_IMAGES = 4


def plan_methods(
    model_name: str,
    model: nn.Module,
    requested: Sequence[str] | None,
    default_pairs: Sequence[tuple[str, str]] | None = None,
    *,
    probe: np.ndarray | None = None,
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
            cam layer; ``deeplift`` where it would not decompose the logit, found on
            ``probe``) is skipped with a warning giving the reason.
        default_pairs: (model, method) pairs; default ``cxr_spurious.variants.STUDY_HEATMAPS``.
        probe: The run's images ((N, S, S) uint8 or float in [0, 1]); the first
            ``PROBE_IMAGES`` try the methods that can only be judged by running them
            (``SaliencyMethod.probe``). ``None``: not tried (such a method then fails when
            it runs, with the same reason).

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
    x = None
    if probe is not None and len(probe):
        device = next((q.device for q in model.parameters()), torch.device("cpu"))
        x = to_input(np.asarray(probe[:PROBE_IMAGES]), device)
    planned: list[str] = []
    for name in dict.fromkeys(names):
        reason = get_method(name).unfit_reason(model, x)
        if reason is None:
            planned.append(name)
        else:
            logger.warning("skipping saliency method '%s' for %s: %s", name, model_name, reason)
    return planned
