"""Render one phantom image (and its counterfactuals) from its cohort record.

Every component draws from its own random stream, seeded by (master seed, image index,
component), so removing a component (the chest tube, the lesions) or adding an artefact
(``phantom/artefacts.py``) leaves every other pixel and the noise unchanged: a
counterfactual differs from the original only around the removed or added object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cxr_spurious.errors import ParameterError
from cxr_spurious.io.masks import rasterize_polygons
from cxr_spurious.phantom import anatomy, devices, findings
from cxr_spurious.phantom.artefacts import (
    ARTEFACT_KINDS,
    ARTEFACT_STREAMS,
    ARTEFACTS,
    ArtefactScene,
)
from cxr_spurious.phantom.cohort import (
    STREAM_IMAGE,
    STREAM_PATIENT,
    ImageRecord,
    _multiplier,
    cohort_for,
    stream_rng,
)
from cxr_spurious.phantom.config import MAX_MIN_THICKNESS_AT_96, PIPELINE_KEY, PhantomConfig
from cxr_spurious.phantom.geometry import smooth_field, soften
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.tasks import PHANTOM_TASKS, SPURIOUS_OBJECTS

# Sub-streams of an image (never renumber: it would change every phantom).
_S_POSE, _S_TEXTURE, _S_NOISE, _S_TUBE, _S_MARKER, _S_DEVICES, _S_APPEARANCE = 1, 2, 3, 4, 5, 6, 7
_S_TASK = {task: 20 + i for i, task in enumerate(PHANTOM_TASKS)}

REMOVABLE: frozenset[str] = frozenset(PHANTOM_TASKS) | frozenset(SPURIOUS_OBJECTS)
# Counterfactual render name -> what it removes.
RENDER_REMOVES: dict[str, frozenset[str]] = {
    "no_tube": frozenset({"Chest Tube"}),
    "no_lesion": frozenset(PHANTOM_TASKS),
}


@dataclass(frozen=True)
class RenderSpec:
    """One version of an image: what is left out, and the artefact added (if any).

    Attributes:
        remove: Task / object names left out (counterfactuals).
        artefact: An artefact kind of ``ARTEFACT_KINDS`` drawn on top, or None.
    """

    remove: frozenset[str] = frozenset()
    artefact: str | None = None


@dataclass(frozen=True)
class RenderedImage:
    """One rendered image with its exact ground truth.

    Attributes:
        image: (S, S) uint8 grayscale radiograph.
        polygons: ``{task: [outline, ...]}`` for drawn (positive, not removed) tasks; each
            outline a list of [x, y] float pixel points, one per instance.
        spurious: ``{object: (S, S) uint8 mask}`` for every spurious object (empty if absent).
        record: The cohort record (ids, split, attributes, labels as generated).
        removed: What was left out of this render.
        artefact: The artefact kind added to this render, or None.
        artefact_mask: (S, S) uint8 mask of every pixel where the artefact may change the
            image (its footprint grown by the image blur; outside it the render equals the
            same render without the artefact exactly), or None.
    """

    image: np.ndarray
    polygons: dict[str, list[list[list[float]]]]
    spurious: dict[str, np.ndarray]
    record: ImageRecord
    removed: frozenset[str] = field(default_factory=frozenset)
    artefact: str | None = None
    artefact_mask: np.ndarray | None = None

    def masks(self) -> dict[str, np.ndarray]:
        """Ground-truth mask of every phantom task: the rasterised polygons (empty if none)."""
        size = self.image.shape[0]
        return {t: rasterize_polygons(self.polygons.get(t, []), size, size) for t in PHANTOM_TASKS}


def _rng(seed: int, index: int, sub: int) -> np.random.Generator:
    return stream_rng(seed, STREAM_IMAGE, index, sub)


def _lesion_strength(cfg: PhantomConfig, rec: ImageRecord) -> float:
    attrs = {"sex": rec.sex, "race": rec.race, "insurance": rec.insurance, "site": rec.site}
    return cfg.sites[rec.site].lesion_contrast * _multiplier(
        cfg.demographics.lesion_contrast_multiplier, attrs
    )


def _enlargement(cfg: PhantomConfig, rec: ImageRecord, seed: int, strength: float) -> float:
    if not rec.labels["Cardiomegaly"]:
        return 1.0
    visibility = min(2.0, cfg.findings.contrast["Cardiomegaly"] * strength)
    return 1.0 + 0.32 * visibility * _rng(seed, rec.index, _S_TASK["Cardiomegaly"]).uniform(
        0.8, 1.25
    )


def _anatomy(
    cfg: PhantomConfig, rec: ImageRecord, seed: int, enlargement: float
) -> tuple[anatomy.Anatomy, anatomy.AnatomyLayers]:
    app = cfg.appearance
    anat = anatomy.sample_anatomy(
        stream_rng(seed, STREAM_PATIENT, rec.patient),
        _rng(seed, rec.index, _S_POSE),
        cfg.image_size,
        body_scale=app.body_scale,
        shift=app.shift,
        rotation_deg=app.rotation_deg,
        ap_view=rec.view == "AP",
        female=rec.sex == "F",
        heart_enlargement=enlargement,
    )
    return anat, anatomy.draw_anatomy(anat, _rng(seed, rec.index, _S_TEXTURE), cfg.image_size)


def render_versions(
    cfg: PhantomConfig, rec: ImageRecord, seed: int, specs: Mapping[str, RenderSpec]
) -> dict[str, RenderedImage]:
    """Render several versions of one image, sharing the work they have in common.

    Args:
        cfg: Generator config.
        rec: The image's record.
        seed: Master seed.
        specs: ``{name: RenderSpec}``, e.g. ``{"original": RenderSpec(), "no_tube":
            RenderSpec(remove=frozenset({"Chest Tube"})), "with_marker_port":
            RenderSpec(artefact="marker_port")}``.

    Returns:
        ``{name: RenderedImage}``; each equals ``render_record(cfg, rec, seed,
        remove=spec.remove, artefact=spec.artefact)``.

    Raises:
        ParameterError: ``findings.min_thickness_at_96`` is too thick for one of this
            image's positive findings (drawn, or the ``tube_lesion`` artefact's would-be
            pneumothorax), or a marker text draws nothing; naming the key, the finding and
            the image.
    """
    try:
        return _render_versions(cfg, rec, seed, specs)
    except findings.FindingDoesNotFitError as err:
        raise _too_thick_error(cfg, rec, err.task) from err


def _too_thick_error(cfg: PhantomConfig, rec: ImageRecord, task: str) -> ParameterError:
    """The error of a ``task`` finding ``findings.min_thickness_at_96`` thick that does not
    fit in the image's lungs (its label would otherwise silently become negative)."""
    t96 = cfg.findings.min_thickness_at_96
    size = cfg.image_size
    limit = (
        f"up to {MAX_MIN_THICKNESS_AT_96:g} fits at the default appearance.body_scale"
        if task == "Pneumothorax"
        else f"every {task} fitted up to 6.5 in 300 images at the default appearance.body_scale"
    )
    message = (
        f"a {task} {t96:g} px thick at 96 px ({t96 * size / 96.0:.1f} px at the written"
        f" {size} px) does not fit in the lungs of image {rec.index} ({rec.image_id}); lower"
        f" it ({limit}; a smaller body_scale needs less)"
    )
    return ParameterError(f"{PIPELINE_KEY}.findings.min_thickness_at_96", message)


