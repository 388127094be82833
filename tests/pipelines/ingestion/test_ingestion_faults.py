"""``kedro run --pipeline ingestion`` after faults: a damaged cache, a phantom too small."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cxr_spurious.sources.cache import load_cache, verify_cache_files

pytestmark = pytest.mark.integration


def test_too_few_phantom_images_fail_before_generation(kedro_project: Path, run_kedro) -> None:
    proc = run_kedro(
        kedro_project,
        "run",
        "--pipeline",
        "ingestion",
        "--env",
        "test",
        "--params",
        "ingestion.phantom.n_images=3",
        check=False,
    )
    assert proc.returncode != 0
    assert "parameter 'ingestion.phantom.n_images': must be at least 19" in proc.log
    assert not (kedro_project / "data/01_raw/phantom/labels.csv").exists()  # nothing generated


def test_a_truncated_cache_is_rebuilt_by_the_next_run(kedro_project: Path, run_kedro) -> None:
    run_kedro(kedro_project, "run", "--pipeline", "ingestion", "--env", "test")
    folder = kedro_project / "data/05_model_input/image_cache"
    expected = np.array(load_cache(folder).images)
    images = folder / "images.npy"
    os.truncate(images, images.stat().st_size // 2)
    again = run_kedro(kedro_project, "run", "--pipeline", "ingestion", "--env", "test")
    assert "is damaged, rebuilding it" in again.log and "images.npy" in again.log
    assert "skipping the rebuild" not in again.log
    assert verify_cache_files(folder) == []
    np.testing.assert_array_equal(load_cache(folder).images, expected)
