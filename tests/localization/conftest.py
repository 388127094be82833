from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "chexlocalize_sample"


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE
