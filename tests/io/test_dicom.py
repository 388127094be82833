"""Tests for cxr_spurious.io.dicom: pixel pipeline, header parsing and error messages."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.dicom import parse_patient_age, parse_view, read_dicom, read_dicom_header
from cxr_spurious.io.images import read_image


def _load_fixtures():
    """Import tests/adapters/fixtures.py by path (works with or without tests/__init__.py)."""
    path = Path(__file__).resolve().parents[1] / "adapters" / "fixtures.py"
    spec = importlib.util.spec_from_file_location("_cxr_adapter_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


fx = _load_fixtures()


def _ramp(h: int = 16, w: int = 12, top: int = 255) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * top // (h * w - 1)).astype(np.int64)


def test_plain_8bit_is_identity(tmp_path: Path) -> None:
    pixels = _ramp()
    path = fx.write_dicom(tmp_path / "a.dcm", pixels)
    out = read_dicom(path)
    assert out.dtype == np.uint8 and out.shape == (16, 12)
    np.testing.assert_array_equal(out, pixels)


def test_read_image_dispatches_dicom(tmp_path: Path) -> None:
    pixels = _ramp()
    path = fx.write_dicom(tmp_path / "a.dcm", pixels)
    np.testing.assert_array_equal(read_image(path), pixels)


def test_jpeg_baseline_decodes_like_pillow(tmp_path: Path) -> None:
    pixels = _ramp(32, 32)
    path = fx.write_dicom(tmp_path / "j.dcm", pixels, jpeg=True)
    assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50"
    out = read_dicom(path)
    np.testing.assert_array_equal(out, fx.jpeg_roundtrip(pixels))
    assert np.abs(out.astype(int) - pixels).max() <= 8  # lossy, but close to the source


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = _ramp()
    path = fx.write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_dicom(path), 255 - pixels)


def test_12bit_normalised_by_bits_stored_and_clipped(tmp_path: Path) -> None:
    pixels = _ramp(8, 8, top=4095)
    pixels[0, 0] = 4095
    path = fx.write_dicom(tmp_path / "b12.dcm", pixels, bits_stored=12)
    out = read_dicom(path)
    expected = np.round(pixels / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.max() == 255  # 12-bit white is white, not 1/16 grey (BitsAllocated=16)


def test_signed_pixels_use_pixel_representation(tmp_path: Path) -> None:
    pixels = np.array([[-2048, -1, 0, 2047]], dtype=np.int64)
    path = fx.write_dicom(tmp_path / "s.dcm", pixels, bits_stored=12, signed=True)
    out = read_dicom(path)
    expected = np.round((pixels + 2048) / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_rescale_and_window_match_pydicom_reference(tmp_path: Path) -> None:
    pixels = _ramp(10, 10, top=4095)
    path = fx.write_dicom(
        tmp_path / "w.dcm",
        pixels,
        bits_stored=12,
        rescale=(2.0, -1024.0),
        window=([1000.0, 50.0], [2000.0, 400.0]),
    )
    ds = pydicom.dcmread(path)
    # Reference: pydicom's own LUT functions, first window, output range of the rescaled stage.
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
    lo, hi = -1024.0, 4095 * 2.0 - 1024.0
    expected = np.round(np.clip((ref - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    out = read_dicom(path)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255  # a 2000-wide window saturates both ends here


def test_missing_preamble_read_with_force(tmp_path: Path) -> None:
    pixels = _ramp()
    path = fx.write_dicom(tmp_path / "raw.dcm", pixels, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_dicom(path), pixels)


def test_no_pixel_data_names_file(tmp_path: Path) -> None:
    path = fx.write_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(DataFormatError, match=r"nopix\.dcm.*no pixel data"):
        read_dicom(path)
    assert read_dicom_header(path).has_pixel_data is False


def test_undecodable_syntax_names_syntax_and_install(tmp_path: Path) -> None:
    path = fx.write_dicom(tmp_path / "ls.dcm", _ramp(), syntax=fx.JPEG_LS_SYNTAX)
    with pytest.raises(
        DataFormatError, match=r"ls\.dcm.*JPEG-LS.*1\.2\.840\.10008\.1\.2\.4\.80.*pylibjpeg"
    ):
        read_dicom(path)


def test_not_dicom_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"bad\.dcm"):
        read_dicom(bad)
    with pytest.raises(DataFormatError, match="not found"):
        read_dicom(tmp_path / "absent.dcm")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("png.dcm", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
        ("text.dcm", b"hello world, not dicom\n" * 10),
    ],
)
def test_other_bytes_named_dcm_are_refused_as_not_dicom(
    tmp_path: Path, name: str, content: bytes
) -> None:
    # pydicom's force=True parsed these into a garbage element: read_image said "no pixel
    # data" and read_dicom_header returned a 0 x 0 header without pixels (skipped by SIIM)
    path = tmp_path / name
    path.write_bytes(content)
    for read in (read_image, read_dicom_header):
        with pytest.raises(DataFormatError, match=rf"{re.escape(name)}: not a DICOM file"):
            read(path)


def test_palette_colour_is_refused_not_read_as_grey(tmp_path: Path) -> None:
    # PALETTE COLOR stores palette indices in one sample: they read as grey levels before
    path = fx.write_dicom(tmp_path / "pal.dcm", _ramp(), photometric="PALETTE COLOR")
    with pytest.raises(DataFormatError, match=r"pal\.dcm.*PALETTE COLOR.*not supported"):
        read_dicom(path)
    assert read_dicom_header(path).rows == 16  # the header stays readable


def test_header_fields(tmp_path: Path) -> None:
    path = fx.write_dicom(
        tmp_path / "h.dcm", _ramp(), sex="F", age="058Y", view="AP", sop_uid="1.2.3.4"
    )
    header = read_dicom_header(path)
    assert (header.sop_instance_uid, header.sex, header.age_years, header.view) == (
        "1.2.3.4",
        "F",
        58.0,
        "AP",
    )
    assert (header.rows, header.columns, header.has_pixel_data) == (16, 12, True)


@pytest.mark.parametrize(
    ("raw", "years"),
    [
        ("62", 62.0),
        ("058Y", 58.0),
        ("58Y", 58.0),
        ("58 Y", 58.0),
        ("006M", 0.5),
        ("052W", 52 * 7 / 365.25),
        ("365D", 365 / 365.25),
        (62, 62.0),
        ("", math.nan),
        (None, math.nan),
        ("414", math.nan),
        ("abc", math.nan),
        ("-5", math.nan),
    ],
)
def test_parse_patient_age(raw: object, years: float) -> None:
    got = parse_patient_age(raw)
    assert (math.isnan(got) and math.isnan(years)) or got == pytest.approx(years)


def test_view_fallbacks() -> None:
    ds = pydicom.Dataset()
    assert math.isnan(parse_view(ds))
    ds.SeriesDescription = "view: AP"
    assert parse_view(ds) == "AP"
    ds.ViewPosition = "LATERAL"
    assert parse_view(ds) == "Lateral"
    code = pydicom.Dataset()
    code.CodeMeaning = "postero-anterior"
    only_code = pydicom.Dataset()
    only_code.ViewCodeSequence = [code]
    assert parse_view(only_code) == "PA"


def test_voi_lut_sequence_applied(tmp_path: Path) -> None:
    pixels = _ramp(4, 4, top=255)
    path = fx.write_dicom(tmp_path / "lut.dcm", pixels)
    ds = pydicom.dcmread(path)
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData: an inverting 8-bit VOI LUT
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    np.testing.assert_array_equal(read_dicom(path), 255 - pixels)


def _by_hand(
    stored: np.ndarray, slope: float, intercept: float, center: float, width: float
) -> np.ndarray:
    """PS3.3 C.11.1.1.2 rescale, then the C.11.2.1.2.1 linear window, as a 0..255 display.

    ``y = ((x - (c - 0.5)) / (w - 1) + 0.5)`` of the output range, its bottom at or below
    ``c - 0.5 - (w - 1) / 2`` and its top above ``c - 0.5 + (w - 1) / 2``.
    """
    out = np.empty(stored.shape)
    for idx, s in np.ndenumerate(stored):
        x = slope * float(s) + intercept
        if x <= center - 0.5 - (width - 1) / 2:
            y = 0.0
        elif x > center - 0.5 + (width - 1) / 2:
            y = 1.0
        else:
            y = (x - (center - 0.5)) / (width - 1) + 0.5
        out[idx] = round(y * 255)
    return out.astype(np.uint8)


@pytest.mark.parametrize(
    ("slope", "intercept", "center", "width"),
    [
        (-1.0, 4095.0, 2048.0, 4096.0),  # an inverting rescale, the whole range windowed
        (-1.0, 4095.0, 3000.0, 1000.0),  # ... and a narrow window: both ends saturate
        (-2.0, 1000.0, -2000.0, 3001.0),
        (1.0, -1024.0, 40.0, 400.0),  # a CT-like positive rescale (unchanged behaviour)
    ],
)
def test_rescale_then_window_matches_the_standard_by_hand(
    tmp_path: Path, slope: float, intercept: float, center: float, width: float
) -> None:
    stored = np.array(
        [[0, 7, 700, 1000, 1100, 1200, 1500], [2000, 2600, 3100, 3333, 3500, 4000, 4095]]
    )
    path = fx.write_dicom(
        tmp_path / "r.dcm",
        stored,
        bits_stored=12,
        rescale=(slope, intercept),
        window=(center, width),
    )
    expected = _by_hand(stored, slope, intercept, center, width)
    assert expected.min() == 0 and expected.max() == 255 and len(np.unique(expected)) > 4
    np.testing.assert_array_equal(read_dicom(path), expected)
    inverted = fx.write_dicom(
        tmp_path / "m1.dcm",
        stored,
        bits_stored=12,
        rescale=(slope, intercept),
        window=(center, width),
        photometric="MONOCHROME1",
    )
    np.testing.assert_array_equal(read_dicom(inverted), 255 - expected)


@pytest.mark.parametrize(
    ("window", "extra", "problem"),
    [
        ((2048.0, 0.0), {}, "Width must be greater than or equal to 1"),
        ((2048.0, 4096.0), {"VOILUTFunction": "CUBIC"}, "CUBIC"),
    ],
)
def test_a_transform_pydicom_refuses_names_the_file(
    tmp_path: Path, window: tuple[float, float], extra: dict, problem: str
) -> None:
    """pydicom's own ValueError (a window width of 0, an unknown VOILUTFunction) reached the
    user without the file name."""
    path = fx.write_dicom(tmp_path / "w.dcm", np.array([[0, 4095]]), bits_stored=12, window=window)
    if extra:
        import pydicom

        ds = pydicom.dcmread(path)
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    with pytest.raises(
        DataFormatError, match=rf"w\.dcm: cannot apply the DICOM's modality / VOI.*{problem}"
    ):
        read_dicom(path)
