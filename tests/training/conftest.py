"""Fixtures of the training tests: a tiny synthetic study (manifest + real ImageCache)."""

from __future__ import annotations

import pandas as pd
import pytest
from tests.training.training_tiny_data import tiny_study

from cxr_spurious.sources.cache import ImageCache


@pytest.fixture(scope="session")
def tiny() -> tuple[pd.DataFrame, ImageCache]:
    """16 train / 8 val / 8 test images at 32 px."""
    return tiny_study()
