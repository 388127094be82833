"""The phantom request digest (``PhantomRequest.digest``, ``PhantomConfig.fingerprint``)
keeps the listed order of every demographic attribute (the order decides the cohort), and
includes ``PHANTOM_VERSION``: either way, a stale phantom folder would otherwise be kept as
up to date."""

from __future__ import annotations

import pytest

import cxr_spurious.phantom as phantom
from cxr_spurious.datasets.phantom_source import PhantomRequest
from cxr_spurious.phantom import PhantomConfig, build_cohort

BASE = {
    "n_images": 24,
    "image_size": 32,
    "counterfactuals": {"splits": []},
    "human_benchmark": {"splits": []},
}
DEMO = PhantomConfig().to_dict()["demographics"]


def _reversed(mapping: dict) -> dict:
    return dict(reversed(list(mapping.items())))


@pytest.mark.parametrize("attr", ["sex", "race", "insurance"])
def test_the_order_of_each_demographic_attribute_is_hashed(attr: str) -> None:
    listed = {**BASE, "n_images": 200, "demographics": {attr: DEMO[attr]}}
    other = {**BASE, "n_images": 200, "demographics": {attr: _reversed(DEMO[attr])}}
    # the order decides the cohort ...
    cohort = build_cohort(PhantomConfig.from_dict(listed), 0)
    again = build_cohort(PhantomConfig.from_dict(other), 0)
    assert [getattr(r, attr) for r in cohort] != [getattr(r, attr) for r in again]
    # ... so it decides the digest
    assert PhantomRequest(True, listed, 0).digest() != PhantomRequest(True, other, 0).digest()


def test_the_generator_version_is_in_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    before = PhantomRequest(True, BASE, 0).digest()
    monkeypatch.setattr(phantom, "PHANTOM_VERSION", f"{phantom.PHANTOM_VERSION}-next")
    assert PhantomRequest(True, BASE, 0).digest() != before
