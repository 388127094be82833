"""Tiny fixture trees that mimic each source's real on-disk layout exactly.

Headers, value spellings, nesting and DICOM tags follow ``/work/shared/DATASET_FORMATS.md``;
every value is synthetic. Builders return the dataset root and write nothing outside it.
"""

from __future__ import annotations

import gzip
import io
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid

from cxr_spurious.io.masks import encode_siim_rle

# --------------------------------------------------------------------------- DICOM


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    sop_uid: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "0c5d9a3e-1111-4a2b-9c3d-000000000001",
    sex: str = "M",
    age: str = "62",
    view: str | None = "PA",
    series_description: str | None = "view: PA",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 8,
    signed: bool = False,
    rescale: tuple[float, float] | None = None,
    window: tuple[float | list[float], float | list[float]] | None = None,
    jpeg: bool = False,
    syntax: str | None = None,
    preamble: bool = True,
) -> Path:
    """Write a SIIM-ACR-like secondary-capture CR DICOM with pydicom.

    Args:
        path: Output file.
        pixels: (h, w) stored values, or None for a file without pixel data.
        jpeg: Compress 8-bit pixels with Pillow's JPEG encoder (quality 95) and
            encapsulate them as JPEG Baseline, like the real SIIM-ACR files.
        syntax: Force another transfer syntax UID in the meta header (pixels left as is).
        preamble: Write the 128-byte preamble and ``DICM`` prefix (False: raw dataset).

    Returns:
        ``path``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # real files carry AS values like "62"
        ds = _secondary_capture(sop_uid, study_uid, series_uid, patient_id, sex, age)
        if view is not None:
            ds.ViewPosition = view
        if series_description is not None:
            ds.SeriesDescription = series_description
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if pixels is not None:
            _set_pixels(
                ds,
                pixels,
                photometric=photometric,
                bits_stored=bits_stored,
                signed=signed,
                jpeg=jpeg,
            )
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax
            if ds.file_meta.TransferSyntaxUID.is_compressed and pixels is not None and not jpeg:
                ds.PixelData = encapsulate([bytes(ds.PixelData)])
                ds["PixelData"].VR = "OB"
        path.parent.mkdir(parents=True, exist_ok=True)
        if preamble:
            ds.save_as(path, enforce_file_format=True)
        else:  # a bare implicit-VR data set: no preamble, no "DICM", no meta header
            with path.open("wb") as fh:
                fp = DicomFileLike(fh)
                fp.is_little_endian, fp.is_implicit_VR = True, True
                write_dataset(fp, ds)
    return path


def _secondary_capture(
    sop_uid: str | None,
    study_uid: str | None,
    series_uid: str | None,
    patient_id: str,
    sex: str,
    age: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "CR"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.PatientSex = sex
    ds.PatientAge = age
    ds.StudyDate = "19010101"
    ds.ConversionType = "WSD"
    ds.PixelSpacing = [0.168, 0.168]
    return ds


def _set_pixels(
    ds: Dataset, pixels: np.ndarray, *, photometric: str, bits_stored: int, signed: bool, jpeg: bool
) -> None:
    h, w = pixels.shape
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsStored = bits_stored
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if jpeg:
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    else:
        dtype = {
            (8, False): np.uint8,
            (8, True): np.int8,
            (16, False): np.uint16,
            (16, True): np.int16,
        }[(ds.BitsAllocated, signed)]
        ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()


def jpeg_roundtrip(pixels: np.ndarray) -> np.ndarray:
    """What Pillow decodes from the quality-95 JPEG ``write_dicom(jpeg=True)`` stores."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="JPEG", quality=95)
    buffer.seek(0)
    with Image.open(buffer) as img:
        return np.asarray(img.convert("L"))


JPEG_LS_SYNTAX = str(JPEGLSLossless)


# --------------------------------------------------------------------------- images


