"""The cohort: patients, studies, splits, labels and shortcut assignment, one record per image.

Everything that couples images (patient-level attributes, patient-disjoint splits, the
per-split tube confounding) is drawn here, once, from the master seed. Rendering then
works image by image from ``ImageRecord`` and seeds derived from (master seed, index), so
the pixels do not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cxr_spurious.phantom.config import PIPELINE_KEY, PhantomConfig, check_config
from cxr_spurious.sources.contract import SPLITS, assign_patient_splits
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.tasks import PHANTOM_TASKS

# Stream ids mixed into numpy SeedSequences: (master seed, stream, index...).
STREAM_COHORT = 1
STREAM_SPLIT = 2
STREAM_PATIENT = 3
STREAM_IMAGE = 4


def stream_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A generator for one named random stream, independent of every other stream.

    Args:
        seed: The master seed.
        stream: Stream id (one of the ``STREAM_*`` constants or a sub-stream number).
        *keys: Further integers (patient number, image index, sub-stream).

    Returns:
        A fresh ``np.random.Generator``; the same arguments give the same numbers.
    """
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, stream, *map(int, keys)])
    )


@dataclass(frozen=True)
class ImageRecord:
    """Everything about one image that is decided before rendering.

    Attributes:
        index: Row number in the cohort (0-based); seeds derive from it.
        patient: Patient number (1-based; ``patient00001``).
        study: Study number within the patient (1-based).
        split: ``train`` / ``val`` / ``test``.
        sex: ``M`` / ``F``.
        age_years: Age at this study.
        race: Race group.
        insurance: Insurance group.
        site: Acquisition site name.
        view: ``PA`` / ``AP``.
        labels: ``{task: 0/1}`` for every phantom task.
        tube: Chest tube drawn (0/1).
        tube_side: ``-1`` image left (patient right), ``+1`` image right.
        ptx_side: Side of the pneumothorax (same convention; random when PTX-negative).
        marker: Laterality marker drawn (0/1).
        support_device: ECG leads / central line drawn (0/1).
    """

    index: int
    patient: int
    study: int
    split: str
    sex: str
    age_years: int
    race: str
    insurance: str
    site: str
    view: str
    labels: Mapping[str, int]
    tube: int
    tube_side: int
    ptx_side: int
    marker: int
    support_device: int

    @property
    def patient_id(self) -> str:
        """CheXpert-style patient id, e.g. ``patient00001``."""
        return f"patient{self.patient:05d}"

    @property
    def study_id(self) -> str:
        """Study id, unique across patients: ``patient00001_study1``."""
        return f"{self.patient_id}_study{self.study}"

    @property
    def rel_path(self) -> str:
        """Image path relative to the output folder."""
        return f"images/{self.patient_id}/study{self.study}/view1_frontal.png"

    @property
    def image_id(self) -> str:
        """CheXlocalize id: the path below ``images/`` joined by '_' without extension."""
        return f"{self.patient_id}_study{self.study}_view1_frontal"

    @property
    def positives(self) -> tuple[str, ...]:
        """Positive tasks in ``PHANTOM_TASKS`` order."""
        return tuple(t for t in PHANTOM_TASKS if self.labels.get(t, 0))


def _choice(rng: np.random.Generator, shares: Mapping[str, float], size: int) -> np.ndarray:
    names = list(shares)
    probs = np.array([shares[n] for n in names], dtype=float)
    return np.array(names, dtype=object)[rng.choice(len(names), size=size, p=probs / probs.sum())]


def _studies(cfg: PhantomConfig, rng: np.random.Generator) -> list[int]:
    """Number of studies of each patient, truncated so that they add up to ``n_images``."""
    probs = np.asarray(cfg.studies_per_patient, dtype=float)
    counts: list[int] = []
    total = 0
    while total < cfg.n_images:
        k = int(rng.choice(len(probs), p=probs / probs.sum())) + 1
        k = min(k, cfg.n_images - total)
        counts.append(k)
        total += k
    return counts


def _multiplier(table: Mapping[str, Mapping[str, float]], attrs: Mapping[str, str]) -> float:
    factor = 1.0
    for attr, groups in table.items():
        factor *= float(groups.get(attrs[attr], 1.0))
    return factor


