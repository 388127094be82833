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


def _png16(path: Path, arr: np.ndarray, sbit: int | None = None) -> Path:
    """A 16-bit greyscale PNG written chunk by chunk, with an ``sBIT`` chunk if asked."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    h, w = arr.shape
    rows = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
    sbit_chunk = chunk(b"sBIT", bytes([sbit])) if sbit else b""
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + header
        + sbit_chunk
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


RAMP_12BIT = np.tile(np.linspace(0, 4095, 8).round().astype(np.uint16), (2, 1))


def test_a_16bit_png_is_scaled_by_its_significant_bits(tmp_path: Path) -> None:
    # 12-bit detector data in 16-bit samples, sBIT = 12: Pillow ignores the chunk and the
    # image came out at most 16/255 bright ([0, 2, 5, ..., 16] instead of 0..255).
    out = read_image(_png16(tmp_path / "twelve.png", RAMP_12BIT, sbit=12))
    expected = np.round(RAMP_12BIT / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    # full-range 16-bit data with sBIT = 16, and without sBIT: scaled by 16 bits
    full = (RAMP_12BIT.astype(np.uint32) * 16).astype(np.uint16)
    for name, sbit in (("sixteen.png", 16), ("plain.png", None)):
        got = read_image(_png16(tmp_path / name, full, sbit=sbit))
        np.testing.assert_array_equal(got, np.round(full / 65535 * 255).astype(np.uint8))


def test_low_range_16bit_without_sbit_is_read_by_16_bits_with_a_warning(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    from cxr_spurious.io import images

    monkeypatch.setattr(images, "_warned_low_range", False)
    path = _png16(tmp_path / "dark.png", RAMP_12BIT)
    with caplog.at_level("WARNING", logger="cxr_spurious.io.images"):
        out = read_image(path)
        read_image(path)
    assert out.max() == round(4095 / 65535 * 255)  # what the PNG standard says it is
    warned = [r.getMessage() for r in caplog.records if "sBIT" in r.getMessage()]
    assert len(warned) == 1 and str(path) in warned[0]  # once per process, naming the file


def test_a_32bit_integer_image_clips_negative_values_to_black(tmp_path: Path) -> None:
    # an int32 TIFF: -100 and -1 wrapped to 65436 and 65535 (white) through a uint16 cast
    path = tmp_path / "signed.tif"
    Image.fromarray(np.array([[-100, -1, 0, 1000, 30000]], dtype=np.int32), mode="I").save(path)
    assert read_image(path).tolist() == [[0, 0, 0, 4, 117]]
