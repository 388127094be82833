"""Render one phantom image (and its counterfactuals) from its cohort record.

Every component draws from its own random stream, seeded by (master seed, image index,
component), so removing a component (the chest tube, the lesions) leaves every other
pixel and the noise unchanged: a counterfactual differs from the original only around
the removed object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cxr_spurious.errors import ParameterError
from cxr_spurious.io.masks import rasterize_polygons
from cxr_spurious.phantom import anatomy, devices, findings
from cxr_spurious.phantom.cohort import (
    STREAM_IMAGE,
    STREAM_PATIENT,
    ImageRecord,
    _multiplier,
    cohort_for,
    stream_rng,
)
from cxr_spurious.phantom.config import PhantomConfig
from cxr_spurious.phantom.geometry import smooth_field, soften
from cxr_spurious.tasks import PHANTOM_TASKS, SPURIOUS_OBJECTS

# Sub-streams of an image (never renumber: it would change every phantom).
_S_POSE, _S_TEXTURE, _S_NOISE, _S_TUBE, _S_MARKER, _S_DEVICES, _S_APPEARANCE = 1, 2, 3, 4, 5, 6, 7
_S_TASK = {task: 20 + i for i, task in enumerate(PHANTOM_TASKS)}

REMOVABLE: frozenset[str] = frozenset(PHANTOM_TASKS) | frozenset(SPURIOUS_OBJECTS)
# Counterfactual variant name -> what it removes.
VARIANT_REMOVES: dict[str, frozenset[str]] = {
    "no_tube": frozenset({"Chest Tube"}),
    "no_lesion": frozenset(PHANTOM_TASKS),
}


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
    """

    image: np.ndarray
    polygons: dict[str, list[list[list[float]]]]
    spurious: dict[str, np.ndarray]
    record: ImageRecord
    removed: frozenset[str] = field(default_factory=frozenset)

    def masks(self) -> dict[str, np.ndarray]:
        """Ground-truth mask of every phantom task: the rasterised polygons (empty if none)."""
        size = self.image.shape[0]
        return {t: rasterize_polygons(self.polygons.get(t, []), size, size) for t in PHANTOM_TASKS}


def _rng(seed: int, index: int, sub: int) -> np.random.Generator:
    return stream_rng(seed, STREAM_IMAGE, index, sub)


def _lesion_strength(cfg: PhantomConfig, rec: ImageRecord) -> float:
    attrs = {"sex": rec.sex, "race": rec.race, "insurance": rec.insurance, "site": rec.site}
    return cfg.sites[rec.site].lesion_contrast * _multiplier(cfg.demographics.lesion_contrast_multiplier, attrs)


def _enlargement(cfg: PhantomConfig, rec: ImageRecord, seed: int, strength: float) -> float:
    if not rec.labels["Cardiomegaly"]:
        return 1.0
    visibility = min(2.0, cfg.findings.contrast["Cardiomegaly"] * strength)
    return 1.0 + 0.32 * visibility * _rng(seed, rec.index, _S_TASK["Cardiomegaly"]).uniform(0.8, 1.25)


def _anatomy(cfg: PhantomConfig, rec: ImageRecord, seed: int, enlargement: float) -> tuple[anatomy.Anatomy, anatomy.AnatomyLayers]:
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


def render_variants(cfg: PhantomConfig, rec: ImageRecord, seed: int, removes: Mapping[str, frozenset[str]]) -> dict[str, RenderedImage]:
    """Render several versions of one image, sharing the work they have in common.

    Args:
        cfg: Generator config.
        rec: The image's record.
        seed: Master seed.
        removes: ``{name: names to leave out}``, e.g. ``{"original": frozenset(),
            "no_tube": frozenset({"Chest Tube"})}``.

    Returns:
        ``{name: RenderedImage}``; each equals ``render_record(..., remove=removes[name])``.
    """
    strength = _lesion_strength(cfg, rec)
    enlargement = _enlargement(cfg, rec, seed, strength)
    bases: dict[float, tuple[anatomy.Anatomy, anatomy.AnatomyLayers]] = {}
    drawn_cache: dict[tuple[float, frozenset[str]], tuple[dict[str, list[list[list[float]]]], np.ndarray]] = {}
    out: dict[str, RenderedImage] = {}
    for name, remove in removes.items():
        drawn = frozenset(t for t in rec.positives if t not in remove)
        heart = enlargement if "Cardiomegaly" in drawn else 1.0
        if heart not in bases:
            bases[heart] = _anatomy(cfg, rec, seed, heart)
        anat, layers = bases[heart]
        if (heart, drawn) not in drawn_cache:
            att = layers.attenuation.copy()
            polygons = _draw_findings(cfg, rec, seed, anat, layers, att, set(drawn), strength)
            drawn_cache[(heart, drawn)] = (polygons, att)
        polygons, att_findings = drawn_cache[(heart, drawn)]
        att = att_findings.copy()
        spurious = _draw_spurious(cfg, rec, seed, anat, att, frozenset(remove))
        image = _expose(cfg, rec, seed, att)
        out[name] = RenderedImage(image=image, polygons=polygons, spurious=spurious, record=rec, removed=frozenset(remove))
    return out


