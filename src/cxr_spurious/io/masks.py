"""Binary masks: polygon rasterisation and the two run-length encodings in use.

* CheXlocalize / COCO compressed RLE through pycocotools (``size`` is [h, w], ``counts``
  a str in JSON). ``validate_rle`` parses the counts in Python before pycocotools sees
  them: pycocotools' C loops trust the string, and a malformed one can make ``merge`` run
  without end or ``decode`` write past its buffer.
* SIIM-ACR relative column-major RLE ("offset length" pairs on a 1024x1024 grid, ``-1``
  for an empty mask).

This module is the one implementation of each codec in the project.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from cxr_spurious.errors import DataFormatError

Polygon = Sequence[Sequence[float]]

MAX_MASK_SIDE = 1 << 15
"""Largest mask height or width accepted (32,768 px; chest X-rays are below 5,000)."""
_RLE_CHAR_MIN, _RLE_CHAR_MAX = 48, 48 + 63  # pycocotools' alphabet: '0'..'o'
_RLE_MAX_CHARS_PER_COUNT = 7  # 35 bits: more than any run of a MAX_MASK_SIDE^2 mask


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
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": rle["counts"].decode("ascii"),
    }


def _is_integral(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | np.integer):
        return True
    return isinstance(value, float | np.floating) and float(value).is_integer()


def _rle_size(rle: Any, source: object, key: str | None) -> tuple[int, int]:
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise DataFormatError(
            source,
            f"expected an RLE dict with 'size' [h, w] and 'counts', got {rle!r:.80}",
            where=key,
        )
    size = rle["size"]
    if (
        not isinstance(size, Sequence | np.ndarray)
        or isinstance(size, str | bytes)
        or len(size) != 2
        or not all(_is_integral(v) for v in size)
    ):
        raise DataFormatError(
            source, f"RLE 'size' must be two integers [h, w], got {size!r:.80}", where=key
        )
    h, w = int(size[0]), int(size[1])
    if not (0 < h <= MAX_MASK_SIDE and 0 < w <= MAX_MASK_SIDE):
        raise DataFormatError(
            source, f"RLE 'size' [h, w] must lie in 1..{MAX_MASK_SIDE}, got [{h}, {w}]", where=key
        )
    return h, w


@numba.njit(cache=True, nogil=True)
def _decode_counts(chars):  # pragma: no cover - compiled
    """pycocotools' ``rleFrString`` on the bytes of a counts string, checked as it goes.

    Returns:
        (runs, status, at): status 0 = valid; 1 = the byte at ``at`` is outside '0'..'o';
        2 = the string ends in the middle of a count; 3 = the count ending at ``at`` has
        more than ``_RLE_MAX_CHARS_PER_COUNT`` characters.
    """
    runs = np.empty(chars.shape[0], np.int64)
    m = 0
    p = 0
    n = chars.shape[0]
    while p < n:
        x = np.int64(0)
        k = 0
        more = True
        c = np.int64(0)
        while more:
            if p >= n:
                return runs[:m], 2, p
            b = np.int64(chars[p])
            if b < _RLE_CHAR_MIN or b > _RLE_CHAR_MAX:
                return runs[:m], 1, p
            c = b - _RLE_CHAR_MIN
            x |= (c & 0x1F) << (5 * k)
            more = (c & 0x20) != 0
            p += 1
            k += 1
            if k > _RLE_MAX_CHARS_PER_COUNT:
                return runs[:m], 3, p - 1
        if c & 0x10:
            x -= np.int64(1) << (5 * k)  # sign extension
        if m > 2:
            x += runs[m - 2]  # counts after the third are deltas to the count two back
        runs[m] = x
        m += 1
    return runs[:m], 0, 0


def _compressed_counts(counts: str | bytes, source: object, key: str | None) -> np.ndarray:
    """Run lengths of a pycocotools compressed counts string (its LEB128-like code), checked."""
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    except UnicodeEncodeError as exc:
        raise DataFormatError(
            source, f"RLE counts must be ASCII, got {counts!r:.60}", where=key
        ) from exc
    if not raw:
        raise DataFormatError(source, "RLE counts string is empty", where=key)
    chars = np.frombuffer(raw, dtype=np.uint8)
    runs, status, _ = _decode_counts(chars)
    if status == 0:
        return runs
    # the reason, checked over the whole string in a fixed order (bytes, end, lengths)
    bad = np.flatnonzero((chars < _RLE_CHAR_MIN) | (chars > _RLE_CHAR_MAX))
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(
            source,
            "RLE counts is not a pycocotools RLE string: "
            f"character {raw[i : i + 1]!r} at offset {i} is outside '0'..'o' "
            f"(got {raw[:40]!r})",
            where=key,
        )
    c = chars.astype(np.int64) - _RLE_CHAR_MIN
    last = np.flatnonzero((c & 0x20) == 0)  # the last character of each count
    if last.size == 0 or last[-1] != c.size - 1:
        raise DataFormatError(
            source,
            "RLE counts string ends in the middle of a count (continuation bit set)",
            where=key,
        )
    length = np.diff(np.concatenate([[-1], last]))
    raise DataFormatError(
        source,
        f"RLE counts has a count of {int(length.max())} characters; "
        f"no valid mask needs more than {_RLE_MAX_CHARS_PER_COUNT}",
        where=key,
    )


def validate_rle(
    rle: Any,
    *,
    source: object = "<rle>",
    key: str | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """Check an RLE before any pycocotools call; returns its (h, w).

    Checks: a dict with ``size`` (two integers in 1..``MAX_MASK_SIDE``) and ``counts`` (a
    compressed string in pycocotools' alphabet that ends on a complete count, or a list of
    integers); every run length >= 0; the runs summing to exactly h x w; and, when given,
    ``size`` equal to the image's (h, w). Runs in time linear in the counts' length.

    Args:
        rle: The candidate RLE.
        source: File the RLE came from, for error messages.
        key: The key (cxr id / task) in that file, for error messages.
        size: The image's (h, w), when known.

    Raises:
        DataFormatError: naming ``source`` and ``key`` and what was expected.
    """
    h, w = _rle_size(rle, source, key)
    if size is not None and (h, w) != (int(size[0]), int(size[1])):
        raise DataFormatError(
            source,
            f"RLE size [h, w] = [{h}, {w}] disagrees with the image's "
            f"[{int(size[0])}, {int(size[1])}]",
            where=key,
        )
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) for v in counts
        ):
            raise DataFormatError(
                source, "uncompressed RLE counts must be a list of integers", where=key
            )
        runs: list[Any] | np.ndarray = counts
    elif isinstance(counts, str | bytes):
        runs = _compressed_counts(counts, source, key)
    else:
        raise DataFormatError(
            source,
            f"RLE counts must be a string or a list of integers, got {type(counts).__name__}",
            where=key,
        )
    negative = (
        [i for i, v in enumerate(runs) if v < 0]
        if isinstance(runs, list)
        else np.flatnonzero(runs < 0)
    )
    if len(negative):
        i = int(negative[0])
        raise DataFormatError(source, f"RLE run {i} has negative length {int(runs[i])}", where=key)
    total = sum(int(v) for v in runs) if isinstance(runs, list) else int(runs.sum())
    if total != h * w:
        raise DataFormatError(
            source,
            f"RLE runs sum to {total} pixels, expected h x w = {h} x {w} = {h * w}",
            where=key,
        )
    return h, w


def decode_rle(
    rle: dict[str, Any], *, source: object = "<rle>", key: str | None = None
) -> np.ndarray:
    """Decode a pycocotools RLE (counts as str or bytes) into a uint8 (h, w) mask.

    Args:
        rle: Mapping with ``size`` [h, w] and ``counts``.
        source: File the RLE came from, for error messages.
        key: The key (cxr id / task) in that file, for error messages.

    Returns:
        The decoded mask.

    Raises:
        DataFormatError: the RLE is malformed (see ``validate_rle``) or does not decode to
            its declared size.
    """
    size = list(validate_rle(rle, source=source, key=key))
    counts = rle["counts"]
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
        raise DataFormatError(
            source, f"RLE decoded to shape {decoded.shape}, declared size {size}", where=key
        )
    # pycocotools cannot tell a truncated counts string from a short one: check the run total.
    area = int(mask_utils.area(obj))
    if area != int(decoded.sum()):
        raise DataFormatError(
            source, "RLE counts are inconsistent with the decoded mask", where=key
        )
    return np.ascontiguousarray(decoded, dtype=np.uint8)


def decode_siim_rle(
    encoded: str,
    height: int = 1024,
    width: int = 1024,
    *,
    source: object = "<siim rle>",
    where: str | None = None,
) -> np.ndarray:
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
        raise DataFormatError(
            source, f"RLE has a non-integer token: {text[:60]!r}", where=where
        ) from exc
    if len(values) % 2:
        raise DataFormatError(
            source, f"RLE needs (offset, length) pairs, got {len(values)} numbers", where=where
        )
    cursor = 0
    for offset, length in zip(values[0::2], values[1::2]):
        if offset < 0 or length < 0:
            raise DataFormatError(source, "RLE offsets and lengths must be >= 0", where=where)
        cursor += offset
        if cursor + length > flat.size:
            raise DataFormatError(
                source,
                f"RLE run ends at pixel {cursor + length}, beyond a {height}x{width} image",
                where=where,
            )
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
