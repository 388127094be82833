"""DICOM reading: pixel data to a display-ready uint8 image, and the header fields we use.

The pixel pipeline follows the DICOM standard's order (PS3.3 C.11): stored values ->
modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence) -> VOI LUT
or windowing (first window when several are given) -> ``MONOCHROME1`` inversion -> scale the
value range the standard defines for that stage (``BitsStored``, ``PixelRepresentation``,
rescale) to 0..255, clipping out-of-range values.

Compressed transfer syntaxes go through pydicom's pixel decoders; in this environment JPEG
Baseline (SIIM-ACR) and JPEG 2000 decode through Pillow, RLE Lossless natively. A syntax
without an installed decoder raises ``DataFormatError`` naming the syntax and what to install.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import ImplicitVRLittleEndian

from cxr_spurious.errors import DataFormatError

logger = logging.getLogger(__name__)

# Ages above this are treated as impossible (NIH CXR14 2017 has ages up to ~414).
MAX_PLAUSIBLE_AGE_YEARS = 110.0

_AGE_PATTERN = re.compile(r"^(\d{1,3})\s*([DWMY])?$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1.0 / 365.25, "W": 7.0 / 365.25, "M": 1.0 / 12.0, "Y": 1.0}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_VIEW_WORDS = {
    "PA": "PA",
    "POSTERO-ANTERIOR": "PA",
    "POSTEROANTERIOR": "PA",
    "AP": "AP",
    "ANTERO-POSTERIOR": "AP",
    "ANTEROPOSTERIOR": "AP",
    "LL": "LL",
    "RL": "RL",
    "LAT": "Lateral",
    "LATERAL": "Lateral",
    "LEFT LATERAL": "LL",
    "RIGHT LATERAL": "RL",
}
_INSTALL_HINT = "install pylibjpeg with pylibjpeg-libjpeg / pylibjpeg-openjpeg, or python-gdcm"


@contextlib.contextmanager
def _lenient_values() -> Iterator[None]:
    """Accept VR violations that real de-identified files carry (``PatientAge`` "62").

    pydicom would warn once per file; the values are parsed defensively here instead.
    """
    settings = pydicom_config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous


@dataclass(frozen=True)
class DicomHeader:
    """The header fields the adapters use (pixel data not loaded)."""

    path: str
    sop_instance_uid: str
    study_instance_uid: str
    patient_id: str
    sex: str | float
    age_years: float
    view: str | float
    rows: int
    columns: int
    transfer_syntax: str
    has_pixel_data: bool


def parse_patient_age(value: Any) -> float:
    """Parse a DICOM ``PatientAge`` (VR AS) into years, tolerating real-world violations.

    Accepts ``058Y``, ``003M``, ``012W``, ``010D``, bare numbers (``62`` = years) and
    ``58 Y``; anything else, and ages above ``MAX_PLAUSIBLE_AGE_YEARS``, give NaN.

    Args:
        value: The raw element value (str, int, None, ...).

    Returns:
        Age in years as a float, or NaN when missing or implausible.
    """
    if value is None:
        return math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        years = float(value)
    else:
        match = _AGE_PATTERN.match(str(value).strip())
        if match is None:
            return math.nan
        years = int(match.group(1)) * _AGE_UNIT_YEARS[(match.group(2) or "Y").upper()]
    if not math.isfinite(years) or years < 0 or years > MAX_PLAUSIBLE_AGE_YEARS:
        return math.nan
    return float(years)


def parse_view(ds: Dataset) -> str | float:
    """View of a radiograph.

    Read from ``ViewPosition``, else ``SeriesDescription``, else ``ViewCodeSequence``.

    Returns:
        ``PA`` / ``AP`` / ``LL`` / ``RL`` / ``Lateral`` (or the raw upper-case
        ``ViewPosition`` when it is another non-empty value), NaN when nothing says.
    """
    raw = str(ds.get("ViewPosition", "") or "").strip().upper()
    if raw:
        return _VIEW_WORDS.get(raw, raw)
    description = str(ds.get("SeriesDescription", "") or "").strip().upper()
    if description:
        words = description.removeprefix("VIEW:").strip()
        if words in _VIEW_WORDS:
            return _VIEW_WORDS[words]
    codes = ds.get("ViewCodeSequence") or []
    if len(codes):
        meaning = str(codes[0].get("CodeMeaning", "") or "").strip().upper()
        if meaning in _VIEW_WORDS:
            return _VIEW_WORDS[meaning]
    return math.nan


def parse_sex(value: Any) -> str | float:
    """``PatientSex`` to ``M`` / ``F`` (``O``, empty or anything else -> NaN)."""
    text = str(value or "").strip().upper()
    return text if text in {"M", "F"} else math.nan


def open_dicom(path: str | Path, *, header_only: bool = False) -> Dataset:
    """Open a DICOM file, retrying with ``force=True`` when the preamble is missing.

    Args:
        path: The file.
        header_only: Defer loading large values (pixel data), so the header is cheap to read
            while ``"PixelData" in ds`` still tells whether pixels are present.

    Returns:
        The dataset (with ``file_meta.TransferSyntaxUID`` always set).

    Raises:
        DataFormatError: the file is missing or not DICOM.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "DICOM file not found")
    kwargs: dict[str, Any] = {"defer_size": "1 KB"} if header_only else {}
    try:
        ds = pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        ds = _read_forced(path, kwargs)
    except Exception as exc:
        raise DataFormatError(path, f"not a readable DICOM file: {exc}") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        # Files without a meta header are implicit VR little endian by default (PS3.5 A.1).
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _read_forced(path: Path, kwargs: dict[str, Any]) -> Dataset:
    """Second attempt for files without the preamble / ``DICM`` prefix."""
    try:
        ds = pydicom.dcmread(path, force=True, **kwargs)
    except Exception as exc:
        raise DataFormatError(path, f"not a readable DICOM file: {exc}") from exc
    # the tags only: iterating the dataset would convert each (garbage) element's value
    if not any(tag.group in _IMAGE_GROUPS for tag in ds.keys()):  # noqa: SIM118
        # force=True parses any bytes (a PNG, a text file) into a few garbage elements
        raise DataFormatError(
            path,
            "not a DICOM file (no DICM prefix, and a forced read found no patient, study, "
            "series or image element)",
        )
    return ds