def render_record(cfg: PhantomConfig, rec: ImageRecord, seed: int, *, remove: frozenset[str] = frozenset()) -> RenderedImage:
    """Render the image of one cohort record.

    Args:
        cfg: Generator config.
        rec: The image's record.
        seed: Master seed.
        remove: Task / object names to leave out (counterfactuals).

    Returns:
        The image with its polygons and spurious masks.
    """
    return render_variants(cfg, rec, seed, {"image": frozenset(remove)})["image"]


def _draw_findings(cfg: PhantomConfig, rec: ImageRecord, seed: int, anat: anatomy.Anatomy, layers: anatomy.AnatomyLayers, att: np.ndarray, drawn: set[str], strength: float) -> dict[str, list[list[list[float]]]]:
    size = cfg.image_size
    ctx = findings.FindingContext(anat, layers, size, cfg.findings.min_thickness_at_96 * size / 96.0)
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
        if not polys:
            continue
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


def _draw_spurious(cfg: PhantomConfig, rec: ImageRecord, seed: int, anat: anatomy.Anatomy, att: np.ndarray, remove: frozenset[str]) -> dict[str, np.ndarray]:
    size = cfg.image_size
    empty = np.zeros((size, size), np.uint8)
    out = dict.fromkeys(SPURIOUS_OBJECTS, empty)
    if rec.support_device and "Support Device" not in remove:
        out["Support Device"] = devices.draw_support_devices(att, anat.frame, _rng(seed, rec.index, _S_DEVICES))
    if rec.tube and "Chest Tube" not in remove:
        rng = _rng(seed, rec.index, _S_TUBE)
        path = devices.tube_path(anat.frame, rng, rec.tube_side)
        out["Chest Tube"] = devices.draw_tube(att, path, max(1.0, cfg.tube.width_frac * size), cfg.tube.contrast, rng)
    if rec.marker and "Laterality Marker" not in remove:
        site = cfg.sites[rec.site]
        out["Laterality Marker"] = devices.draw_marker(att, site.marker, site.marker_corner, _rng(seed, rec.index, _S_MARKER))
    return out


def _expose(cfg: PhantomConfig, rec: ImageRecord, seed: int, att: np.ndarray) -> np.ndarray:
    """Blur, display curve (site and image exposure / contrast) and noise -> uint8."""
    size = cfg.image_size
    app = cfg.appearance
    site = cfg.sites[rec.site]
    rng = _rng(seed, rec.index, _S_APPEARANCE)
    sigma = rng.uniform(*app.blur) * size * site.blur
    gamma = rng.uniform(*app.contrast)
    exposure = rng.uniform(-app.exposure, app.exposure) + site.brightness
    noise_sd = rng.uniform(*app.noise) * site.noise
    img = soften(att, sigma)
    img = np.clip(1.3 * site.contrast * (img - 0.02) + exposure, 0.0, 1.0) ** gamma
    noise_rng = _rng(seed, rec.index, _S_NOISE)
    white = noise_rng.standard_normal((size, size), dtype=np.float32)
    mottle = smooth_field(noise_rng, size, max(4, size // 16))
    img = img + noise_sd * (np.sqrt(img + 0.05) * white + 0.5 * mottle)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_image(cfg: PhantomConfig, index: int, seed: int, *, remove: frozenset[str] = frozenset()) -> RenderedImage:
    """Render image ``index`` of the phantom defined by ``cfg`` and ``seed``.

    Args:
        cfg: Generator config.
        index: Image index (0 <= index < cfg.n_images).
        seed: Master seed.
        remove: Names to leave out: any of ``PHANTOM_TASKS`` and ``SPURIOUS_OBJECTS``.

    Returns:
        The rendered image; identical for the same arguments.

    Raises:
        ParameterError: ``index`` is out of range or ``remove`` names something unknown.
    """
    if not 0 <= index < cfg.n_images:
        raise ParameterError("index", f"expected 0 <= index < {cfg.n_images}, got {index}")
    unknown = sorted(set(remove) - REMOVABLE)
    if unknown:
        raise ParameterError("remove", f"unknown name(s) {unknown}; expected some of {sorted(REMOVABLE)}")
    return render_record(cfg, cohort_for(cfg, seed)[index], seed, remove=frozenset(remove))


