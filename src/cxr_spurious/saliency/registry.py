"""Saliency method registry: a name -> a method that maps a batch and a task to maps.

Methods come from pytorch-grad-cam (``gradcam``, ``gradcam++``, ``eigencam``,
``layercam``), Captum (``deeplift``, ``occlusion``, ``saliency``, ``smoothgrad``; and
``integrated_gradients``, computed here with Captum's steps and arithmetic so that the tasks
of a batch share one forward pass) and the model itself (``seg_prob``: a dense model's own
probability map). Each method is opened once per model as a context manager
(``with method.open(model, options) as attribute:``) so that library hooks are released
when the block ends, then called per batch and task:
``attribute(x, task_index) -> (maps, logits)`` with ``maps`` a (B, h, w) float32 array and
``logits`` the (B, T) image logits of the same forward pass when the method has them
(CAM methods), else ``None``. A method whose tasks can share work also has
``attribute.for_tasks(x, task_indices) -> [(maps, logits), ...]`` (integrated gradients:
one forward pass for every task of a batch).

``deeplift`` is refused (``MethodUnfitError``) where Captum's DeepLift does not decompose
the logit: a nonlinearity module used twice (torchvision ResNet blocks), or attributions
that miss ``f(x) - f(0)`` by more than ``DEEPLIFT_RTOL`` (nonlinearities called as
functions, as in ``unet_small``, ``cnn_small`` and ``densenet121``); ``plan_methods``
skips it for such a model, with the reason, when it is given a few of the images, and
``compute.heatmap_sets_for`` drops it, with the reason, when a later batch fails.

Cost. CAM methods only need gradients down to the cam layer: every parameter outside it
is frozen while they run, so the backward pass stops at the cam layer instead of reaching
the input (on a ResNet-18 at 96 px this makes Grad-CAM barely dearer than inference).

Targets. Every model has one sigmoid logit per task (``forward(x) -> (B, T)``), so the
target of task ``t`` is the raw logit ``forward(x)[:, t]`` (never a softmax over tasks).
For dense models ``forward`` is the pooled dense map, so gradients flow through the
pooling into the dense head.

Map values.

* CAM methods: pytorch-grad-cam's maps (ReLU, min-max scaled to [0, 1] per image and
  resized to the input size).
* Gradient methods (``integrated_gradients``, ``deeplift``, ``saliency``,
  ``smoothgrad``): the channel dimension is reduced by absolute value (``|a|`` summed over
  input channels; the models take one channel), then each map is divided by its maximum
  so that float16 storage does not underflow (maps are compared within an image, so the
  scale is not informative).
* ``occlusion``: the positive part of the logit drop (evidence *for* the task), divided
  by its maximum per map.
* ``seg_prob``: ``sigmoid(dense_logits)`` divided by its maximum per map, for the same
  reason: a confident negative's probabilities (all below float16's smallest normal number,
  6.1e-5, at a logit under -9.7) would lose their ranking in float16 storage, and under
  about 3e-8 (a logit under -17.3) become an all-zero map, with no segmentation. Every use
  of a map (min-max normalisation, argmax, mass shares, pixel AUROCs) is unchanged by a
  positive factor; the image's probability is the heatmap set's ``prob``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_spurious.errors import (
    CxrSpuriousError,
    ParameterError,
    check_integer,
    check_number,
    unknown_name_error,
)

# attribute(x, task) -> (maps (B, h, w) float32, image logits (B, T) of that pass or None)
Attribute = Callable[[torch.Tensor, int], tuple[np.ndarray, torch.Tensor | None]]


class MethodUnfitError(CxrSpuriousError):
    """A saliency method cannot explain this model faithfully (found while running it: e.g.
    DeepLift's attributions that do not sum to the logit change they decompose)."""


@dataclass(frozen=True)
class MethodOptions:
    """Knobs of the methods that have any (defaults suit 96-px inputs on a CPU).

    Attributes:
        ig_steps: Integrated-gradients steps (Gauss-Legendre, as Captum's default; zero baseline).
        smoothgrad_samples: Noisy copies per image for SmoothGrad.
        smoothgrad_stdev: Noise standard deviation (input scale is [0, 1]).
        occlusion_window: Occlusion window side in pixels (``None``: input size // 8).
        occlusion_stride: Occlusion stride in pixels (``None``: window // 2).
        seed: Seed of the SmoothGrad noise: each image's noise for task ``t`` is drawn,
            one image at a time, from ``torch.manual_seed(image_noise_seed(seed, image,
            t))`` (the seed, the task and a digest of the image's values), so a map does
            not depend on the batch, the image's place in it or the call order. Not a
            parameter of ``method_options``: the run's ``saliency.seed``
            (``from_params(..., seed=...)``).
    """

    ig_steps: int = 16
    smoothgrad_samples: int = 16
    smoothgrad_stdev: float = 0.1
    occlusion_window: int | None = None
    occlusion_stride: int | None = None
    seed: int = 0

    @classmethod
    def from_params(
        cls,
        params: dict[str, Any] | None,
        key: str = "saliency.method_options",
        *,
        seed: int = 0,
    ) -> MethodOptions:
        """Build options from the parameter block ``key`` and the run's seed.

        Args:
            params: The block (``saliency.method_options``): any of ``OPTION_PARAMETERS``.
            key: Its dotted key, for messages.
            seed: The run's seed (``saliency.seed``, which also draws the image subset, the
                overlay sample and the sanity check's re-initialisation).

        Raises:
            ParameterError: an unknown key; ``seed`` in the block (one seed per run, set by
                ``<block>.seed``: a ``seed`` here would be overwritten, so it is refused);
                an option out of range.
        """
        params = dict(params or {})
        if "seed" in params:
            owner = f"{key.rpartition('.')[0] or 'saliency'}.seed"
            raise ParameterError(
                f"{key}.seed",
                f"not a method option: the seed of SmoothGrad's noise is '{owner}' (it also "
                f"draws the image subset, the overlay sample and the sanity check); set "
                f"{owner}={params['seed']!r} instead",
            )
        unknown = sorted(set(params) - set(OPTION_PARAMETERS))
        if unknown:
            raise ParameterError(
                key, f"unknown option(s) {unknown}; valid options are {sorted(OPTION_PARAMETERS)}"
            )
        opts = cls(**params, seed=int(seed))
        checked: dict[str, Any] = {
            name: check_integer(getattr(opts, name), f"{key}.{name}", low=1)
            for name in ("ig_steps", "smoothgrad_samples")
        }
        checked["smoothgrad_stdev"] = check_number(
            opts.smoothgrad_stdev, f"{key}.smoothgrad_stdev", low=0
        )
        for name in ("occlusion_window", "occlusion_stride"):
            value = getattr(opts, name)
            if value is not None:  # null: the default (see the field's comment)
                checked[name] = check_integer(value, f"{key}.{name}", low=1, nullable=True)
        opts = replace(opts, **checked)
        window, stride = opts.occlusion_window, opts.occlusion_stride
        if window is not None and stride is not None and stride > window:
            raise ParameterError(
                f"{key}.occlusion_stride",
                f"{stride} px is larger than occlusion_window ({window} px), which would skip "
                "pixels; choose at most the window (null: window // 2)",
            )
        return opts


#: The keys a ``method_options`` parameter block may set (``seed`` is the run's seed).
OPTION_PARAMETERS: tuple[str, ...] = tuple(
    name for name in MethodOptions.__dataclass_fields__ if name != "seed"
)


@dataclass(frozen=True)
class SaliencyMethod:
    """One registered method.

    Attributes:
        name: Registry key.
        family: ``cam`` (pytorch-grad-cam), ``gradient`` (Captum) or ``dense``.
        needs_cam_layer: Requires ``model.cam_layer`` (a convolutional layer).
        needs_dense: Requires a dense model (``dense_logits``).
        opener: ``opener(model, options)`` -> context manager yielding ``attribute``.
        probe: Optional ``probe(model, x) -> reason or None``: whether the method can
            explain ``model`` faithfully, tried on a few inputs ``x`` (``(B, 1, S, S)``
            in [0, 1]) when that cannot be told from the model's attributes (``deeplift``:
            ``deeplift_probe``). ``plan_methods`` runs it when given images.
    """

    name: str
    family: str
    needs_cam_layer: bool
    needs_dense: bool
    opener: Callable[[nn.Module, MethodOptions], contextlib.AbstractContextManager[Attribute]] = (
        field(repr=False)
    )
    probe: Callable[[nn.Module, torch.Tensor], str | None] | None = field(default=None, repr=False)

    def check_model(self, model: nn.Module, model_name: str = "model") -> None:
        """Raise ``CxrSpuriousError`` if ``model`` cannot be explained by this method."""
        if self.needs_cam_layer and getattr(model, "cam_layer", None) is None:
            raise CxrSpuriousError(
                f"saliency method '{self.name}' needs a convolutional target layer, "
                f"but {model_name} has cam_layer=None; "
                f"methods that work for it: {compatible_methods(model)}"
            )
        if self.needs_dense and not bool(getattr(model, "is_dense", False)):
            raise CxrSpuriousError(
                f"saliency method '{self.name}' needs a dense model (dense_logits), "
                f"but {model_name} is an image classifier (is_dense=False); "
                f"methods that work for it: {compatible_methods(model)}"
            )

    def _fits(self, model: nn.Module) -> bool:
        has_cam = getattr(model, "cam_layer", None) is not None
        dense = bool(getattr(model, "is_dense", False))
        return (has_cam or not self.needs_cam_layer) and (dense or not self.needs_dense)

    def supports(self, model: nn.Module) -> bool:
        """Whether ``check_model`` would pass."""
        return self._fits(model)

    def unfit_reason(self, model: nn.Module, probe: torch.Tensor | None = None) -> str | None:
        """Why this method cannot explain ``model`` (``None`` when it can).

        Args:
            model: The model.
            probe: A few model inputs ``(B, 1, S, S)`` in [0, 1] for the method's ``probe``
                (not run when ``None``: then only the model's attributes are checked).
        """
        if self.needs_dense and not bool(getattr(model, "is_dense", False)):
            return "needs a dense model"
        if self.needs_cam_layer and getattr(model, "cam_layer", None) is None:
            return "needs a cam layer"
        if probe is not None and self.probe is not None:
            return self.probe(model, probe)
        return None

    def open(
        self, model: nn.Module, options: MethodOptions | None = None
    ) -> contextlib.AbstractContextManager[Attribute]:
        """Check the model, then return the context manager yielding ``attribute(x, task)``."""
        self.check_model(model)
        return self.opener(model, options or MethodOptions())


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameters frozen (no weight gradients wasted), grad mode on; restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _per_map_max_scale(maps: torch.Tensor) -> np.ndarray:
    """(B, h, w) non-negative maps divided by their own maximum (all-zero maps stay zero)."""
    arr = maps.detach().float().cpu().numpy()
    peak = arr.reshape(arr.shape[0], -1).max(axis=1)
    peak = np.where(peak > 0, peak, 1.0)
    return (arr / peak[:, None, None]).astype(np.float32)


def _abs_channels(attr: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) signed attributions -> (B, h, w) summed absolute value over channels."""
    return attr.abs().sum(dim=1)


class _LogitModel(nn.Module):
    """Wraps a model so that Captum sees a plain module returning ``(B, T)`` logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---------------------------------------------------------------------- CAM methods


class _LogitTarget:
    """pytorch-grad-cam target: the raw sigmoid logit of one task (no softmax)."""

    def __init__(self, task: int) -> None:
        self.task = task

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.task]