#: Element groups of a radiograph's header: identification (0008), patient (0010),
#: acquisition (0018), study / series (0020), image (0028) and pixel data (7FE0).
_IMAGE_GROUPS = frozenset({0x0008, 0x0010, 0x0018, 0x0020, 0x0028, 0x7FE0})

#: Photometric interpretations read as one grey channel (colour ones reduced to luminance).
_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_")


def read_dicom_header(path: str | Path) -> DicomHeader:
    """Read the header fields the adapters use, without decoding pixels.

    Raises:
        DataFormatError: the file is missing or not DICOM.
    """
    with _lenient_values():
        ds = open_dicom(path, header_only=True)
        return _header_of(ds, path)


def _header_of(ds: Dataset, path: str | Path) -> DicomHeader:
    return DicomHeader(
        path=str(path),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        study_instance_uid=str(ds.get("StudyInstanceUID", "") or ""),
        patient_id=str(ds.get("PatientID", "") or ""),
        sex=parse_sex(ds.get("PatientSex")),
        age_years=parse_patient_age(ds.get("PatientAge")),
        view=parse_view(ds),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        has_pixel_data=any(k in ds for k in _PIXEL_KEYWORDS),
    )


def read_dicom(path: str | Path) -> np.ndarray:
    """Read a DICOM radiograph as a display-ready 2-D uint8 array (h, w).

    Args:
        path: The ``.dcm`` file.

    Returns:
        A C-contiguous uint8 array; bright = dense (``MONOCHROME1`` is inverted).

    Raises:
        DataFormatError: missing file, no pixel data, a transfer syntax without an
            installed decoder (the message names it and what to install), colour data
            that is not RGB/YBR, pixels that fail to decode, or a modality / VOI transform
            that cannot be applied (e.g. a window width below 1).
    """
    with _lenient_values():
        ds = open_dicom(path)
        if not any(k in ds for k in _PIXEL_KEYWORDS):
            raise DataFormatError(path, "DICOM has no pixel data (PixelData element missing)")
        stored = _stored_pixels(ds, path)
        try:
            values, (lo, hi) = _apply_luts(stored, ds)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise DataFormatError(
                path,
                "cannot apply the DICOM's modality / VOI transform (RescaleSlope / "
                f"RescaleIntercept, WindowCenter / WindowWidth, VOILUTFunction, LUT sequences): "
                f"{exc}",
            ) from exc
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.ascontiguousarray(np.round(scaled * 255.0).astype(np.uint8))


def _stored_pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """Decode the stored pixel values of the first frame, as a 2-D array."""
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        decoder = get_decoder(syntax)
        if decoder is None or not decoder.is_available:
            missing = (
                "; ".join(decoder.missing_dependencies)
                if decoder is not None
                else "no decoder known to pydicom"
            )
            raise DataFormatError(
                path,
                f"cannot decode transfer syntax {syntax.name} ({syntax}); "
                f"{_INSTALL_HINT} ({missing})",
            )
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DataFormatError(
            path, f"pixel data of transfer syntax {syntax.name} ({syntax}) does not decode: {exc}"
        ) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2")
    if not photometric.strip().upper().startswith(_PHOTOMETRIC):
        # PALETTE COLOR (one sample of palette indices) would read as grey levels
        raise DataFormatError(
            path,
            f"PhotometricInterpretation {photometric.strip()!r} is not supported (expected "
            "MONOCHROME1, MONOCHROME2, RGB or YBR_*)",
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        logger.warning("%s: %d frames; using the first", path, frames)
        arr = arr[0]
    if samples == 3 and arr.ndim == 3:
        # pydicom converts YBR to RGB by default; reduce to luminance (ITU-R 601).
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif samples != 1 or arr.ndim != 2:
        raise DataFormatError(
            path,
            "expected one sample per pixel (grayscale), "
            f"got SamplesPerPixel={samples}, shape {arr.shape}",
        )
    return arr


def _apply_luts(stored: np.ndarray, ds: Dataset) -> tuple[np.ndarray, tuple[float, float]]:
    """Modality then VOI LUT; return float values and the value range of the last stage."""
    values: np.ndarray = stored
    lo, hi = _stored_range(ds, stored)
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        values = apply_modality_lut(values, ds)
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        values = apply_modality_lut(values, ds)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        values = apply_voi_lut(values, ds, index=0)
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        values, (lo, hi) = _apply_window(values, ds)
    return np.asarray(values, dtype=np.float64), (float(lo), float(hi))


def _apply_window(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, tuple[float, float]]:
    """The first window (PS3.3 C.11.2.1.2), rising from the bottom of its output range.

    pydicom maps the window into the rescaled range of the stored values, from
    ``y_min = stored_min * slope + intercept`` to ``y_max``: with a negative
    ``RescaleSlope`` that range runs downwards, and values below the window would come out
    white. The window's ends are read back from pydicom (a value far below it and one far
    above it) and a downward range is turned round, so that below the window is always
    the bottom of the range, as the standard defines.

    Returns:
        The windowed values and their range (low, high).
    """
    windowed = apply_voi_lut(values, ds, index=0)
    y_below, y_above = apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0)
    if y_below > y_above:
        windowed = y_below + y_above - windowed
    return windowed, (float(min(y_below, y_above)), float(max(y_below, y_above)))


def _stored_range(ds: Dataset, stored: np.ndarray) -> tuple[float, float]:
    """The nominal range of stored values from ``BitsStored`` / ``PixelRepresentation``."""
    if stored.dtype.kind == "f" and "PixelData" not in ds:  # float pixel data has no nominal range
        return float(np.nanmin(stored)), float(np.nanmax(stored))
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or stored.dtype.itemsize * 8)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)
