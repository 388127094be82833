"""The cohort: patient-disjoint splits, configured rates, per-split confounding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.phantom import PhantomConfig, build_cohort
from cxr_spurious.phantom import cohort as cohort_module
from cxr_spurious.phantom.cohort import cohort_for, split_counts
from cxr_spurious.phantom.config import TubeConfig

N = 4000  # cohort only (no pixels): fast


@pytest.fixture(scope="module")
def cohort() -> tuple:
    cfg = PhantomConfig.from_dict(
        {"n_images": N, "demographics": {"prevalence_multiplier": {"race": {"Black": 1.5}}}}
    )
    return cfg, build_cohort(cfg, seed=11)


def _close(observed: float, expected: float, n: int, z: float = 4.5) -> bool:
    """Within z binomial standard errors."""
    return abs(observed - expected) <= z * np.sqrt(max(expected * (1 - expected), 1e-4) / n)


def test_counts_ids_and_studies(cohort: tuple) -> None:
    cfg, records = cohort
    assert len(records) == N
    assert [r.index for r in records] == list(range(N))
    assert len({r.image_id for r in records}) == N
    assert len({r.study_id for r in records}) == N
    per_patient = np.bincount([r.patient for r in records])[1:]
    assert per_patient.max() == len(cfg.studies_per_patient) and per_patient.min() >= 1
    share_single = float(np.mean(per_patient == 1))
    assert _close(share_single, cfg.studies_per_patient[0], len(per_patient))
    assert records[0].image_id == "patient00001_study1_view1_frontal"


def test_splits_are_patient_disjoint_with_configured_fractions(cohort: tuple) -> None:
    cfg, records = cohort
    split_of: dict[int, set[str]] = {}
    for r in records:
        split_of.setdefault(r.patient, set()).add(r.split)
    assert all(len(s) == 1 for s in split_of.values())
    counts = split_counts(records)
    for split, frac in cfg.split_fractions.items():
        assert _close(counts[split] / N, frac, N, z=6)


def test_tube_confounding_per_split(cohort: tuple) -> None:
    cfg, records = cohort
    for split in ("train", "val", "test"):
        for ptx, table in ((1, cfg.tube.p_given_ptx), (0, cfg.tube.p_given_no_ptx)):
            rows = [r.tube for r in records if r.split == split and r.labels["Pneumothorax"] == ptx]
            assert _close(float(np.mean(rows)), table[split], len(rows)), (
                split,
                ptx,
                np.mean(rows),
            )


def test_tube_on_ptx_side(cohort: tuple) -> None:
    _, records = cohort
    tubes = [r for r in records if r.tube and r.labels["Pneumothorax"]]
    assert all(r.tube_side == r.ptx_side for r in tubes)
    random_cfg = PhantomConfig.from_dict({"n_images": 2000, "tube": {"side": "random"}})
    random_tubes = [r for r in build_cohort(random_cfg, 2) if r.tube and r.labels["Pneumothorax"]]
    agree = np.mean([r.tube_side == r.ptx_side for r in random_tubes])
    assert _close(float(agree), 0.5, len(random_tubes))


def test_prevalence_and_group_multipliers(cohort: tuple) -> None:
    cfg, records = cohort
    for task, base in cfg.prevalence.items():
        rows = [r.labels[task] for r in records if r.site == "A" and r.race != "Black"]
        assert _close(float(np.mean(rows)), base, len(rows)), task
        black_a = [r.labels[task] for r in records if r.site == "A" and r.race == "Black"]
        assert _close(float(np.mean(black_a)), min(1.0, base * 1.5), len(black_a)), task
        site_c = [r.labels[task] for r in records if r.site == "C" and r.race != "Black"]
        assert _close(
            float(np.mean(site_c)), base * cfg.sites["C"].prevalence_multiplier, len(site_c)
        ), task


def test_group_shares(cohort: tuple) -> None:
    cfg, records = cohort
    patients = {r.patient: r for r in records}.values()
    n = len(patients)
    for attr, shares in (
        ("sex", cfg.demographics.sex),
        ("race", cfg.demographics.race),
        ("insurance", cfg.demographics.insurance),
        ("site", {k: s.share for k, s in cfg.sites.items()}),
    ):
        for group, share in shares.items():
            assert _close(
                float(np.mean([getattr(p, attr) == group for p in patients])), share, n
            ), (attr, group)
    ages = np.array([p.age_years for p in patients])
    assert ages.min() >= cfg.demographics.age_min and ages.max() <= cfg.demographics.age_max
    assert abs(ages.mean() - cfg.demographics.age_mean) < 2.0


def test_cohort_is_deterministic_and_seed_dependent() -> None:
    cfg = PhantomConfig.from_dict({"n_images": 300})
    assert build_cohort(cfg, 5) == build_cohort(cfg, 5)
    assert build_cohort(cfg, 5) != build_cohort(cfg, 6)


def test_group_order_is_part_of_the_fingerprint_and_the_cohort_cache_key() -> None:
    # The cohort draws sites and groups in the listed order: a config listing them in
    # another order is another data set, so it must not share the cohort_for cache entry.
    cfg = PhantomConfig.from_dict({"n_images": 40})
    sites = cfg.to_dict()["sites"]
    demo = cfg.to_dict()["demographics"]
    reordered = PhantomConfig.from_dict(
        {
            "n_images": 40,
            "sites": dict(reversed(list(sites.items()))),
            "demographics": {"race": dict(reversed(list(demo["race"].items())))},
        }
    )
    assert build_cohort(cfg, 0) != build_cohort(reordered, 0)
    assert cfg.fingerprint() != reordered.fingerprint()
    cohort_module._CACHE.clear()
    try:
        assert cohort_for(cfg, 0) == build_cohort(cfg, 0)
        assert cohort_for(reordered, 0) == build_cohort(reordered, 0)
    finally:
        cohort_module._CACHE.clear()


def test_the_order_of_a_multipliers_groups_is_not_part_of_the_fingerprint() -> None:
    # factors are looked up by group: listing the groups in another order is the same data
    # set (and shares the cohort cache entry); the order of sites and race groups is not
    def config(race_factors: dict, race: dict | None = None) -> PhantomConfig:
        demo = {"prevalence_multiplier": {"race": race_factors, "sex": {"F": 1.2}}}
        return PhantomConfig.from_dict(
            {"n_images": 200, "demographics": {**demo, **({"race": race} if race else {})}}
        )

    cfg = config({"Black": 1.5, "Asian": 0.5})
    same = config({"Asian": 0.5, "Black": 1.5})
    factors = (cfg.demographics.prevalence_multiplier, same.demographics.prevalence_multiplier)
    assert [list(f["race"]) for f in factors] == [["Black", "Asian"], ["Asian", "Black"]]
    assert cfg.fingerprint() == same.fingerprint()
    assert build_cohort(cfg, 3) == build_cohort(same, 3)
    race = dict(reversed(list(cfg.demographics.race.items())))
    other = config({"Black": 1.5, "Asian": 0.5}, race)
    assert other.fingerprint() != cfg.fingerprint()
    assert build_cohort(other, 3) != build_cohort(cfg, 3)


_NO_PTX = {"train": -3.0, "val": 0.1, "test": 0.5}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        # values from_dict refuses, in a config built without it (audit: build_cohort drew
        # every PTX image with a tube and none without from these tube probabilities)
        (
            {"tube": TubeConfig(p_given_ptx={"train": 7.0, "val": 0.9, "test": 0.5})},
            "ingestion.phantom.tube.p_given_ptx.train",
        ),
        (
            {"tube": TubeConfig(p_given_no_ptx=_NO_PTX)},
            "ingestion.phantom.tube.p_given_no_ptx.train",
        ),
        ({"image_size": 20}, "ingestion.phantom.image_size"),
        ({"n_images": "many"}, "ingestion.phantom.n_images"),
        (
            {"split_fractions": {"train": 0.5, "val": 0.5, "test": 0.5}},
            "ingestion.phantom.split_fractions",
        ),
        ({"prevalence": {"Pneumothorax": 0.5, "Edema": 0.2}}, "ingestion.phantom.prevalence.Edema"),
    ],
)
def test_build_cohort_checks_a_config_built_without_from_dict(change: dict, key: str) -> None:
    cfg = dataclasses.replace(PhantomConfig.tiny(), **change)
    with pytest.raises(ParameterError) as info:
        build_cohort(cfg, 0)
    assert info.value.key == key
    with pytest.raises(ParameterError) as info:
        cohort_for(cfg, 0)
    assert info.value.key == key
    with pytest.raises(ParameterError, match="expected a PhantomConfig"):
        build_cohort(cfg.to_dict(), 0)  # type: ignore[arg-type]


def test_a_valid_config_built_without_from_dict_gives_the_same_cohort() -> None:
    direct = dataclasses.replace(PhantomConfig(), n_images=30, image_size=64)
    assert build_cohort(direct, 2) == build_cohort(PhantomConfig.tiny(n_images=30), 2)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3", 2**32, None])
def test_a_bad_seed_is_refused_naming_it(seed: object) -> None:
    cfg = PhantomConfig.tiny()
    for draw in (build_cohort, cohort_for):
        with pytest.raises(ParameterError) as info:
            draw(cfg, seed)  # type: ignore[arg-type]
        assert info.value.key == "seed"
    assert build_cohort(cfg, 2**32 - 1) and build_cohort(cfg, 4.0) == build_cohort(cfg, 4)