def write_png(path: Path, size: tuple[int, int], *, mode: str = "L", value: int = 128) -> Path:
    """A tiny image of ``size`` (w, h); RGB / RGBA modes get distinct channels."""
    w, h = size
    base = (np.arange(w * h).reshape(h, w) % 200 + value // 4).astype(np.uint8)
    if mode == "L":
        img = Image.fromarray(base, mode="L")
    elif mode == "RGB":
        img = Image.fromarray(np.stack([base, base, base], axis=-1), mode="RGB")
    elif mode == "RGBA":
        alpha = np.full_like(base, 255)
        img = Image.fromarray(np.stack([base, base, base, alpha], axis=-1), mode="RGBA")
    else:
        raise ValueError(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_jpeg(path: Path, size: tuple[int, int]) -> Path:
    """A tiny 8-bit grayscale JPEG of ``size`` (w, h)."""
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(w * h).reshape(h, w) % 251).astype(np.uint8), mode="L").save(
        path, format="JPEG"
    )
    return path


def write_text(path: Path, text: str, *, gz: bool = False) -> Path:
    """Write ``text`` (``\\n`` line ends), gzip-compressed when ``gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


# --------------------------------------------------------------------------- CheXpert

CHEXPERT_HEADER_LINE = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices"
)
# (split dir, patient, study, file, Sex, Age, Frontal/Lateral, AP/PA, 14 labels as CSV text)
CHEXPERT_TRAIN_ROWS: tuple[tuple[str, ...], ...] = (
    (
        "train",
        "patient00417",
        "study2",
        "view1_frontal.jpg",
        "Female",
        "54",
        "Frontal",
        "AP",
        ",,-1.0,1.0,,,,,,0.0,1.0,,,1.0",
    ),
    (
        "train",
        "patient00417",
        "study2",
        "view2_lateral.jpg",
        "Female",
        "54",
        "Lateral",
        "",
        ",,-1.0,1.0,,,,,,0.0,1.0,,,1.0",
    ),
    (
        "train",
        "patient03120",
        "study1",
        "view1_frontal.jpg",
        "Male",
        "77",
        "Frontal",
        "PA",
        "1.0,,0.0,,,,,,,0.0,,,,",
    ),
    (
        "train",
        "patient03120",
        "study2",
        "view2_frontal.jpg",
        "Male",
        "78",
        "Frontal",
        "PA",
        ",,,,,-1.0,,,1.0,,,,,",
    ),
    (
        "train",
        "patient03121",
        "study1",
        "view1_lateral.jpg",
        "Unknown",
        "0",
        "Lateral",
        "",
        ",,,,,,,,,1.0,,,,",
    ),
    (
        "train",
        "patient03122",
        "study1",
        "view1_frontal.jpg",
        "Female",
        "90",
        "Frontal",
        "LL",
        ",1.0,,,,,,,,,,,0.0,",
    ),
    (
        "train",
        "patient03123",
        "study1",
        "view1_frontal.jpg",
        "Male",
        "35",
        "Frontal",
        "AP",
        "1.0,,,,,,,,,,,,,",
    ),
    (
        "train",
        "patient03124",
        "study1",
        "view1_frontal.jpg",
        "Female",
        "61",
        "Frontal",
        "PA",
        ",,,,,,,,-1.0,,,,,",
    ),
    (
        "train",
        "patient03125",
        "study1",
        "view1_frontal.jpg",
        "Male",
        "48",
        "Frontal",
        "AP",
        ",,,1.0,,,,,,,,,,",
    ),
    (
        "train",
        "patient03126",
        "study1",
        "view1_frontal.jpg",
        "Female",
        "70",
        "Frontal",
        "PA",
        ",,1.0,,,,,,,,,,,",
    ),
)
CHEXPERT_VALID_ROWS: tuple[tuple[str, ...], ...] = (
    (
        "valid",
        "patient64541",
        "study1",
        "view1_frontal.jpg",
        "Male",
        "73",
        "Frontal",
        "AP",
        "0.0,1.0,1.0,1.0,0.0,1.0,1.0,0.0,1.0,0.0,0.0,0.0,0.0,1.0",
    ),
    (
        "valid",
        "patient64542",
        "study1",
        "view1_frontal.jpg",
        "Female",
        "70",
        "Frontal",
        "PA",
        "1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
    ),
    (
        "valid",
        "patient64542",
        "study1",
        "view2_lateral.jpg",
        "Female",
        "70",
        "Lateral",
        "",
        "1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
    ),
)
CHEXPERT_TEST_ROWS: tuple[tuple[str, ...], ...] = (
    ("test", "patient64741", "study1", "view1_frontal.jpg", "0,0,1,1,0,0,0,0,0,0,1,0,0,1"),
)


def chexpert_image_size(index: int) -> tuple[int, int]:
    """(w, h) of the ``index``-th CheXpert fixture image (all distinct)."""
    return 20 + index, 16 + 2 * index


def build_chexpert(
    base: Path, *, prefix: str = "CheXpert-v1.0-small", with_test: bool = False
) -> Path:
    """CheXpert tree under ``base/chexpert/<prefix>/``; returns ``base/chexpert``.

    ``valid.csv`` paths use the other prefix (full vs small) to prove both are stripped.
    """
    root = base / "chexpert"
    data = root / prefix
    other = "CheXpert-v1.0" if prefix.endswith("small") else "CheXpert-v1.0-small"
    index = 0
    for name, rows, pref in (
        ("train.csv", CHEXPERT_TRAIN_ROWS, prefix),
        ("valid.csv", CHEXPERT_VALID_ROWS, other),
    ):
        lines = [CHEXPERT_HEADER_LINE]
        for split_dir, patient, study, file, sex, age, fl, appa, labels in rows:
            lines.append(
                f"{pref}/{split_dir}/{patient}/{study}/{file},{sex},{age},{fl},{appa},{labels}"
            )
            write_jpeg(data / split_dir / patient / study / file, chexpert_image_size(index))
            index += 1
        write_text(data / name, "\n".join(lines) + "\n")
    if with_test:
        header = "Path," + CHEXPERT_HEADER_LINE.split(",", 5)[5]
        lines = [header]
        for split_dir, patient, study, file, labels in CHEXPERT_TEST_ROWS:
            lines.append(f"{split_dir}/{patient}/{study}/{file},{labels}")
            write_jpeg(data / split_dir / patient / study / file, chexpert_image_size(index))
            index += 1
        write_text(data / "test_labels.csv", "\n".join(lines) + "\n")
    return root


def base_params(**overrides: object) -> dict[str, object]:
    """The ``ingestion`` parameter block as the pipeline hands it to an adapter."""
    params: dict[str, object] = {
        "root": "",
        "split_fractions": {"train": 0.7, "val": 0.1, "test": 0.2},
        "seed": 0,
        "on_missing": "error",
        "tasks": None,
    }
    params.update(overrides)
    return params


# --------------------------------------------------------------------------- SIIM-ACR


def siim_uid(kind: int, n: int) -> str:
    """SIIM-style UID: kind 2 = study, 3 = series, 4 = SOP instance."""
    return f"1.2.276.0.7230010.3.1.{kind}.8323329.{9000 + n}.1517875000.{100000 + n}"


def blob(center: tuple[int, int], radius: int, size: int = 1024) -> np.ndarray:
    """A filled disc (row, col centre) on a size x size uint8 grid."""
    rr, cc = np.ogrid[:size, :size]
    return ((rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2).astype(np.uint8)


@dataclass
class SiimFixture:
    """A SIIM-ACR tree and what the adapter must find in it."""

    root: Path
    csv: Path
    tube: Path
    instances: dict[str, list[np.ndarray]] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    tube_labels: dict[str, bool] = field(default_factory=dict)
    unlabelled: str = ""


# (n, patient, sex, age, view, series description, photometric, instance masks, tube label)
SIIM_IMAGES: tuple[tuple[object, ...], ...] = (
    (1, "p-a", "M", "62", "PA", "view: PA", "MONOCHROME2", [], False),
    (
        2,
        "p-b",
        "F",
        "45",
        "AP",
        "view: AP",
        "MONOCHROME2",
        [((150, 300), 40), ((160, 700), 30)],
        True,
    ),
    (3, "p-c", "M", "71", "PA", "view: PA", "MONOCHROME1", [((200, 250), 25)], None),
    (4, "p-d", "F", "058Y", None, "view: AP", "MONOCHROME2", [], None),
    (5, "p-e", "M", "33", "PA", "view: PA", "MONOCHROME2", [((120, 760), 35)], None),
    (6, "p-f", "F", "", "PA", "view: PA", "MONOCHROME2", [], None),
    (7, "p-g", "M", "50", "AP", "view: AP", "MONOCHROME2", [], None),
    (8, "p-h", "F", "29", "PA", "view: PA", "MONOCHROME2", [], None),
)


def build_siim(
    base: Path,
    *,
    leading_space_values: bool = True,
    header: str = "ImageId, EncodedPixels",
    size: int = 1024,
) -> SiimFixture:
    """SIIM-ACR tree: JPEG-compressed DICOMs in Study/Series folders, train-rle.csv, tube pickle.

    One extra DICOM has no CSV row; the tube dict also names an ImageId that is not on disk.
    """
    root = base / "siim"
    fx = SiimFixture(root=root, csv=root / "train-rle.csv", tube=root / "cxr_tube_dict.pkl")
    lines = [header]
    pad = " " if leading_space_values else ""
    pixels = (np.add.outer(np.arange(size), np.arange(size)) % 256).astype(np.uint8)
    for n, patient, sex, age, view, desc, photometric, shapes, tube in SIIM_IMAGES:
        sop = siim_uid(4, n)
        path = root / "dicom-images-train" / siim_uid(2, n) / siim_uid(3, n) / f"{sop}.dcm"
        write_dicom(
            path,
            pixels,
            sop_uid=sop,
            study_uid=siim_uid(2, n),
            series_uid=siim_uid(3, n),
            patient_id=patient,
            sex=sex,
            age=age,
            view=view,
            series_description=desc,
            photometric=photometric,
            jpeg=True,
        )
        masks = [blob(c, r, size) for c, r in shapes]
        fx.instances[sop] = masks
        fx.patients[sop] = patient
        lines += [f"{sop},{pad}{encode_siim_rle(m)}" for m in masks] or [f"{sop},{pad}-1"]
        if tube is not None:
            fx.tube_labels[sop] = tube
    extra = siim_uid(4, 99)
    write_dicom(
        root / "dicom-images-train" / siim_uid(2, 99) / siim_uid(3, 99) / f"{extra}.dcm",
        pixels[:8, :8],
        sop_uid=extra,
        jpeg=True,
    )
    fx.unlabelled = extra
    write_text(fx.csv, "\n".join(lines) + "\n")
    (root / "dicom-images-train" / ".DS_Store").write_bytes(b"\x00\x00")
    with fx.tube.open("wb") as fh:
        pickle.dump({**fx.tube_labels, siim_uid(4, 98): True}, fh, protocol=4)
    return fx


# --------------------------------------------------------------------------- NIH ChestX-ray14

NIH_HEADER_V2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
# (image, labels, follow-up, patient id, age, sex, view, list); follow-up differs from the suffix.
NIH_ROWS: tuple[tuple[str, ...], ...] = (
    ("00004521_000.png", "Effusion|Infiltration", "0", "4521", "63", "F", "AP", "train"),
    ("00004521_001.png", "No Finding", "1", "4521", "63", "F", "PA", "train"),
    ("00017733_002.png", "Pleural_Thickening", "0", "17733", "41", "M", "PA", "train"),
    ("00011290_003.png", "Infiltration|Nodule", "2", "11290", "414", "M", "PA", "train"),
    ("00030001_000.png", "No Finding", "0", "30001", "25", "F", "PA", "train"),
    ("00030002_000.png", "Cardiomegaly", "0", "30002", "70", "M", "AP", "train"),
    ("00030003_000.png", "Hernia|Mass", "0", "30003", "88", "F", "PA", "train"),
    ("00030004_000.png", "No Finding", "0", "30004", "52", "M", "PA", "train"),
    ("00040001_000.png", "Pneumothorax", "0", "40001", "33", "F", "AP", "test"),
    (
        "00040002_001.png",
        "Emphysema|Fibrosis|Edema|Consolidation|Pneumonia|Atelectasis",
        "0",
        "40002",
        "60",
        "M",
        "PA",
        "test",
    ),
)
NIH_BBOX_LINES = (
    "Image Index,Finding Label,Bbox [x,y,w,h],,,",
    "00004521_000.png,Effusion,12.5,10.1333,20.2667,25.7333",
    "00011290_003.png,Infiltrate,19.0,33.6667,22.4444,20.0",
    "00011290_003.png,Nodule,40.25,5.5,4.0,3.75",
    "00011290_003.png,Nodule,50.0,40.0,5.0,6.0",
)
NIH_SIZE = 64
NIH_RGBA = "00030002_000"


def build_nih(
    base: Path, *, variant: str = "v2020", with_lists: bool = True, with_boxes: bool = True
) -> Path:
    """NIH tree in the Kaggle layout (``images_00N/images/*.png``); one RGBA PNG.

    ``variant='2017'`` writes ``Data_Entry_2017.csv`` with each line's trailing comma.
    """
    root = base / "nih"
    trailing = "," if variant == "2017" else ""
    lines = [NIH_HEADER_V2020 + trailing]
    for k, (image, labels, follow, pid, age, sex, view, _split) in enumerate(NIH_ROWS):
        lines.append(
            f"{image},{labels},{follow},{pid},{age},{sex},{view},2500,2048,0.168,0.168{trailing}"
        )
        mode = "RGBA" if image.startswith(NIH_RGBA) else "L"
        write_png(
            root / f"images_00{1 + k % 2}" / "images" / image,
            (NIH_SIZE, NIH_SIZE),
            mode=mode,
            value=40 + k,
        )
    name = "Data_Entry_2017.csv" if variant == "2017" else "Data_Entry_2017_v2020.csv"
    write_text(root / name, "\n".join(lines) + "\n")
    if with_lists:
        for list_name, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
            write_text(root / list_name, "".join(f"{r[0]}\n" for r in NIH_ROWS if r[7] == split))
    if with_boxes:
        write_text(root / "BBox_List_2017.csv", "\n".join(NIH_BBOX_LINES) + "\n")
    return root


# --------------------------------------------------------------------------- MIMIC-CXR-JPG

MIMIC_META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
MIMIC_LABEL_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
    "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
    "Pneumothorax,Support Devices"
)


def mimic_dicom_id(n: int) -> str:
    """A dicom_id: 5 hyphenated groups of 8 hex characters."""
    return "-".join(f"{(n * 2654435761 + k * 40503) % 16**8:08x}" for k in range(5))


# (n, subject, study, ViewPosition, Rows, Columns, StudyDate, StudyTime, split)
MIMIC_IMAGES: tuple[tuple[object, ...], ...] = (
    (1, "10999901", "59999901", "PA", 24, 20, "21530412", "84517.234", "train"),
    (2, "10999901", "59999901", "LATERAL", 24, 20, "21530412", "84517.234", "train"),
    (3, "10999901", "59999902", "AP", 22, 26, "21560101", "120000", "train"),
    (4, "11888802", "58888802", "AP", 26, 22, "21870101", "213014.5", "train"),
    (5, "11888802", "58888802", "", 26, 22, "21870101", "213014.5", "train"),
    (6, "12777703", "57777703", "PA", 20, 20, "21000505", "93000", "train"),
    (7, "13666604", "56666604", "PA", 20, 24, "21200202", "101010", "validate"),
    (8, "14555505", "55555505", "LL", 20, 24, "21300303", "5959.5", "test"),
)
MIMIC_CHEXPERT_ROWS = (
    "10999901,59999901,,1.0,,-1.0,,,,1.0,,1.0,,,0.0,",
    "10999901,59999902,1.0,,,,,,,,,,,,,1.0",
    "11888802,58888802,,,,,,,,,1.0,,,,,",
    "12777703,57777703,,,1.0,,,,,,,,,-1.0,,",
    "13666604,56666604,0.0,0.0,,,,,,,,,,,1.0,",
)
MIMIC_NEGBIO_ROWS = (
    "10999901,59999901,,1.0,,1.0,,,,1.0,,1.0,,,0.0,",
    "10999901,59999902,1.0,,,,,,,,,,,,,1.0",
    "11888802,58888802,,,,,,,,,1.0,,,,,",
    "12777703,57777703,,,1.0,,,,,,,,,-1.0,,",
    "13666604,56666604,0.0,0.0,,,,,,,,,,,1.0,",
)
MIMIC_PATIENTS = (
    "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "10999901,F,52,2153,2014 - 2016,",
    "11888802,M,91,2180,2008 - 2010,2188-01-01",
    "13666604,F,30,2120,2017 - 2019,",
    "14555505,M,40,2130,2011 - 2013,",
)
MIMIC_ADMISSIONS_V2 = (
    (
        "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,"
        "admission_location,discharge_location,insurance,language,marital_status,race,edregtime,"
        "edouttime,hospital_expire_flag"
    ),
    (
        "10999901,27777701,2153-04-11 09:12:00,2153-04-14 15:00:00,,EW EMER.,P12ABC,EMERGENCY ROOM,"
        "HOME,Medicare,English,MARRIED,WHITE,2153-04-11 05:40:00,2153-04-11 09:30:00,0"
    ),
    (
        "10999901,27777702,2156-01-03 10:00:00,2156-01-05 12:00:00,,URGENT,P12ABC,"
        "WALK-IN/SELF REFERRAL,HOME,Other,English,MARRIED,BLACK/AFRICAN AMERICAN,,,0"
    ),
    (
        "10999901,27777703,2150-06-01 10:00:00,2150-06-02 12:00:00,,ELECTIVE,P12ABC,"
        "PHYSICIAN REFERRAL,HOME,Medicaid,English,MARRIED,WHITE,,,0"
    ),
    (
        "11888802,26666601,2187-01-01 20:00:00,2187-01-09 10:00:00,,EW EMER.,P34DEF,EMERGENCY ROOM,"
        "SKILLED NURSING FACILITY,Medicaid,English,WIDOWED,UNABLE TO OBTAIN,,,0"
    ),
    (
        "13666604,25555501,2120-02-02 08:00:00,2120-02-03 08:00:00,,EW EMER.,P56GHI,EMERGENCY ROOM,"
        "HOME,Private,English,SINGLE,ASIAN,,,0"
    ),
)


def build_mimic(base: Path, *, mimic_iv: str | None = "v2") -> Path:
    """MIMIC-CXR-JPG tree (gzipped tables, files/pXX/p<subject>/s<study>/) + MIMIC-IV.

    ``mimic_iv``: ``v2`` (``hosp/``, ``race``), ``v1`` (``core/``, ``ethnicity``) or None.
    Study 55555505 has no label row (as ~2.4k real studies); subject 12777703 has no
    MIMIC-IV rows.
    """
    root = base / "mimic-cxr-jpg"
    meta = [MIMIC_META_HEADER]
    split = ["dicom_id,study_id,subject_id,split"]
    for n, subject, study, view, rows, cols, date, time, split_name in MIMIC_IMAGES:
        dicom = mimic_dicom_id(n)
        meaning = {
            "PA": "postero-anterior",
            "AP": "antero-posterior",
            "LATERAL": "lateral",
            "LL": "left lateral",
        }.get(view, "")
        meta.append(
            f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},{rows},{cols},{date},{time},"
            f"CHEST (PA AND LAT),{meaning},Erect"
        )
        split.append(f"{dicom},{study},{subject},{split_name}")
        write_jpeg(
            root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg",
            (cols, rows),
        )
    write_text(root / "mimic-cxr-2.0.0-metadata.csv.gz", "\n".join(meta) + "\n", gz=True)
    write_text(root / "mimic-cxr-2.0.0-split.csv.gz", "\n".join(split) + "\n", gz=True)
    write_text(
        root / "mimic-cxr-2.0.0-chexpert.csv.gz",
        "\n".join([MIMIC_LABEL_HEADER, *MIMIC_CHEXPERT_ROWS]) + "\n",
        gz=True,
    )
    write_text(
        root / "mimic-cxr-2.0.0-negbio.csv.gz",
        "\n".join([MIMIC_LABEL_HEADER, *MIMIC_NEGBIO_ROWS]) + "\n",
        gz=True,
    )
    if mimic_iv == "v2":
        iv = base / "mimic-iv" / "hosp"
        admissions = list(MIMIC_ADMISSIONS_V2)
    elif mimic_iv == "v1":
        iv = base / "mimic-iv" / "core"
        admissions = [_to_v1(line) for line in MIMIC_ADMISSIONS_V2]
    else:
        return root
    write_text(iv / "patients.csv.gz", "\n".join(MIMIC_PATIENTS) + "\n", gz=True)
    write_text(iv / "admissions.csv.gz", "\n".join(admissions) + "\n", gz=True)
    return root


def _to_v1(line: str) -> str:
    """MIMIC-IV v1.0 admissions: no admit_provider_id; ``race`` was ``ethnicity``."""
    fields = line.split(",")
    del fields[6]
    return ",".join(fields).replace(",race,", ",ethnicity,")


# --------------------------------------------------------------------------- MURA

# (split, body part, patient, study, n images, label, rgb)
MURA_STUDIES: tuple[tuple[object, ...], ...] = (
    ("train", "XR_WRIST", "patient02345", "study1_positive", 2, 1, False),
    ("train", "XR_HAND", "patient02345", "study1_negative", 1, 0, True),
    ("train", "XR_ELBOW", "patient00011", "study1_negative", 1, 0, False),
    ("train", "XR_SHOULDER", "patient00012", "study2_positive", 3, 1, False),
    ("train", "XR_FINGER", "patient00013", "study1_negative", 1, 0, False),
    ("train", "XR_HUMERUS", "patient00014", "study1_positive", 1, 1, False),
    ("valid", "XR_HAND", "patient11301", "study2_negative", 1, 0, False),
    ("valid", "XR_FOREARM", "patient11302", "study1_positive", 2, 1, True),
)


def build_mura(base: Path) -> Path:
    """MURA-v1.1 tree under ``base/mura``; some RGB PNGs and stray ``._*`` / ``.DS_Store`` files."""
    root = base / "mura"
    data = root / "MURA-v1.1"
    paths: dict[str, list[str]] = {"train": [], "valid": []}
    studies: dict[str, list[str]] = {"train": [], "valid": []}
    for k, (split, body, patient, study, n, label, rgb) in enumerate(MURA_STUDIES):
        rel = f"MURA-v1.1/{split}/{body}/{patient}/{study}/"
        studies[split].append(f"{rel},{label}")
        for m in range(1, n + 1):
            paths[split].append(f"{rel}image{m}.png")
            write_png(root / f"{rel}image{m}.png", (30 + k, 40 + m), mode="RGB" if rgb else "L")
        (root / rel / f"._image{n}.png").write_bytes(b"\x00\x05\x16\x07")
    (data / "train" / ".DS_Store").write_bytes(b"\x00")
    for split in ("train", "valid"):
        write_text(data / f"{split}_image_paths.csv", "\n".join(paths[split]) + "\n")
        write_text(data / f"{split}_labeled_studies.csv", "\n".join(studies[split]) + "\n")
    return root