@contextlib.contextmanager
def _cam_gradients_only(model: nn.Module, layer: nn.Module) -> Iterator[bool]:
    """Eval mode, grad mode on, every parameter outside ``layer`` frozen; restored after.

    Yields:
        Whether the input must require gradients (``layer`` has no parameters of its own,
        so its activations are in the graph only through the input).
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    own = {id(p) for p in layer.parameters()}
    model.eval()
    for p, _ in flags:
        p.requires_grad_(id(p) in own)
    try:
        with torch.enable_grad():
            yield not own
    finally:
        for p, flag in flags:
            p.grad = None if id(p) in own else p.grad
            p.requires_grad_(flag)
        model.train(was_training)


def _cam_opener(
    cam_class_path: str,
) -> Callable[[nn.Module, MethodOptions], contextlib.AbstractContextManager[Attribute]]:
    @contextlib.contextmanager
    def opener(model: nn.Module, options: MethodOptions) -> Iterator[Attribute]:
        import pytorch_grad_cam

        cam_class = getattr(pytorch_grad_cam, cam_class_path)
        layer = model.cam_layer
        with _cam_gradients_only(model, layer) as needs_input_grad:
            cam = cam_class(model=model, target_layers=[layer])
            try:

                def attribute(x: torch.Tensor, task: int) -> tuple[np.ndarray, torch.Tensor | None]:
                    x = x.detach().requires_grad_(needs_input_grad)
                    maps = cam(input_tensor=x, targets=[_LogitTarget(task)] * x.shape[0])
                    return np.asarray(maps, dtype=np.float32), cam.outputs.detach()

                yield attribute
            finally:
                # The CAM's own __exit__ releases its hooks; it is called with no exception
                # because its ``with`` form would print and swallow any IndexError raised
                # in the block.
                cam.__exit__(None, None, None)

    return opener


# ----------------------------------------------------------------- Captum methods


class _IntegratedGradients:
    """Captum's integrated gradients (Gauss-Legendre steps, zero baseline) of a batch.

    ``self(x, task)`` is one task, as Captum computes it: a forward pass over the batch's
    scaled copies, then the backward pass. ``for_tasks(x, tasks)`` shares that forward pass
    among the tasks (one backward pass each, the graph kept until the last task's) instead
    of repeating it per task. After the gradients, the arithmetic is Captum's
    ``IntegratedGradients._attribute`` (step weights, sum over steps, times the input minus
    the baseline), so both give Captum's maps
    (``tests/saliency/test_saliency_registry.py`` compares them).
    """

    def __init__(self, model: nn.Module, n_steps: int) -> None:
        from captum.attr._utils.approximation_methods import approximation_parameters

        step_sizes_of, alphas_of = approximation_parameters("gausslegendre")
        self.model, self.n_steps = model, int(n_steps)
        self.step_sizes, self.alphas = step_sizes_of(self.n_steps), alphas_of(self.n_steps)

    def __call__(self, x: torch.Tensor, task: int) -> tuple[np.ndarray, None]:
        return self.for_tasks(x, [task])[0]

    def for_tasks(self, x: torch.Tensor, tasks: list[int]) -> list[tuple[np.ndarray, None]]:
        """The maps of each of ``tasks`` for the batch ``x``, from one forward pass."""
        inputs = x.detach()
        baseline = torch.zeros_like(inputs)
        scaled = torch.cat(
            [baseline + alpha * (inputs - baseline) for alpha in self.alphas], dim=0
        ).requires_grad_()
        logits = self.model(scaled)
        weights = torch.tensor(self.step_sizes).float().view(self.n_steps, 1).to(x.device)
        out = []
        for k, task in enumerate(tasks):
            (grad,) = torch.autograd.grad(
                torch.unbind(logits[:, task]), scaled, retain_graph=k < len(tasks) - 1
            )
            weighted = grad.contiguous().view(self.n_steps, -1) * weights
            shape = (self.n_steps, inputs.shape[0], *inputs.shape[1:])
            attr = torch.sum(weighted.reshape(shape), dim=0) * (inputs - baseline)
            out.append((_per_map_max_scale(_abs_channels(attr)), None))
        return out


@contextlib.contextmanager
def _integrated_gradients(model: nn.Module, options: MethodOptions) -> Iterator[Attribute]:
    with _input_gradients_only(model):
        yield _IntegratedGradients(model, int(options.ig_steps))


#: DeepLift's summation-to-delta tolerance: the attributions of an image must sum to the
#: logit change ``f(x) - f(0)`` within ``DEEPLIFT_RTOL * |f(x) - f(0)| + DEEPLIFT_ATOL``.
#: Measured on the CPU in fp32 (relative gap per image; untrained weights at 32 and 96 px,
#: and after 60 Adam steps on synthetic blobs at 64 px): models whose nonlinearities are all
#: modules used once, 1e-7 to 4e-5; ``unet_small`` with ``dense_pooling=mean`` (only its
#: encoder's functional max pooling unhooked) up to 8e-4; ``cnn_small`` 0.013 to 0.23
#: untrained, 0.0014 to 0.21 trained; ``unet_small`` (``amax`` pooling) 0.016 to 0.56
#: untrained, 1e-5 to 1.8 trained; ``densenet121`` 0.05 to 0.41 untrained. 1% leaves room
#: for float error (CUDA's default TF32 convolutions round to about 1e-3), and every batch
#: of realistic size of those three has images far above it.
DEEPLIFT_RTOL = 1e-2
DEEPLIFT_ATOL = 1e-6


def _summation_gap(attr: torch.Tensor, delta: torch.Tensor) -> tuple[int, float, float] | None:
    """The image of a batch whose DeepLift attributions miss the logit change the most.

    Args:
        attr: Signed attributions ``(B, ...)``.
        delta: Captum's convergence delta ``sum(attr) - (f(x) - f(baseline))`` per image.

    Returns:
        ``(image, |delta|, |f(x) - f(baseline)|)`` of the image most over the tolerance
        (``DEEPLIFT_RTOL``, ``DEEPLIFT_ATOL``), or ``None`` when every image is within it.
    """
    total = attr.detach().double().flatten(1).sum(dim=1)
    gap = delta.detach().double().reshape(-1)
    change = (total - gap).abs()
    excess = gap.abs() - (DEEPLIFT_RTOL * change + DEEPLIFT_ATOL)
    worst = int(excess.argmax())
    if float(excess[worst]) <= 0:
        return None
    return worst, float(gap[worst].abs()), float(change[worst])


def _task_name(model: nn.Module, task: int) -> str:
    tasks = list(getattr(model, "tasks", []) or [])
    return repr(str(tasks[task])) if 0 <= task < len(tasks) else f"index {task}"


@contextlib.contextmanager
def _deeplift(model: nn.Module, options: MethodOptions) -> Iterator[Attribute]:
    """Captum's DeepLift (zero baseline), refused when it does not decompose the logit.

    Captum applies DeepLift's rules only to nonlinearity *modules*; a nonlinearity called
    as a function (``F.max_pool2d``, ``amax`` / top-k pooling, ``F.relu``: this project's
    ``unet_small``, ``cnn_small``, ``densenet121``) gets its plain gradient instead, and the
    attributions no longer sum to ``f(x) - f(0)``. Each batch's convergence delta is
    checked (``DEEPLIFT_RTOL``); over the tolerance, ``MethodUnfitError``.
    """
    from captum.attr import DeepLift

    # DeepLift hooks every nonlinearity; in-place activations break those hooks, so it
    # runs on a copy with in-place ReLUs turned off.
    work = copy.deepcopy(model)
    for module in work.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    name = type(model).__name__
    with _input_gradients_only(work):
        dl = DeepLift(_LogitModel(work))

        def attribute(x: torch.Tensor, task: int) -> tuple[np.ndarray, None]:
            x = x.detach().requires_grad_(True)
            try:
                with warnings.catch_warnings():  # captum's notice that it hooks the nonlinearities
                    warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
                    attr, delta = dl.attribute(
                        x,
                        baselines=torch.zeros_like(x),
                        target=task,
                        return_convergence_delta=True,
                    )
            except (AssertionError, RuntimeError) as exc:
                if "does not have a deterministic implementation" in str(exc):
                    raise MethodUnfitError(
                        f"deeplift cannot explain this model ({name}) under deterministic "
                        "algorithms (training.deterministic, set by the training that ran "
                        "in this process): Captum's rule for its max-pooling modules needs "
                        "max_unpool2d, which has no deterministic implementation; use "
                        "integrated_gradients instead, or run the saliency pipeline in a "
                        "process without deterministic training"
                    ) from exc
                if "more than once" not in str(exc) and "only once" not in str(exc):
                    raise
                raise MethodUnfitError(
                    f"deeplift cannot explain this model ({name}): "
                    "it calls one nonlinearity module more than once per forward pass "
                    "(as torchvision ResNet blocks do), and Captum's DeepLift needs each "
                    "used once; use integrated_gradients instead"
                ) from exc
            worst = _summation_gap(attr, delta)
            if worst is not None:
                image, gap, change = worst
                raise MethodUnfitError(
                    f"deeplift cannot explain this model ({name}) faithfully: its "
                    f"attributions do not sum to the logit change f(x) - f(0) they decompose "
                    f"(DeepLift's summation-to-delta); for task {_task_name(model, task)}, "
                    f"image {image} of the batch, |sum(attributions) - (f(x) - f(0))| = "
                    f"{gap:.3g}, {gap / max(change, 1e-30):.1%} of |f(x) - f(0)| = "
                    f"{change:.3g} (tolerance {DEEPLIFT_RTOL:.0%} + {DEEPLIFT_ATOL:g}). "
                    "Captum's DeepLift rules cover nonlinearity modules only: one called as "
                    "a function (max pooling, amax or top-k pooling, F.relu) gets its plain "
                    "gradient, so these maps would not be DeepLift's; "
                    "use integrated_gradients instead"
                )
            return _per_map_max_scale(_abs_channels(attr)), None

        yield attribute


def deeplift_probe(model: nn.Module, x: torch.Tensor) -> str | None:
    """Why ``deeplift`` cannot explain ``model`` on the inputs ``x`` (``None``: it can).

    Runs the method on ``x`` for every task of the model (on a copy of it), so that a
    model it cannot explain (a nonlinearity module used twice, or attributions that miss
    the logit change, see ``_deeplift``) is known before any real work.
    """
    tasks = list(getattr(model, "tasks", []) or [None])
    try:
        with (
            torch.autocast(device_type=x.device.type, enabled=False),
            _deeplift(model, MethodOptions()) as attribute,
        ):
            for task in range(len(tasks)):
                attribute(x, task)
    except MethodUnfitError as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def _occlusion(model: nn.Module, options: MethodOptions) -> Iterator[Attribute]:
    from captum.attr import Occlusion

    occ = Occlusion(_LogitModel(model))
    was_training = model.training
    model.eval()
    try:

        def attribute(x: torch.Tensor, task: int) -> tuple[np.ndarray, None]:
            size = int(x.shape[-1])
            window = int(options.occlusion_window or max(1, size // 8))
            stride = int(options.occlusion_stride or max(1, window // 2))
            if window > min(x.shape[-2:]):
                raise ParameterError(
                    "method_options.occlusion_window",
                    f"{window} px is larger than the {tuple(x.shape[-2:])} px input; choose "
                    "at most the image size (null: size // 8)",
                )
            if stride > window:  # Captum's bare AssertionError otherwise
                raise ParameterError(
                    "method_options.occlusion_stride",
                    f"{stride} px is larger than the {window} px occlusion window "
                    f"(occlusion_window={options.occlusion_window!r}, null: input size // 8), "
                    "which would skip pixels; choose at most the window (null: window // 2)",
                )
            with torch.no_grad():
                attr = occ.attribute(
                    x,
                    sliding_window_shapes=(x.shape[1], window, window),
                    strides=(x.shape[1], stride, stride),
                    baselines=0.0,
                    target=task,
                    perturbations_per_eval=16,
                )
            return _per_map_max_scale(attr.sum(dim=1).clamp(min=0)), None

        yield attribute
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _saliency(model: nn.Module, options: MethodOptions) -> Iterator[Attribute]:
    from captum.attr import Saliency

    with _input_gradients_only(model):
        sal = Saliency(_LogitModel(model))

        def attribute(x: torch.Tensor, task: int) -> tuple[np.ndarray, None]:
            attr = sal.attribute(x.detach().requires_grad_(True), target=task, abs=True)
            return _per_map_max_scale(attr.sum(dim=1)), None

        yield attribute


def image_noise_seed(seed: int, image: torch.Tensor, task: int) -> int:
    """The seed of one image's SmoothGrad noise for one task: from the method's seed, the
    task and the image's own values (a 64-bit BLAKE2 digest of its bytes), so an image's
    noise, and its map, do not depend on its batch, its place in it or the other images."""
    digest = hashlib.blake2b(
        image.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=8
    ).digest()
    entropy = [int(seed) % 2**64, int(task), int.from_bytes(digest, "little")]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


@contextlib.contextmanager
def _smoothgrad(model: nn.Module, options: MethodOptions) -> Iterator[Attribute]:
    from captum.attr import NoiseTunnel, Saliency

    with _input_gradients_only(model):
        nt = NoiseTunnel(Saliency(_LogitModel(model)))

        def attribute(x: torch.Tensor, task: int) -> tuple[np.ndarray, None]:
            # Captum draws the noise from torch's global generator, for the whole input at
            # once: call it per image, in a fork of the generator seeded for that image
            # (``image_noise_seed``), so maps are reproducible, each image's is its own
            # whatever the batch size, order or subset, and the global state is untouched.
            devices = [x.device] if x.device.type == "cuda" else []
            attrs = []
            for i in range(x.shape[0]):
                one = x[i : i + 1]
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(image_noise_seed(int(options.seed), one, task))
                    attrs.append(
                        nt.attribute(
                            one.detach().requires_grad_(True),
                            nt_type="smoothgrad",
                            nt_samples=int(options.smoothgrad_samples),
                            nt_samples_batch_size=int(options.smoothgrad_samples),
                            stdevs=float(options.smoothgrad_stdev),
                            target=task,
                            abs=True,
                        )
                    )
            return _per_map_max_scale(torch.cat(attrs).sum(dim=1)), None

        yield attribute


# -------------------------------------------------------------------------- seg_prob


@contextlib.contextmanager
def _seg_prob(model: nn.Module, options: MethodOptions) -> Iterator[Attribute]:
    was_training = model.training
    model.eval()
    try:
        last: dict[str, torch.Tensor] = {}

        def attribute(x: torch.Tensor, task: int) -> tuple[np.ndarray, None]:
            if last.get("x") is not x:  # one dense pass per batch serves every task
                with torch.inference_mode():
                    last["x"], last["probs"] = x, torch.sigmoid(model.dense_logits(x)).float().cpu()
            return _per_map_max_scale(last["probs"][:, task]), None

        yield attribute
    finally:
        model.train(was_training)


METHODS: dict[str, SaliencyMethod] = {
    "gradcam": SaliencyMethod("gradcam", "cam", True, False, _cam_opener("GradCAM")),
    "gradcam++": SaliencyMethod("gradcam++", "cam", True, False, _cam_opener("GradCAMPlusPlus")),
    "eigencam": SaliencyMethod("eigencam", "cam", True, False, _cam_opener("EigenCAM")),
    "layercam": SaliencyMethod("layercam", "cam", True, False, _cam_opener("LayerCAM")),
    "integrated_gradients": SaliencyMethod(
        "integrated_gradients", "gradient", False, False, _integrated_gradients
    ),
    "deeplift": SaliencyMethod(
        "deeplift", "gradient", False, False, _deeplift, probe=deeplift_probe
    ),
    "occlusion": SaliencyMethod("occlusion", "perturbation", False, False, _occlusion),
    "saliency": SaliencyMethod("saliency", "gradient", False, False, _saliency),
    "smoothgrad": SaliencyMethod("smoothgrad", "gradient", False, False, _smoothgrad),
    "seg_prob": SaliencyMethod("seg_prob", "dense", False, True, _seg_prob),
}


def compatible_methods(model: nn.Module) -> list[str]:
    """Names of the methods that can explain ``model`` (given its cam layer and density), sorted."""
    return sorted(name for name, spec in METHODS.items() if spec.supports(model))


def available_methods() -> list[str]:
    """Names of the registered saliency methods, sorted."""
    return sorted(METHODS)


def get_method(name: str, key: str | None = "saliency.methods") -> SaliencyMethod:
    """Look a method up by name.

    Args:
        name: Registry key, e.g. ``"gradcam"``.
        key: Parameter key the name came from (for the error message).

    Returns:
        The registered method.

    Raises:
        ParameterError: unknown name (the message lists the valid ones).
    """
    try:
        return METHODS[str(name)]
    except KeyError:
        raise unknown_name_error("saliency method", str(name), METHODS, key=key) from None
