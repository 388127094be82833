"""The project's one image reader: any CXR file to a 2-D uint8 array.

PNG / JPEG (8 or 16 bit, gray, RGB or RGBA: reduced to one channel) through Pillow;
DICOM through ``cxr_spurious.io.dicom`` (modality LUT, VOI LUT, MONOCHROME1 inversion).

A 16-bit greyscale PNG is scaled by its significant bits: the ``sBIT`` chunk where the file
has one (12-bit detector data stored in 16-bit samples records 12 there), else all 16.
Pillow reads neither ``sBIT`` nor any other record of it, so ``png_significant_bits`` reads
the chunk itself. A 16-bit PNG without ``sBIT`` whose values all lie below 2**12 is scaled
by 16 bits as the PNG standard says, and a warning names the file: such data would come out
at most 1/16 of full brightness.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr_spurious.errors import DataFormatError

DICOM_SUFFIXES = {".dcm", ".dicom"}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: A 16-bit PNG without ``sBIT`` whose largest value is below this is likely 12-bit data.
LOW_RANGE_16BIT = 2**12

logger = logging.getLogger(__name__)
_warned_low_range = False


def png_significant_bits(path: str | Path) -> int | None:
    """The grey channel's significant bits recorded in a PNG's ``sBIT`` chunk, or None.

    Reads the chunks before the first ``IDAT`` (the PNG standard puts ``sBIT`` there); a file
    that is not a PNG, or whose chunk list is cut short, gives None.
    """
    with open(path, "rb") as fh:
        if fh.read(8) != PNG_SIGNATURE:
            return None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return None
            data = fh.read(length)
            fh.seek(4, 1)  # the chunk's CRC
            if kind == b"sBIT":
                return data[0] if data and 1 <= data[0] <= 16 else None


def _sixteen_bit(path: Path, raw: np.ndarray) -> np.ndarray:
    """A 16-bit (or 32-bit integer) greyscale image to uint8, by its significant bits."""
    global _warned_low_range
    bits = png_significant_bits(path) if raw.dtype.itemsize <= 2 else None
    if bits is None and raw.size and int(raw.max()) < LOW_RANGE_16BIT and not _warned_low_range:
        _warned_low_range = True
        logger.warning(
            "%s: a 16-bit image without an sBIT chunk whose values all lie below %d (12-bit "
            "data?) is scaled by 16 bits, so it comes out dark; record the bit depth in sBIT "
            "or convert the files to 8 bits (further files are not reported)",
            path,
            LOW_RANGE_16BIT,
        )
    return to_uint8(raw.astype(np.int64), bits=bits or 16)


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
                arr = _sixteen_bit(path, np.asarray(img))
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