def _render_versions(
    cfg: PhantomConfig, rec: ImageRecord, seed: int, specs: Mapping[str, RenderSpec]
) -> dict[str, RenderedImage]:
    """``render_versions`` (which turns a lesion that does not fit into a ParameterError)."""
    strength = _lesion_strength(cfg, rec)
    enlargement = _enlargement(cfg, rec, seed, strength)
    bases: dict[float, tuple[anatomy.Anatomy, anatomy.AnatomyLayers]] = {}
    drawn_cache: dict[
        tuple[float, frozenset[str]], tuple[dict[str, list[list[list[float]]]], np.ndarray]
    ] = {}
    exposure = _exposure(cfg, rec, seed)
    # Findings are placed in the record's own anatomy (its heart enlarged when it has
    # Cardiomegaly) in every version: removing Cardiomegaly redraws a normal heart but
    # leaves every other finding where it was (the open lung a lesion may occupy excludes
    # the heart, so placing it around a normal heart would move it).
    own_heart = enlargement if "Cardiomegaly" in rec.positives else 1.0
    bases[own_heart] = _anatomy(cfg, rec, seed, own_heart)
    placement = _context(cfg, *bases[own_heart])

    def task_rng(task: str) -> np.random.Generator:
        return _rng(seed, rec.index, _S_TASK[task])

    out: dict[str, RenderedImage] = {}
    for name, spec in specs.items():
        remove = frozenset(spec.remove)
        drawn = frozenset(t for t in rec.positives if t not in remove)
        heart = enlargement if "Cardiomegaly" in drawn else 1.0
        if heart not in bases:
            bases[heart] = _anatomy(cfg, rec, seed, heart)
        anat, layers = bases[heart]
        if (heart, drawn) not in drawn_cache:
            att = layers.attenuation.copy()
            polygons = _draw_findings(
                cfg, rec, seed, placement, anat, layers, att, set(drawn), strength
            )
            drawn_cache[(heart, drawn)] = (polygons, att)
        polygons, att_findings = drawn_cache[(heart, drawn)]
        att = att_findings.copy()
        spurious = _draw_spurious(cfg, rec, seed, anat, att, remove)
        mask = None
        if spec.artefact is not None:
            scene = ArtefactScene(cfg, rec, _context(cfg, anat, layers), task_rng)
            rng = _rng(seed, rec.index, ARTEFACT_STREAMS[spec.artefact])
            mask = _add_artefact(scene, att, spec.artefact, rng, blur_sigma=exposure[0])
        image = _expose(cfg, rec, seed, att, exposure)
        out[name] = RenderedImage(
            image=image,
            polygons=polygons,
            spurious=spurious,
            record=rec,
            removed=remove,
            artefact=spec.artefact,
            artefact_mask=mask,
        )
    return out