def build_cohort(cfg: PhantomConfig, seed: int) -> tuple[ImageRecord, ...]:
    """Draw the whole cohort for a config and master seed.

    Args:
        cfg: Generator config (checked as ``PhantomConfig.from_dict`` checks it).
        seed: Master seed, an integer in ``[0, 2**32 - 1]``.

    Returns:
        One ``ImageRecord`` per image, ordered by patient then study.

    Raises:
        ParameterError: a config value ``PhantomConfig.from_dict`` refuses (its key under
            ``ingestion.phantom``), or a seed that is not such an integer (``seed``).
    """
    check_config(cfg, PIPELINE_KEY)
    seed = check_seed(seed, "seed")
    rng = stream_rng(seed, STREAM_COHORT)
    counts = _studies(cfg, rng)
    n_pat = len(counts)
    demo = cfg.demographics
    sex = _choice(rng, demo.sex, n_pat)
    race = _choice(rng, demo.race, n_pat)
    insurance = _choice(rng, demo.insurance, n_pat)
    site = _choice(rng, {k: s.share for k, s in cfg.sites.items()}, n_pat)
    age0 = np.clip(
        np.round(rng.normal(demo.age_mean, demo.age_sd, n_pat)), demo.age_min, demo.age_max
    ).astype(int)
    patient_ids = [f"patient{p + 1:05d}" for p in range(n_pat)]
    split_of = assign_patient_splits(
        patient_ids, cfg.split_fractions, seed=int(stream_rng(seed, STREAM_SPLIT).integers(2**31))
    )
    records: list[ImageRecord] = []
    index = 0
    for p in range(n_pat):
        attrs = {
            "sex": str(sex[p]),
            "race": str(race[p]),
            "insurance": str(insurance[p]),
            "site": str(site[p]),
        }
        prev_mult = (
            _multiplier(demo.prevalence_multiplier, attrs)
            * cfg.sites[attrs["site"]].prevalence_multiplier
        )
        split = split_of[patient_ids[p]]
        age = int(age0[p])
        for study in range(1, counts[p] + 1):
            labels = {
                t: int(rng.random() < min(1.0, cfg.prevalence[t] * prev_mult))
                for t in PHANTOM_TASKS
            }
            ptx = labels["Pneumothorax"]
            p_tube = (cfg.tube.p_given_ptx if ptx else cfg.tube.p_given_no_ptx).get(split, 0.5)
            tube = int(rng.random() < p_tube)
            ptx_side = int(rng.choice((-1, 1)))
            random_side = int(rng.choice((-1, 1)))
            tube_side = ptx_side if (cfg.tube.side == "ptx" and ptx) else random_side
            marker = int(rng.random() < cfg.sites[attrs["site"]].marker_prob)
            device = int(rng.random() < cfg.devices.p_support_device)
            view = "AP" if rng.random() < cfg.devices.p_ap else "PA"
            records.append(
                ImageRecord(
                    index=index,
                    patient=p + 1,
                    study=study,
                    split=split,
                    age_years=min(age, demo.age_max),
                    view=view,
                    labels=labels,
                    tube=tube,
                    tube_side=tube_side,
                    ptx_side=ptx_side,
                    marker=marker,
                    support_device=device,
                    **attrs,
                )
            )
            index += 1
            age += int(rng.integers(0, 2))
    return tuple(records)


_CACHE: dict[tuple[str, int], tuple[ImageRecord, ...]] = {}


def cohort_for(cfg: PhantomConfig, seed: int) -> tuple[ImageRecord, ...]:
    """``build_cohort`` with a small cache (rendering many images calls it repeatedly).

    The cache key is the config's fingerprint (its whole ``to_dict``) and the seed: an entry
    exists only for a config and seed ``build_cohort`` has checked, so a hit needs no check.

    Raises:
        ParameterError: as ``build_cohort``.
    """
    if not isinstance(cfg, PhantomConfig):
        check_config(cfg, PIPELINE_KEY)  # raises: not a config
    seed = check_seed(seed, "seed")
    key = (cfg.fingerprint(), seed)
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = build_cohort(cfg, seed)
    return _CACHE[key]


def split_counts(records: tuple[ImageRecord, ...]) -> dict[str, int]:
    """Number of images per split (every split listed)."""
    return {s: sum(r.split == s for r in records) for s in SPLITS}
