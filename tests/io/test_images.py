"""The one image reader and the header-only size reader: every failure names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.images import read_image
from cxr_spurious.sources.adapters._common import image_size


def test_a_decompression_bomb_names_the_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((30, 40), dtype=np.uint8)).save(path)
    assert read_image(path).shape == (30, 40) and image_size(path) == (40, 30)
    # Pillow refuses images of more than 2 x MAX_IMAGE_PIXELS pixels (a 27 KB PNG can
    # claim 15000 x 15000); a small limit stands for it here
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(Image.DecompressionBombError):  # not an OSError: no file name
        Image.open(path)
    message = r"big\.png: image too large to read: Image size \(1200 pixels\) exceeds limit"
    with pytest.raises(DataFormatError, match=message):
        read_image(path)
    with pytest.raises(DataFormatError, match=message):
        image_size(path)