def _add_artefact(
    scene: ArtefactScene, att: np.ndarray, kind: str, rng: np.random.Generator, *, blur_sigma: float
) -> np.ndarray:
    """Draw artefact ``kind`` into ``att`` (in place); return every pixel it may change.

    That is its footprint plus every pixel whose attenuation it changed, grown by the
    support of the image blur (``_expose``): blur, display curve, noise and rounding are
    otherwise pixel-wise, so the exposed image is unchanged outside this mask.
    """
    before = att.copy()
    footprint = ARTEFACTS[kind](scene, att, rng)
    changed = (att != before).astype(np.float32)
    reach = soften(changed, blur_sigma) > 0  # a Gaussian is positive on its whole kernel
    return (footprint.astype(bool) | reach | (changed > 0)).astype(np.uint8)


def _context(
    cfg: PhantomConfig, anat: anatomy.Anatomy, layers: anatomy.AnatomyLayers
) -> findings.FindingContext:
    size = cfg.image_size
    thickness = cfg.findings.min_thickness_at_96 * size / 96.0
    return findings.FindingContext(anat, layers, size, thickness)


def render_record(
    cfg: PhantomConfig,
    rec: ImageRecord,
    seed: int,
    *,
    remove: frozenset[str] = frozenset(),
    artefact: str | None = None,
) -> RenderedImage:
    """Render the image of one cohort record.

    Args:
        cfg: Generator config.
        rec: The image's record.
        seed: Master seed.
        remove: Task / object names to leave out (counterfactuals).
        artefact: Artefact kind to add (``ARTEFACT_KINDS``), or None.

    Returns:
        The image with its polygons and spurious masks (and the artefact's mask).
    """
    spec = RenderSpec(frozenset(remove), artefact)
    return render_versions(cfg, rec, seed, {"image": spec})["image"]


