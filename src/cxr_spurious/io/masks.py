"""Binary masks: polygon rasterisation and the two run-length encodings in use.

* CheXlocalize / COCO compressed RLE through pycocotools (``size`` is [h, w], ``counts``
  a str in JSON).
* SIIM-ACR relative column-major RLE ("offset length" pairs on a 1024x1024 grid, ``-1``
  for an empty mask).

This module is the one implementation of each codec in the project.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from cxr_spurious.errors import DataFormatError

Polygon = Sequence[Sequence[float]]


def rasterize_polygons(polygons: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    """Fill polygons (outline included) into a uint8 (h, w) mask.

    Same semantics as CheXlocalize's reference rasteriser: PIL ``ImageDraw.polygon`` with
    ``outline=1, fill=1`` on a 1-bit image; points are (x, y) = (column, row).

    Args:
        polygons: One list of [x, y] points per contour.
        height: Image height in pixels.
        width: Image width in pixels.

    Returns:
        A C-contiguous uint8 array of 0/1 with shape (height, width).
    """
    canvas = Image.new("1", (int(width), int(height)))
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        coords = [(float(p[0]), float(p[1])) for p in polygon]
        draw.polygon(coords, outline=1, fill=1)
    return np.array(canvas, dtype=np.uint8)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a binary (h, w) mask as a pycocotools RLE with a ``str`` counts field."""
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any], *, source: object = "<rle>", key: str | None = None) -> np.ndarray:
    """Decode a pycocotools RLE (counts as str or bytes) into a uint8 (h, w) mask.

    Args:
        rle: Mapping with ``size`` [h, w] and ``counts``.
        source: File the RLE came from, for error messages.
        key: The key (cxr id / task) in that file, for error messages.

    Returns:
        The decoded mask.

    Raises:
        DataFormatError: the RLE is malformed or does not decode to its declared size.
    """
    try:
        size = [int(rle["size"][0]), int(rle["size"][1])]
        counts = rle["counts"]
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise DataFormatError(source, f"expected an RLE dict with 'size' [h, w] and 'counts', got {rle!r:.80}", where=key) from exc
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, list):  # uncompressed RLE
        obj = mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    else:
        obj = {"size": size, "counts": counts}
    try:
        decoded = mask_utils.decode(obj)
    except Exception as exc:  # pycocotools raises bare exceptions on garbage
        raise DataFormatError(source, f"RLE counts do not decode: {exc}", where=key) from exc
    if decoded.shape != tuple(size):
        raise DataFormatError(source, f"RLE decoded to shape {decoded.shape}, declared size {size}", where=key)
    # pycocotools cannot tell a truncated counts string from a short one: check the run total.
    area = int(mask_utils.area(obj))
    if area != int(decoded.sum()):
        raise DataFormatError(source, "RLE counts are inconsistent with the decoded mask", where=key)
    return np.ascontiguousarray(decoded, dtype=np.uint8)


def decode_siim_rle(encoded: str, height: int = 1024, width: int = 1024, *, source: object = "<siim rle>", where: str | None = None) -> np.ndarray:
    """Decode a SIIM-ACR relative, column-major RLE string.

    Args:
        encoded: "offset length offset length ..." or "-1" (empty); surrounding spaces ok.
        height: Mask height (1024 in SIIM-ACR).
        width: Mask width.
        source: File name for error messages.
        where: Row description for error messages.

    Returns:
        A uint8 (height, width) mask.

    Raises:
        DataFormatError: odd token count, non-integers, or runs beyond the image.
    """
    text = str(encoded).strip()
    flat = np.zeros(height * width, dtype=np.uint8)
    if text in {"-1", ""}:
        return flat.reshape(height, width)
    try:
        values = [int(t) for t in text.split()]
    except ValueError as exc:
        raise DataFormatError(source, f"RLE has a non-integer token: {text[:60]!r}", where=where) from exc
    if len(values) % 2:
        raise DataFormatError(source, f"RLE needs (offset, length) pairs, got {len(values)} numbers", where=where)
    cursor = 0
    for offset, length in zip(values[0::2], values[1::2]):
        if offset < 0 or length < 0:
            raise DataFormatError(source, "RLE offsets and lengths must be >= 0", where=where)
        cursor += offset
        if cursor + length > flat.size:
            raise DataFormatError(source, f"RLE run ends at pixel {cursor + length}, beyond a {height}x{width} image", where=where)
        flat[cursor : cursor + length] = 1
        cursor += length
    return flat.reshape((height, width), order="F")


def encode_siim_rle(mask: np.ndarray) -> str:
    """Encode a binary mask in the SIIM-ACR relative column-major RLE ("-1" when empty)."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order="F")
    padded = np.concatenate([[0], flat, [0]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    if changes.size == 0:
        return "-1"
    starts, ends = changes[0::2], changes[1::2]
    tokens: list[int] = []
    previous_end = 0
    for start, end in zip(starts, ends):
        tokens += [int(start - previous_end), int(end - start)]
        previous_end = int(end)
    return " ".join(str(t) for t in tokens)
