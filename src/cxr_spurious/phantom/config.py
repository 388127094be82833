"""Configuration of the phantom generator: one frozen dataclass with nested sections.

Every knob has a default that reproduces the project's default study (about 1,000 train,
300 val and 600 test images at 256 px, pneumothorax confounded with a chest tube in train
and val, independent in test). ``PhantomConfig.from_dict`` builds a config from a (possibly
partial, possibly nested) mapping such as ``params:ingestion.phantom``: missing keys keep
their defaults, unknown keys and bad values raise ``ParameterError`` naming the dotted key.

Mappings keyed by a fixed vocabulary (tasks, splits) are merged with the defaults; mappings
keyed by user-chosen names (sites, demographic groups, multipliers) replace them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr_spurious.errors import ParameterError, check_integer, check_number
from cxr_spurious.phantom.artefacts import ARTEFACT_KINDS, TUBE_KINDS
from cxr_spurious.sources.contract import SPLITS
from cxr_spurious.tasks import PHANTOM_TASKS

# Where the pipeline keeps these settings (``params:ingestion.phantom``): errors found while
# rendering name their key under it.
PIPELINE_KEY = "ingestion.phantom"
CORNERS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")
DEMOGRAPHIC_ATTRIBUTES: tuple[str, ...] = ("sex", "race", "insurance", "site")
COUNTERFACTUAL_RENDERS: tuple[str, ...] = ("no_tube", "no_lesion")

# Tasks drawn as exactly one instance, with the reason (``findings.max_instances`` must be 1).
_SINGLE_INSTANCE: dict[str, str] = {
    "Pneumothorax": "one pneumothorax on the record's ptx_side, the side the chest tube follows",
    "Cardiomegaly": "cardiomegaly is the one enlarged heart",
}

# Largest findings.min_thickness_at_96 for which a pneumothorax fits in every lung at the
# default appearance.body_scale, at every image_size (measured over 32..2048 px; beyond it a
# lung's room runs out, first in small images whose outlines are a few pixels thick).
MAX_MIN_THICKNESS_AT_96 = 10.0

# Per-task defaults: (base prevalence, largest number of instances).
_TASK_DEFAULTS: dict[str, tuple[float, int]] = {
    "Pneumothorax": (0.5, 1),
    "Pleural Effusion": (0.2, 2),
    "Lung Lesion": (0.2, 4),
    "Cardiomegaly": (0.15, 1),
    "Airspace Opacity": (0.2, 3),
}


@dataclass(frozen=True)
class TubeConfig:
    """The chest tube, the shortcut correlated with Pneumothorax.

    Attributes:
        p_given_ptx: P(tube | Pneumothorax positive) per split.
        p_given_no_ptx: P(tube | Pneumothorax negative) per split. The defaults confound
            train and val (0.9 / 0.1) and make the tube independent of PTX in test (0.5).
        side: ``"ptx"`` puts the tube on the side of the pneumothorax (random side for a
            PTX-negative image); ``"random"`` picks either side at random.
        width_frac: Tube width as a fraction of the image size (0.02 = 2 px at 96 px).
        contrast: Brightness of the radiopaque stripe, in attenuation units.
    """

    p_given_ptx: dict[str, float] = field(
        default_factory=lambda: {"train": 0.9, "val": 0.9, "test": 0.5}
    )
    p_given_no_ptx: dict[str, float] = field(
        default_factory=lambda: {"train": 0.1, "val": 0.1, "test": 0.5}
    )
    side: str = "ptx"
    width_frac: float = 0.02
    contrast: float = 0.3


@dataclass(frozen=True)
class FindingsConfig:
    """Pathology appearance and size.

    Attributes:
        contrast: Visibility multiplier per task (1 = moderate, 0.5 = subtle, 2 = strong).
            For Cardiomegaly it scales how much the heart is enlarged.
        max_instances: Largest number of instances per positive task (at least one is drawn).
            Pleural Effusion has at most one per side (values above 2 act as 2). Pneumothorax
            is one instance on the record's ``ptx_side`` (the side the chest tube follows)
            and Cardiomegaly one heart: both must be 1.
        min_thickness_at_96: Smallest thickness (px) of any lesion mask once the image is
            resized to 96 px; sizes are scaled from it to the written resolution. At most
            ``MAX_MIN_THICKNESS_AT_96`` (10), the largest for which a pneumothorax fits in
            every lung at the default ``appearance.body_scale``. Other findings need less:
            in 300 images at the default body_scale every Lung Lesion and Airspace Opacity
            fitted up to 6.5 (64-224 px), while at 7 two to six opacities had no room.
            Smaller bodies hold less (about 5 at body_scale 0.4). An image whose positive
            finding has no room stops the generation with a ParameterError naming this
            key, the finding and the image: a label is never silently turned negative.
    """

    contrast: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHANTOM_TASKS, 1.0))
    max_instances: dict[str, int] = field(
        default_factory=lambda: {t: n for t, (_, n) in _TASK_DEFAULTS.items()}
    )
    min_thickness_at_96: float = 5.5


@dataclass(frozen=True)
class SiteConfig:
    """One acquisition site: its share of patients, image appearance and marker style.

    Attributes:
        share: Fraction of patients from this site (all shares sum to 1).
        brightness: Additive intensity offset of the site's detector (about -0.1..0.1).
        contrast: Multiplicative gain of the site's display curve (about 0.8..1.2).
        noise: Multiplier of the image noise level.
        blur: Multiplier of the image blur.
        lesion_contrast: Multiplier of every lesion's visibility at this site (a site with
            subtler lesions is harder, so a model can under-serve it).
        prevalence_multiplier: Multiplier of every task's prevalence at this site.
        marker: Text of the site's laterality marker token ("L", "R", "PORT", ...; 1-6
            printable ASCII characters, not all spaces).
        marker_corner: Corner where the marker is drawn.
        marker_prob: Probability that an image of this site carries the marker.
    """

    share: float = 1.0
    brightness: float = 0.0
    contrast: float = 1.0
    noise: float = 1.0
    blur: float = 1.0
    lesion_contrast: float = 1.0
    prevalence_multiplier: float = 1.0
    marker: str = "L"
    marker_corner: str = "top_right"
    marker_prob: float = 0.9


def _default_sites() -> dict[str, SiteConfig]:
    return {
        "A": SiteConfig(
            share=0.6,
            brightness=0.0,
            contrast=1.0,
            noise=1.0,
            blur=1.0,
            marker="L",
            marker_corner="top_right",
            marker_prob=0.9,
        ),
        "B": SiteConfig(
            share=0.3,
            brightness=0.06,
            contrast=0.9,
            noise=1.4,
            blur=1.2,
            marker="R",
            marker_corner="top_left",
            marker_prob=0.9,
        ),
        "C": SiteConfig(
            share=0.1,
            brightness=-0.05,
            contrast=1.1,
            noise=1.8,
            blur=1.5,
            lesion_contrast=0.7,
            prevalence_multiplier=1.2,
            marker="PORT",
            marker_corner="bottom_right",
            marker_prob=0.8,
        ),
    }


@dataclass(frozen=True)
class DemographicsConfig:
    """Patient attributes and how they change prevalence and lesion visibility.

    Attributes:
        sex: Share of each sex code (``M`` / ``F``).
        race: Share of each race group.
        insurance: Share of each insurance group.
        age_mean: Mean age in years (normal, clipped to [age_min, age_max]); must lie in
            [age_min, age_max].
        age_sd: Standard deviation of age.
        age_min: Youngest age.
        age_max: Oldest age.
        prevalence_multiplier: ``{attribute: {group: factor}}`` multiplying every task's
            prevalence for that group (attributes: sex, race, insurance, site).
        lesion_contrast_multiplier: ``{attribute: {group: factor}}`` multiplying lesion
            visibility for that group (< 1 makes the group's lesions subtler).
    """

    sex: dict[str, float] = field(default_factory=lambda: {"M": 0.5, "F": 0.5})
    race: dict[str, float] = field(
        default_factory=lambda: {"White": 0.6, "Black": 0.15, "Asian": 0.15, "Other": 0.1}
    )
    insurance: dict[str, float] = field(
        default_factory=lambda: {"Private": 0.45, "Medicare": 0.35, "Medicaid": 0.2}
    )
    age_mean: float = 58.0
    age_sd: float = 17.0
    age_min: int = 18
    age_max: int = 90
    prevalence_multiplier: dict[str, dict[str, float]] = field(default_factory=dict)
    lesion_contrast_multiplier: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class AppearanceConfig:
    """Per-image variation (drawn uniformly within these ranges).

    Attributes:
        body_scale: Range of the thorax half-width as a fraction of the half image size.
        shift: Largest centre shift as a fraction of the image size.
        rotation_deg: Largest rotation in degrees.
        exposure: Largest additive exposure change.
        contrast: Range of the display gamma (< 1 brightens, > 1 darkens).
        noise: Range of the noise standard deviation (intensity units).
        blur: Range of the blur sigma as a fraction of the image size.
    """

    body_scale: tuple[float, float] = (0.78, 0.9)
    shift: float = 0.03
    rotation_deg: float = 5.0
    exposure: float = 0.05
    contrast: tuple[float, float] = (0.85, 1.2)
    noise: tuple[float, float] = (0.015, 0.035)
    blur: tuple[float, float] = (0.001, 0.004)


@dataclass(frozen=True)
class DevicesConfig:
    """Other acquisition features.

    Attributes:
        p_support_device: Probability of support devices (ECG leads, a central line).
        p_ap: Probability that a view is AP (else PA); AP views are slightly magnified.
    """

    p_support_device: float = 0.25
    p_ap: float = 0.3


@dataclass(frozen=True)
class CounterfactualConfig:
    """Counterfactual renders (same seed, same noise, one element removed).

    Attributes:
        splits: Splits rendered (default the test split).
        renders: ``no_tube`` (without the chest tube) and/or ``no_lesion`` (without any
            pathology). Called ``variants`` before; that key is refused naming this one.
    """

    splits: tuple[str, ...] = ("test",)
    renders: tuple[str, ...] = COUNTERFACTUAL_RENDERS


@dataclass(frozen=True)
class MarkerArtefactConfig:
    """The ``marker_port`` artefact: a text marker outside the lung fields.

    Attributes:
        text: Marker text (1-6 printable ASCII characters, not all spaces).
        corner: Image corner it is drawn in (``top_left``, ...).
    """

    text: str = "PORT"
    corner: str = "top_left"


@dataclass(frozen=True)
class TextureArtefactConfig:
    """The ``faint_texture`` artefact: a low-contrast fine checker texture in one fixed disc.

    Attributes:
        contrast: Amplitude in attenuation units (0.02: about 1-2 grey levels mean absolute
            change inside the disc, peaks of about 6, under the image noise; barely visible).
        period: Period of the checker as a fraction of the image size (0.04 = 3.8 px at 96 px,
            so it survives the cache's downsampling).
        centre: Disc centre (x, y) as fractions of the image size (over the upper abdomen).
        radius: Disc radius as a fraction of the image size.
    """

    contrast: float = 0.02
    period: float = 0.04
    centre: tuple[float, float] = (0.3, 0.84)
    radius: float = 0.09


@dataclass(frozen=True)
class ArtefactsConfig:
    """Paired artefact renders for the shortcut sweep (``phantom/artefacts.py``).

    Every image of ``splits`` is also rendered WITH each artefact of ``kinds`` (written to
    ``counterfactuals/with_<kind>/`` with a ``masks.json`` of the artefact's exact masks),
    from the same random streams as the original. The originals must carry none of them:
    with a tube kind the tube probabilities of those splits must be 0, with ``marker_port``
    every site's ``marker_prob`` must be 0.

    Attributes:
        kinds: Artefact kinds (``ARTEFACT_KINDS``); empty (the default) renders none.
        splits: Splits whose images get the renders.
        marker_port: Text and corner of the ``marker_port`` artefact.
        faint_texture: Look and place of the ``faint_texture`` artefact.
    """

    kinds: tuple[str, ...] = ()
    splits: tuple[str, ...] = SPLITS
    marker_port: MarkerArtefactConfig = field(default_factory=MarkerArtefactConfig)
    faint_texture: TextureArtefactConfig = field(default_factory=TextureArtefactConfig)


@dataclass(frozen=True)
class HumanBenchmarkConfig:
    """The simulated second reader of the test split.

    Attributes:
        splits: Splits that get a human benchmark (empty to switch it off).
        boundary_jitter: Amplitude of the smooth boundary perturbation, as a fraction of
            the image size (0: the reader follows the true boundary).
        shift: Largest translation of each outline, as a fraction of the image size (0: no
            translation).
        p_miss: Probability of missing an instance, for instances smaller than
            ``small_area`` when the task has another instance.
        small_area: Area (fraction of the image) below which an instance may be missed.
        point_jitter: Jitter of the salient point, as a fraction of the image size (0: the
            deepest interior point).
    """

    splits: tuple[str, ...] = ("test",)
    boundary_jitter: float = 0.012
    shift: float = 0.008
    p_miss: float = 0.2
    small_area: float = 0.01
    point_jitter: float = 0.01


@dataclass(frozen=True)
class PhantomConfig:
    """Everything the phantom generator needs besides the seed.

    Attributes:
        n_images: Total number of images (one frontal view per study).
        image_size: Written resolution in pixels (square images).
        split_fractions: Share of patients per split (patient-disjoint, seeded).
        studies_per_patient: Probabilities of 1, 2, ... studies per patient.
        prevalence: Base prevalence of each task (before group multipliers).
        tube: Chest tube shortcut settings.
        findings: Pathology appearance.
        sites: Acquisition sites by name.
        demographics: Patient attributes.
        appearance: Per-image variation.
        devices: Support devices and view.
        counterfactuals: Counterfactual renders.
        human_benchmark: Simulated second reader.
        artefacts: Paired ``with_<kind>`` renders for the shortcut sweep (none by default).
    """

    n_images: int = 1900
    image_size: int = 256
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.53, "val": 0.16, "test": 0.31}
    )
    studies_per_patient: tuple[float, ...] = (0.6, 0.25, 0.15)
    prevalence: dict[str, float] = field(
        default_factory=lambda: {t: p for t, (p, _) in _TASK_DEFAULTS.items()}
    )
    tube: TubeConfig = field(default_factory=TubeConfig)
    findings: FindingsConfig = field(default_factory=FindingsConfig)
    sites: dict[str, SiteConfig] = field(default_factory=_default_sites)
    demographics: DemographicsConfig = field(default_factory=DemographicsConfig)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    counterfactuals: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    human_benchmark: HumanBenchmarkConfig = field(default_factory=HumanBenchmarkConfig)
    artefacts: ArtefactsConfig = field(default_factory=ArtefactsConfig)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None, *, key: str = "phantom") -> PhantomConfig:
        """Build and validate a config from a (partial) nested mapping.

        Args:
            params: Overrides of the defaults, e.g. ``{"n_images": 400, "tube": {"side":
                "random"}}``. ``None`` or ``{}`` gives the default config.
            key: Name of the mapping in error messages (``phantom.tube.side``).

        Returns:
            The validated config.

        Raises:
            ParameterError: an unknown key or a bad value, naming the dotted key.
        """
        if params is None:
            params = {}
        config = _build(cls, params, key)
        validate_config(config, key)
        return config

    @classmethod
    def tiny(cls, **overrides: Any) -> PhantomConfig:
        """A small, fast config for tests: 24 images at 64 px (overridable)."""
        return cls.from_dict({"n_images": 24, "image_size": 64, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able Python values."""
        return _plain(dataclasses.asdict(self))

    def fingerprint(self) -> str:
        """A short hash of the resolved config, sensitive to the order of mapping keys.

        The cohort draws sites and demographic groups in the order the user listed them
        (``sites``, ``demographics.sex`` / ``race`` / ``insurance``), so two configs that list
        the same groups in another order are different data sets and hash differently. The
        other keys come in a fixed order (dataclass fields, defaults of fixed vocabularies),
        except the ``{group: factor}`` maps of ``demographics.prevalence_multiplier`` and
        ``lesion_contrast_multiplier``: factors are looked up by group, so the order of a
        map's groups cannot change the data and is not hashed (the order of its attributes
        is: the factors are multiplied in that order).
        """
        plain = self.to_dict()
        demo = plain["demographics"]
        for name in ("prevalence_multiplier", "lesion_contrast_multiplier"):
            demo[name] = {
                attr: dict(sorted(groups.items())) if isinstance(groups, Mapping) else groups
                for attr, groups in demo[name].items()
            }
        blob = json.dumps(plain)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- building

# Mappings whose keys are a fixed vocabulary: user values are merged into the defaults.
_MERGED_MAPPINGS = {
    "p_given_ptx",
    "p_given_no_ptx",
    "contrast",
    "max_instances",
    "prevalence",
    "split_fractions",
}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# Keys that were renamed: (section, old key) -> new key; the old key is refused naming the new.
_RENAMED_KEYS: dict[tuple[type, str], str] = {(CounterfactualConfig, "variants"): "renders"}


def _build(cls: type, params: Any, key: str) -> Any:
    """Instantiate dataclass ``cls`` from ``params`` over its defaults (recursively)."""
    if not isinstance(params, Mapping):
        raise ParameterError(
            key, f"expected a mapping of settings, got {type(params).__name__} {params!r:.60}"
        )
    for old in params:
        new = _RENAMED_KEYS.get((cls, str(old)))
        if new is not None:
            message = f"renamed to {key}.{new} (same values); see CHANGELOG.md"
            raise ParameterError(f"{key}.{old}", message)
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in params if k not in names)
    if unknown:
        raise ParameterError(
            f"{key}.{unknown[0]}", f"unknown key; valid keys are: {', '.join(sorted(names))}"
        )
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in params:
            continue
        sub = f"{key}.{f.name}"
        values[f.name] = _coerce(
            getattr(defaults, f.name), params[f.name], sub, merge=f.name in _MERGED_MAPPINGS
        )
    return cls(**values)


def _coerce(default: Any, value: Any, key: str, *, merge: bool = False) -> Any:
    """Convert ``value`` to the type of ``default``; raise ParameterError otherwise."""
    if dataclasses.is_dataclass(default):
        return _build(type(default), value, key)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParameterError(key, f"expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        return check_integer(value, key)  # ranges: validate_config
    if isinstance(default, float):
        return check_number(value, key)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ParameterError(key, f"expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ParameterError(key, f"expected a list, got {value!r}")
        proto = default[0] if default else ""
        return tuple(_coerce(proto, v, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(default, dict):
        if not isinstance(value, Mapping):
            raise ParameterError(key, f"expected a mapping, got {value!r:.60}")
        proto = next(iter(default.values())) if default else _mapping_prototype(key)
        out = dict(default) if merge else {}
        for k, v in value.items():
            if merge and k not in default:
                raise ParameterError(
                    f"{key}.{k}", f"unknown key; valid keys are: {', '.join(sorted(default))}"
                )
            out[str(k)] = _coerce(proto, v, f"{key}.{k}")
        return out
    raise ParameterError(
        key, f"unsupported setting type {type(default).__name__}"
    )  # pragma: no cover


def _mapping_prototype(key: str) -> Any:
    """Value prototype of mappings whose default is empty."""
    if key.endswith("multiplier"):
        return {"": 1.0}
    return 1.0  # pragma: no cover


# --------------------------------------------------------------------------- validation


def _check_range(value: float, key: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
    if not (lo < value <= hi if lo_open else lo <= value <= hi):
        bracket = "(" if lo_open else "["
        raise ParameterError(key, f"expected a value in {bracket}{lo}, {hi}], got {value}")


def _check_ranges(section: Any, key: str, bounds: Mapping[str, tuple[float, float]]) -> None:
    """``_check_range`` of each ``{attribute: (low, high)}`` of a config section."""
    for attr, (lo, hi) in bounds.items():
        _check_range(getattr(section, attr), f"{key}.{attr}", lo, hi)


def _check_shares(
    shares: Mapping[str, float], key: str, share_key: Callable[[str], str] | None = None
) -> None:
    """Shares in [0, 1] summing to 1; ``share_key(name)`` is the key of one share (default
    ``{key}.{name}``), ``key`` that of the whole mapping (named when the sum is off)."""
    if not shares:
        raise ParameterError(key, "expected at least one group")
    for name, share in shares.items():
        _check_range(share, share_key(name) if share_key else f"{key}.{name}", 0.0, 1.0)
    total = sum(shares.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ParameterError(key, f"shares must sum to 1, got {total:.6g} from {dict(shares)}")


def _check_pair(pair: tuple[float, ...], key: str, lo: float, hi: float) -> None:
    if len(pair) != 2 or not (lo <= pair[0] <= pair[1] <= hi):
        raise ParameterError(
            key, f"expected [low, high] with {lo} <= low <= high <= {hi}, got {list(pair)}"
        )


def validate_config(cfg: PhantomConfig, key: str = "phantom") -> None:
    """Check ranges and cross-field consistency of a config.

    Raises:
        ParameterError: naming the dotted key and what was expected.
    """
    if cfg.n_images < 1:
        raise ParameterError(f"{key}.n_images", f"expected a positive integer, got {cfg.n_images}")
    if not 32 <= cfg.image_size <= 2048:
        raise ParameterError(f"{key}.image_size", f"expected 32..2048 pixels, got {cfg.image_size}")
    _check_shares(cfg.split_fractions, f"{key}.split_fractions")
    if not cfg.studies_per_patient:
        raise ParameterError(
            f"{key}.studies_per_patient", "expected probabilities of 1, 2, ... studies"
        )
    _check_shares(
        {str(i + 1): p for i, p in enumerate(cfg.studies_per_patient)}, f"{key}.studies_per_patient"
    )
    for task, p in cfg.prevalence.items():
        _check_range(p, f"{key}.prevalence.{task}", 0.0, 1.0)
    for name in ("p_given_ptx", "p_given_no_ptx"):
        for split, p in getattr(cfg.tube, name).items():
            _check_range(p, f"{key}.tube.{name}.{split}", 0.0, 1.0)
    if cfg.tube.side not in ("ptx", "random"):
        raise ParameterError(
            f"{key}.tube.side", f"expected 'ptx' or 'random', got {cfg.tube.side!r}"
        )
    _check_range(cfg.tube.width_frac, f"{key}.tube.width_frac", 0.0, 0.1, lo_open=True)
    _check_range(cfg.tube.contrast, f"{key}.tube.contrast", 0.0, 2.0)
    for task, c in cfg.findings.contrast.items():
        _check_range(c, f"{key}.findings.contrast.{task}", 0.0, 5.0)
    for task, n in cfg.findings.max_instances.items():
        _check_range(n, f"{key}.findings.max_instances.{task}", 1, 8)
        if task in _SINGLE_INSTANCE and n != 1:
            why = _SINGLE_INSTANCE[task]
            raise ParameterError(
                f"{key}.findings.max_instances.{task}", f"must be 1 ({why}); got {n}"
            )
    thickness_key = f"{key}.findings.min_thickness_at_96"
    if not 1.0 <= cfg.findings.min_thickness_at_96 <= MAX_MIN_THICKNESS_AT_96:
        message = (
            f"expected a value in [1.0, {MAX_MIN_THICKNESS_AT_96}] (thicker pneumothoraces do"
            f" not fit in every lung), got {cfg.findings.min_thickness_at_96}"
        )
        raise ParameterError(thickness_key, message)
    for name, site in cfg.sites.items():
        if not isinstance(site, SiteConfig):
            raise ParameterError(f"{key}.sites.{name}", "expected a mapping of site settings")
    shares = {name: site.share for name, site in cfg.sites.items()}
    _check_shares(shares, f"{key}.sites", lambda name: f"{key}.sites.{name}.share")
    for name, site in cfg.sites.items():
        skey = f"{key}.sites.{name}"
        _check_range(site.brightness, f"{skey}.brightness", -0.5, 0.5)
        for attr in ("contrast", "noise", "blur", "lesion_contrast", "prevalence_multiplier"):
            _check_range(getattr(site, attr), f"{skey}.{attr}", 0.0, 5.0)
        _check_marker(site.marker, site.marker_corner, f"{skey}.marker", f"{skey}.marker_corner")
        _check_range(site.marker_prob, f"{skey}.marker_prob", 0.0, 1.0)
    demo = cfg.demographics
    for attr in ("sex", "race", "insurance"):
        _check_shares(getattr(demo, attr), f"{key}.demographics.{attr}")
    unknown_sex = sorted(set(demo.sex) - {"M", "F"})
    if unknown_sex:
        raise ParameterError(
            f"{key}.demographics.sex", f"expected codes 'M' / 'F', got {unknown_sex}"
        )
    if not demo.age_min <= demo.age_max or demo.age_min < 0 or demo.age_max > 120:
        raise ParameterError(
            f"{key}.demographics.age_min",
            f"expected 0 <= age_min <= age_max <= 120, got {demo.age_min}..{demo.age_max}",
        )
    _check_range(demo.age_mean, f"{key}.demographics.age_mean", demo.age_min, demo.age_max)
    _check_range(demo.age_sd, f"{key}.demographics.age_sd", 0.0, 60.0)
    groups = {"sex": demo.sex, "race": demo.race, "insurance": demo.insurance, "site": cfg.sites}
    for name in ("prevalence_multiplier", "lesion_contrast_multiplier"):
        for attr, mults in getattr(demo, name).items():
            mkey = f"{key}.demographics.{name}.{attr}"
            if attr not in groups:
                raise ParameterError(
                    mkey, f"unknown attribute; expected one of {', '.join(DEMOGRAPHIC_ATTRIBUTES)}"
                )
            for group, factor in mults.items():
                if group not in groups[attr]:
                    raise ParameterError(
                        f"{mkey}.{group}",
                        f"unknown {attr} group; expected one of {', '.join(sorted(groups[attr]))}",
                    )
                _check_range(factor, f"{mkey}.{group}", 0.0, 10.0)
    app = cfg.appearance
    pairs = {
        "body_scale": (0.4, 1.0),
        "contrast": (0.3, 3.0),
        "noise": (0.0, 0.3),
        "blur": (0.0, 0.02),
    }
    for attr, (lo, hi) in pairs.items():
        _check_pair(getattr(app, attr), f"{key}.appearance.{attr}", lo, hi)
    scalars = {"shift": (0.0, 0.15), "rotation_deg": (0.0, 20.0), "exposure": (0.0, 0.3)}
    _check_ranges(app, f"{key}.appearance", scalars)
    probabilities = {"p_support_device": (0.0, 1.0), "p_ap": (0.0, 1.0)}
    _check_ranges(cfg.devices, f"{key}.devices", probabilities)
    for name in ("counterfactuals", "human_benchmark", "artefacts"):
        for split in getattr(cfg, name).splits:
            if split not in SPLITS:
                raise ParameterError(
                    f"{key}.{name}.splits",
                    f"unknown split {split!r}; expected some of {', '.join(SPLITS)}",
                )
    for render in cfg.counterfactuals.renders:
        if render not in COUNTERFACTUAL_RENDERS:
            known = ", ".join(COUNTERFACTUAL_RENDERS)
            message = f"unknown render {render!r}; expected some of {known}"
            raise ParameterError(f"{key}.counterfactuals.renders", message)
    _validate_artefacts(cfg, key)
    reader = {
        "boundary_jitter": (0.0, 0.1),
        "shift": (0.0, 0.1),
        "p_miss": (0.0, 1.0),
        "small_area": (0.0, 1.0),
        "point_jitter": (0.0, 0.1),
    }
    _check_ranges(cfg.human_benchmark, f"{key}.human_benchmark", reader)


def check_config(cfg: PhantomConfig, key: str = "phantom") -> PhantomConfig:
    """The checks of ``PhantomConfig.from_dict`` on a config handed to an entry point
    (``generate_phantom``, ``build_cohort``, ``render_image``), which may have been built
    without them (directly or with ``dataclasses.replace``): types, then the ranges of
    ``validate_config``, run on the config's ``to_dict``.

    Returns:
        ``cfg`` itself, unchanged.

    Raises:
        ParameterError: ``cfg`` is not a ``PhantomConfig``, or a value ``from_dict`` refuses,
            naming its dotted key under ``key``.
    """
    if not isinstance(cfg, PhantomConfig):
        message = f"expected a PhantomConfig (PhantomConfig.from_dict), got {type(cfg).__name__}"
        raise ParameterError(key, message)
    PhantomConfig.from_dict(cfg.to_dict(), key=key)
    return cfg


def _check_marker(text: str, corner: str, text_key: str, corner_key: str) -> None:
    if corner not in CORNERS:
        raise ParameterError(corner_key, f"expected one of {', '.join(CORNERS)}, got {corner!r}")
    if not 1 <= len(text) <= 6 or not text.isascii() or not text.isprintable():
        raise ParameterError(text_key, f"expected 1-6 printable ASCII characters, got {text!r}")
    if not text.strip():
        message = f"expected at least one visible character (spaces draw nothing), got {text!r}"
        raise ParameterError(text_key, message)


def _validate_artefacts(cfg: PhantomConfig, key: str) -> None:
    """Known, distinct kinds; sane texture and marker; originals free of the listed kinds."""
    art = cfg.artefacts
    akey = f"{key}.artefacts"
    for kind in art.kinds:
        if kind not in ARTEFACT_KINDS:
            known = ", ".join(ARTEFACT_KINDS)
            message = f"unknown artefact {kind!r}; expected some of {known}"
            raise ParameterError(f"{akey}.kinds", message)
    if len(set(art.kinds)) != len(art.kinds):
        raise ParameterError(f"{akey}.kinds", f"lists a kind twice: {list(art.kinds)}")
    marker, mkey = art.marker_port, f"{akey}.marker_port"
    _check_marker(marker.text, marker.corner, f"{mkey}.text", f"{mkey}.corner")
    tex = art.faint_texture
    tkey = f"{akey}.faint_texture"
    _check_range(tex.contrast, f"{tkey}.contrast", 0.0, 0.5, lo_open=True)
    _check_range(tex.period, f"{tkey}.period", 0.01, 0.25)
    _check_range(tex.radius, f"{tkey}.radius", 0.0, 0.5, lo_open=True)
    if len(tex.centre) != 2:
        message = f"expected [x, y] fractions of the image size, got {list(tex.centre)}"
        raise ParameterError(f"{tkey}.centre", message)
    for axis, value in zip("xy", tex.centre):
        _check_range(value, f"{tkey}.centre.{axis}", 0.0, 1.0)
    clean = "a sweep phantom's original images carry no artefact (the with_<kind> renders add it)"
    tube_kinds = sorted(TUBE_KINDS & set(art.kinds))
    if tube_kinds:
        for name in ("p_given_ptx", "p_given_no_ptx"):
            probs = getattr(cfg.tube, name)
            for split in art.splits:
                p = probs.get(split, 0.5)
                if p != 0.0:
                    message = f"must be 0 when {akey}.kinds lists {tube_kinds[0]}: {clean}; got {p}"
                    raise ParameterError(f"{key}.tube.{name}.{split}", message)
    if "marker_port" in art.kinds:
        for name, site in cfg.sites.items():
            if site.marker_prob != 0.0:
                got = site.marker_prob
                message = f"must be 0 when {akey}.kinds lists marker_port: {clean}; got {got}"
                raise ParameterError(f"{key}.sites.{name}.marker_prob", message)


def min_images_for_splits(cfg: PhantomConfig, key: str = "phantom") -> int:
    """Fewest ``n_images`` for which every split (train, val, test) surely gets a patient.

    The cohort draws 1..K studies per patient (``studies_per_patient``), so ``n`` images
    come from ``ceil(n / K)`` to ``n`` patients; ``assign_patient_splits`` gives split ``s``
    ``round(c_s * P) - round(c_{s-1} * P)`` of ``P`` patients (``c``: cumulative fractions).
    The result is the smallest ``n`` for which that is >= 1 for every split and every
    possible ``P``.

    Raises:
        ParameterError: a split has a zero fraction (it could never get a patient).
    """
    fractions = [float(cfg.split_fractions.get(s, 0.0)) for s in SPLITS]
    for split, fraction in zip(SPLITS, fractions):
        if fraction <= 0:
            raise ParameterError(
                f"{key}.split_fractions.{split}",
                f"must be > 0 (the study needs train, val and test patients), got {fraction}",
            )
    k_max = max(i + 1 for i, p in enumerate(cfg.studies_per_patient) if p > 0)
    cumulative = np.cumsum(fractions)

    def every_split_gets_one(patients: int) -> bool:
        bounds = np.round(cumulative * patients).astype(int)
        return bool(np.all(np.diff(np.concatenate([[0], bounds])) >= 1))

    # From fraction * P >= 2 on, rounding cannot empty a split; check every P below that.
    limit = math.ceil(2 / min(fractions)) + 1
    failing = [p for p in range(1, limit + 1) if not every_split_gets_one(p)]
    min_patients = max(failing) + 1 if failing else 1
    return (min_patients - 1) * k_max + 1