def lung_mask(cfg: PhantomConfig, index: int, seed: int) -> np.ndarray:
    """Union of both lung fields of image ``index`` as an (S, S) uint8 mask."""
    rec = cohort_for(cfg, seed)[index]
    anat, layers = _anatomy(cfg, rec, seed, 1.0)
    ctx = _context(cfg, anat, layers)
    return ctx.lung_mask(0) | ctx.lung_mask(1)


def _draw_findings(
    cfg: PhantomConfig,
    rec: ImageRecord,
    seed: int,
    ctx: findings.FindingContext,
    anat: anatomy.Anatomy,
    layers: anatomy.AnatomyLayers,
    att: np.ndarray,
    drawn: set[str],
    strength: float,
) -> dict[str, list[list[list[float]]]]:
    """Draw the ``drawn`` findings into ``att`` (the anatomy ``anat`` / ``layers`` of this
    version), placed in ``ctx`` (the record's own anatomy, the same in every version)."""
    size = cfg.image_size
    out: dict[str, list[list[list[float]]]] = {}
    for task in PHANTOM_TASKS:
        if task not in drawn:
            continue
        rng = _rng(seed, rec.index, _S_TASK[task])
        c = cfg.findings.contrast[task] * strength
        n_max = cfg.findings.max_instances[task]
        if task == "Pneumothorax":
            polys, collapsed = findings.sample_pneumothorax(ctx, rng, rec.ptx_side)
        elif task == "Pleural Effusion":
            polys = findings.sample_effusion(ctx, rng, n_max)
        elif task == "Lung Lesion":
            polys = findings.sample_nodules(ctx, rng, n_max)
        elif task == "Airspace Opacity":
            polys = findings.sample_opacity(ctx, rng, n_max)
        else:
            polys = [anat.heart]
        if not polys:  # a positive label needs its outline: never a silent negative
            raise findings.FindingDoesNotFitError(f"no {task} outline fits", task=task)
        as_lists = [[[round(float(x), 3), round(float(y), 3)] for x, y in p] for p in polys]
        mask = rasterize_polygons(as_lists, size, size)
        if task == "Pneumothorax":
            findings.draw_pneumothorax(att, mask, collapsed, layers, c)
        elif task == "Pleural Effusion":
            findings.draw_effusion(att, mask, layers, c)
        elif task == "Lung Lesion":
            findings.draw_nodules(att, mask, c)
        elif task == "Airspace Opacity":
            findings.draw_opacity(att, mask, rng, c)
        else:
            findings.draw_cardiomegaly(att, mask, c)
        out[task] = as_lists
    return out


def _draw_spurious(
    cfg: PhantomConfig,
    rec: ImageRecord,
    seed: int,
    anat: anatomy.Anatomy,
    att: np.ndarray,
    remove: frozenset[str],
) -> dict[str, np.ndarray]:
    size = cfg.image_size
    empty = np.zeros((size, size), np.uint8)
    out = dict.fromkeys(SPURIOUS_OBJECTS, empty)
    if rec.support_device and "Support Device" not in remove:
        out["Support Device"] = devices.draw_support_devices(
            att, anat.frame, _rng(seed, rec.index, _S_DEVICES)
        )
    if rec.tube and "Chest Tube" not in remove:
        rng = _rng(seed, rec.index, _S_TUBE)
        path = devices.tube_path(anat.frame, rng, rec.tube_side)
        out["Chest Tube"] = devices.draw_tube(
            att, path, max(1.0, cfg.tube.width_frac * size), cfg.tube.contrast, rng
        )
    if rec.marker and "Laterality Marker" not in remove:
        site = cfg.sites[rec.site]
        out["Laterality Marker"] = devices.draw_marker(
            att,
            site.marker,
            site.marker_corner,
            _rng(seed, rec.index, _S_MARKER),
            key=f"{PIPELINE_KEY}.sites.{rec.site}.marker",
        )
    return out


