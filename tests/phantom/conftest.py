"""Shared fixtures: small phantoms generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_spurious.phantom import PhantomConfig, generate_phantom

# 400 images at 64 px: big enough for rate checks, a few seconds to generate.
MEDIUM = {"n_images": 400, "image_size": 64}


@pytest.fixture(scope="session")
def tiny_cfg() -> PhantomConfig:
    return PhantomConfig.tiny()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, tiny_cfg: PhantomConfig) -> Path:
    return generate_phantom(
        tiny_cfg, tmp_path_factory.mktemp("tiny") / "phantom", seed=7, progress=False
    )


@pytest.fixture(scope="session")
def medium_cfg() -> PhantomConfig:
    return PhantomConfig.from_dict(MEDIUM)


@pytest.fixture(scope="session")
def medium_dir(tmp_path_factory: pytest.TempPathFactory, medium_cfg: PhantomConfig) -> Path:
    return generate_phantom(
        medium_cfg, tmp_path_factory.mktemp("medium") / "phantom", seed=3, progress=False
    )
