"""``cohort_for``'s cache is keyed by the config's fingerprint and the seed: a second seed
of the same config gets its own cohort (findings, tube, site, demographics, split), never
the first seed's cached one (the render noise alone would still change the pixels)."""

from __future__ import annotations

from cxr_spurious.phantom import PhantomConfig, build_cohort
from cxr_spurious.phantom import cohort as cohort_module
from cxr_spurious.phantom.cohort import cohort_for
from cxr_spurious.phantom.render import render_image


def test_the_cohort_cache_is_per_seed() -> None:
    cfg = PhantomConfig.tiny(n_images=40)
    cohort_module._CACHE.clear()
    first = cohort_for(cfg, 0)
    second = cohort_for(cfg, 1)  # same config: only the seed differs
    assert first == build_cohort(cfg, 0)
    assert second == build_cohort(cfg, 1)
    assert second != first  # the two seeds draw different cohorts
    assert cohort_for(cfg, 0) == first  # and the cache still returns seed 0's on a hit


def test_render_image_of_a_second_seed_uses_that_seeds_records() -> None:
    cfg = PhantomConfig.tiny(n_images=24)
    cohort_module._CACHE.clear()
    fresh = render_image(cfg, 5, 1)  # seed 1 first: nothing cached
    cohort_module._CACHE.clear()
    render_image(cfg, 5, 0)  # seed 0 cached
    again = render_image(cfg, 5, 1)
    assert (again.image == fresh.image).all()
    assert again.polygons == fresh.polygons
