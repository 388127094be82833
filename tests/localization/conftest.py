from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "chexlocalize_sample"
SHARED = Path("/work/shared/chexlocalize_sample")


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def shared_dir() -> Path:
    if not (SHARED / "gradcam_maps_val").is_dir():
        pytest.skip("full CheXlocalize sample not present at /work/shared/chexlocalize_sample")
    return SHARED