def _exposure(cfg: PhantomConfig, rec: ImageRecord, seed: int) -> tuple[float, float, float, float]:
    """The image's blur sigma (px), display gamma, exposure offset and noise level."""
    size = cfg.image_size
    app = cfg.appearance
    site = cfg.sites[rec.site]
    rng = _rng(seed, rec.index, _S_APPEARANCE)
    sigma = rng.uniform(*app.blur) * size * site.blur
    gamma = rng.uniform(*app.contrast)
    exposure = rng.uniform(-app.exposure, app.exposure) + site.brightness
    noise_sd = rng.uniform(*app.noise) * site.noise
    return float(sigma), float(gamma), float(exposure), float(noise_sd)


def _expose(
    cfg: PhantomConfig,
    rec: ImageRecord,
    seed: int,
    att: np.ndarray,
    params: tuple[float, float, float, float],
) -> np.ndarray:
    """Blur, display curve (site and image exposure / contrast) and noise -> uint8."""
    size = cfg.image_size
    site = cfg.sites[rec.site]
    sigma, gamma, exposure, noise_sd = params
    img = soften(att, sigma)
    img = np.clip(1.3 * site.contrast * (img - 0.02) + exposure, 0.0, 1.0) ** gamma
    noise_rng = _rng(seed, rec.index, _S_NOISE)
    white = noise_rng.standard_normal((size, size), dtype=np.float32)
    mottle = smooth_field(noise_rng, size, max(4, size // 16))
    img = img + noise_sd * (np.sqrt(img + 0.05) * white + 0.5 * mottle)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_image(
    cfg: PhantomConfig,
    index: int,
    seed: int,
    *,
    remove: frozenset[str] = frozenset(),
    artefact: str | None = None,
) -> RenderedImage:
    """Render image ``index`` of the phantom defined by ``cfg`` and ``seed``.

    Args:
        cfg: Generator config (checked as ``PhantomConfig.from_dict`` checks it).
        index: Image index (0 <= index < cfg.n_images).
        seed: Master seed, an integer in ``[0, 2**32 - 1]``.
        remove: Names to leave out: any of ``PHANTOM_TASKS`` and ``SPURIOUS_OBJECTS``.
        artefact: An artefact kind (``ARTEFACT_KINDS``) to add, or None.

    Returns:
        The rendered image; identical for the same arguments.

    Raises:
        ParameterError: a config value ``PhantomConfig.from_dict`` refuses (its key under
            ``ingestion.phantom``), a seed that is not such an integer, ``index`` is out of
            range, ``remove`` or ``artefact`` names something unknown.
    """
    seed = check_seed(seed, "seed")
    # cohort_for checks the config (build_cohort, for a config whose cohort it does not hold
    # yet): the checks cost about 2 ms, a render 15-40 ms at 64-256 px
    records = cohort_for(cfg, seed)
    if not 0 <= index < cfg.n_images:
        raise ParameterError("index", f"expected 0 <= index < {cfg.n_images}, got {index}")
    unknown = sorted(set(remove) - REMOVABLE)
    if unknown:
        raise ParameterError(
            "remove", f"unknown name(s) {unknown}; expected some of {sorted(REMOVABLE)}"
        )
    if artefact is not None and artefact not in ARTEFACT_KINDS:
        kinds = ", ".join(ARTEFACT_KINDS)
        raise ParameterError("artefact", f"unknown artefact {artefact!r}; expected one of {kinds}")
    return render_record(cfg, records[index], seed, remove=frozenset(remove), artefact=artefact)
