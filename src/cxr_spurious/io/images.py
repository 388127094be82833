"""The project's one image reader: any CXR file to a 2-D uint8 array.

PNG / JPEG (8 or 16 bit, gray, RGB or RGBA: reduced to one channel) through Pillow;
DICOM through ``cxr_spurious.io.dicom`` (modality LUT, VOI LUT, MONOCHROME1 inversion).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr_spurious.errors import DataFormatError

DICOM_SUFFIXES = {".dcm", ".dicom"}


def to_uint8(array: np.ndarray, *, bits: int | None = None) -> np.ndarray:
    """Scale an integer or float image to uint8.

    Integer images are scaled by their bit depth (``bits``, else the dtype's); float images
    by their own min-max range.
    """
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        depth = bits or np.iinfo(array.dtype).bits
        top = float(2**depth - 1)
        scaled = np.clip(array.astype(np.float64), 0, top) / top
    else:
        arr = array.astype(np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.round(scaled * 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as a 2-D uint8 array (h, w).

    Raises:
        DataFormatError: the file is missing, truncated, not an image, or has more pixels
            than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "image file not found")
    if path.suffix.lower() in DICOM_SUFFIXES:
        from cxr_spurious.io.dicom import read_dicom

        return read_dicom(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in {"RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"}:
                arr = np.asarray(img.convert("L"))
            elif img.mode in {"I;16", "I;16B", "I;16L", "I"}:
                raw = np.asarray(img)
                arr = to_uint8(raw.astype(np.uint16) if raw.max() < 65536 else raw, bits=16)
            elif img.mode == "F":
                arr = to_uint8(np.asarray(img))
            else:
                arr = np.asarray(img.convert("L"))
    except Image.DecompressionBombError as exc:  # not an OSError
        raise DataFormatError(path, f"image too large to read: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataFormatError(path, f"unreadable or truncated image: {exc}") from exc
    if arr.ndim != 2 or arr.size == 0:
        raise DataFormatError(path, f"expected a 2-D image, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)
