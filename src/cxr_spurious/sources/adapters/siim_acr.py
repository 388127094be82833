"""SIIM-ACR Pneumothorax (Kaggle 2019): DICOM tree, ``train-rle.csv`` and the tube labels.

Layout (``root`` is the folder holding ``train-rle.csv``)::

    <root>/train-rle.csv                                   ("ImageId, EncodedPixels")
    <root>/dicom-images-train/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm

* DICOMs are found by file stem (= ``ImageId``) anywhere below ``dicom-images-train/``.
* ``EncodedPixels`` is SIIM's relative, column-major RLE (``decode_siim_rle``); ``-1`` is
  an empty mask. All rows of an image are unioned into its ``Pneumothorax`` mask and kept
  one by one in ``instance_segmentations``.
* Sex, age and view come from the DICOM headers; ``patient_id`` is the DICOM PatientID.
* ``tube_labels`` (path, relative to ``root`` or absolute): the chest-tube labels of Saab
  et al. (MLHC 2022), a pickled ``{ImageId: bool}`` read with the restricted unpickler;
  they fill ``tube`` and, as in the paper, the tube-labelled images (with every other image
  of their patients) form the ``test`` split. ``val`` (and ``test`` without tube labels)
  is carved from the remaining patients with ``split_fractions``.
* DICOMs without a CSV row are unlabelled and left out (counted in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.dicom import DicomHeader, read_dicom_header
from cxr_spurious.io.masks import decode_siim_rle, encode_rle
from cxr_spurious.io.safe_pickle import load_pickle
from cxr_spurious.progress import progress_bar
from cxr_spurious.sources.adapters import _common as common
from cxr_spurious.sources.adapters.base import IngestedSource, Json
from cxr_spurious.sources.contract import normalise_manifest

logger = logging.getLogger(__name__)

SOURCE = "siim_acr"
TASK = "Pneumothorax"
RLE_FILE = "train-rle.csv"
IMAGE_DIR = "dicom-images-train"
HEADER = ("ImageId", "EncodedPixels")
EMPTY = "-1"


def read_rle_csv(path: Path) -> pd.DataFrame:
    """Read ``train-rle.csv``: header and values stripped of the stray leading spaces.

    Returns:
        Columns ``ImageId``, ``EncodedPixels`` and ``_ref`` (``line N``).

    Raises:
        DataFormatError: a changed header or an empty ``EncodedPixels`` value.
    """
    found = [c.strip() for c in common.read_first_line(path).split(",")]
    common.check_header(path, found, HEADER)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = list(HEADER)
    frame = frame.apply(lambda c: c.str.strip())
    frame["_ref"] = [common.csv_line(i) for i in range(len(frame))]
    empty = (frame["EncodedPixels"] == "") | (frame["ImageId"] == "")
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataFormatError(
            path,
            "empty ImageId or EncodedPixels; expected a UID and '-1' or 'offset length ...' pairs",
            where=frame["_ref"].iat[i],
        )
    return frame


def masks_for_image(
    rows: pd.DataFrame, height: int, width: int, *, source_file: Path
) -> list[np.ndarray]:
    """Decode the instance masks of one image (``-1`` rows contribute none).

    Raises:
        DataFormatError: a malformed RLE or runs beyond the image (names the CSV line).
    """
    masks = []
    for encoded, ref in zip(rows["EncodedPixels"], rows["_ref"]):
        if encoded == EMPTY:
            continue
        masks.append(
            decode_siim_rle(
                encoded,
                height,
                width,
                source=source_file,
                where=f"{ref}, ImageId {rows['ImageId'].iat[0]}",
            )
        )
    if masks and (rows["EncodedPixels"] == EMPTY).any():
        logger.warning(
            "%s: ImageId %s has both '-1' and RLE rows (%s); the '-1' rows are ignored",
            source_file,
            rows["ImageId"].iat[0],
            ", ".join(rows["_ref"]),
        )
    return masks


def load_tube_labels(path: Path) -> dict[str, float]:
    """Load Saab et al.'s ``cxr_tube_dict.pkl`` ({ImageId: bool}) safely.

    Returns:
        ``{ImageId: 1.0 | 0.0}``.

    Raises:
        DataFormatError: not a pickled dict of str -> bool (names the offending key).
    """
    if not path.is_file():
        raise DataFormatError(path, "tube labels file (ingestion.tube_labels) not found")
    labels = load_pickle(path)
    if not isinstance(labels, dict):
        raise DataFormatError(
            path, f"expected a pickled dict {{ImageId: bool}}, got {type(labels).__name__}"
        )
    out: dict[str, float] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, bool | int) or value not in (0, 1):
            raise DataFormatError(path, f"expected str ImageId -> bool, got {key!r}: {value!r}")
        out[key.strip().removesuffix(".dcm")] = float(value)
    return out


def read_siim_acr(root: Path, params: Mapping[str, Any]) -> IngestedSource:
    """Read SIIM-ACR: DICOM headers, unioned and per-instance pneumothorax masks, tube labels.

    Args:
        root: The folder holding ``train-rle.csv`` and ``dicom-images-train/``.
        params: The ``ingestion`` block (``tube_labels``, ``on_missing``, ``sex_conflict``,
            ``split_fractions``, ``seed``, ``tasks``).

    Returns:
        Manifest with the ``Pneumothorax`` task, segmentations for every image (empty for
        ``-1``), instance segmentations for positive images, no polygons.

    Raises:
        DataFormatError: see ``read_rle_csv``, ``masks_for_image``, ``load_tube_labels``; a
            missing DICOM or one without pixel data (``on_missing: error``).
    """
    on_missing = common.on_missing_param(params)
    sex_rule = common.choice_param(params, "sex_conflict", common.SEX_CONFLICT_RULES, "error")
    tasks = common.select_tasks((TASK,), params)
    folder = common.find_dataset_dir(Path(root), RLE_FILE, ())
    csv_path = folder / RLE_FILE
    rle = read_rle_csv(csv_path)
    index = common.index_files(folder / IMAGE_DIR, ".dcm")
    groups = {image_id: group for image_id, group in rle.groupby("ImageId", sort=False)}
    headers = _read_headers(groups, index, csv_path, on_missing)
    unlabelled = len(set(index) - set(groups))
    if unlabelled:
        logger.info(
            "%s: %d DICOM(s) below %s have no row in %s; left out (no label)",
            SOURCE,
            unlabelled,
            IMAGE_DIR,
            RLE_FILE,
        )
    segmentations, instances, positive = _segmentations(groups, headers, csv_path)
    rows = _manifest_rows(headers, positive)
    rows["sex"] = common.resolve_sex_conflicts(
        rows,
        sex_rule,
        source_file=f"{IMAGE_DIR} (PatientSex)",
        row_refs=[str(p) for p in rows["path"]],
    )
    tube_path = common.path_param(params, "tube_labels", folder)
    tube = load_tube_labels(tube_path) if tube_path is not None else {}
    rows["tube"] = rows["image_id"].map(tube).astype("float64")
    rows["split"] = _splits(rows, tube, params, tube_path)
    manifest = normalise_manifest(rows, tasks, SOURCE)
    logger.info(
        "siim_acr: %d images (%d positive), splits %s",
        len(manifest),
        int(manifest[TASK].sum()),
        manifest["split"].value_counts().to_dict(),
    )
    return IngestedSource(
        manifest=manifest,
        tasks=tasks,
        segmentations=segmentations,
        instance_segmentations=instances,
    )


def _read_headers(
    groups: Mapping[str, pd.DataFrame], index: Mapping[str, Path], csv_path: Path, on_missing: str
) -> dict[str, DicomHeader]:
    """Header of each CSV image's DICOM; missing files / pixel data raise or are skipped."""
    missing = [image_id for image_id in groups if image_id not in index]
    if missing:
        first = groups[missing[0]]["_ref"].iat[0]
        common.skip_or_raise(
            f"ImageId {missing[0]} has no DICOM file '{missing[0]}.dcm' below {IMAGE_DIR}/",
            source_file=csv_path,
            where=first,
            on_missing=on_missing,
            count=len(missing),
        )
    headers: dict[str, DicomHeader] = {}
    no_pixels: list[str] = []
    for image_id in progress_bar([i for i in groups if i in index], desc="read DICOM headers"):
        header = read_dicom_header(index[image_id])
        if header.has_pixel_data:
            headers[image_id] = header
        else:
            no_pixels.append(image_id)
    if no_pixels:
        common.skip_or_raise(
            f"DICOM {index[no_pixels[0]]} has no pixel data",
            source_file=csv_path,
            where=groups[no_pixels[0]]["_ref"].iat[0],
            on_missing=on_missing,
            count=len(no_pixels),
        )
    return headers


def _segmentations(
    groups: Mapping[str, pd.DataFrame], headers: Mapping[str, DicomHeader], csv_path: Path
) -> tuple[Json, Json, dict[str, float]]:
    """Union masks (all images), instance masks (positive images) and the image label."""
    segmentations: Json = {}
    instances: Json = {}
    positive: dict[str, float] = {}
    empty_cache: dict[tuple[int, int], dict[str, Any]] = {}
    for image_id, header in progress_bar(headers.items(), desc="decode SIIM RLE"):
        h, w = header.rows, header.columns
        masks = masks_for_image(groups[image_id], h, w, source_file=csv_path)
        positive[image_id] = 1.0 if masks else 0.0
        if masks:
            union = np.maximum.reduce(masks)
            segmentations[image_id] = {TASK: encode_rle(union)}
            instances[image_id] = {TASK: [encode_rle(m) for m in masks]}
        else:
            if (h, w) not in empty_cache:
                empty_cache[(h, w)] = encode_rle(np.zeros((h, w), dtype=np.uint8))
            segmentations[image_id] = {TASK: dict(empty_cache[(h, w)])}
    return segmentations, instances, positive


def _manifest_rows(
    headers: Mapping[str, DicomHeader], positive: Mapping[str, float]
) -> pd.DataFrame:
    """One manifest row per DICOM header."""
    records = []
    for image_id, h in headers.items():
        records.append(
            {
                "image_id": image_id,
                "patient_id": h.patient_id or image_id,
                "study_id": h.study_instance_uid or Path(h.path).parent.parent.name,
                "path": h.path,
                "view": h.view,
                "width": h.columns,
                "height": h.rows,
                TASK: positive[image_id],
                "sex": h.sex,
                "age_years": h.age_years,
            }
        )
    return pd.DataFrame.from_records(records)


def _splits(
    rows: pd.DataFrame, tube: Mapping[str, float], params: Mapping[str, Any], tube_path: Path | None
) -> pd.Series:
    """Tube-labelled images (and their patients) -> test; val (and test) carved by patient."""
    fractions, seed = common.fractions_param(params), common.seed_param(params)
    split = pd.Series("train", index=rows.index, dtype=object)
    if tube:
        labelled = rows["image_id"].isin(list(tube))
        absent = len(set(tube) - set(rows["image_id"]))
        if absent:
            logger.warning(
                "%s: %d of %d tube-labelled ImageIds are not among the ingested images",
                tube_path,
                absent,
                len(tube),
            )
        test_patients = set(rows.loc[labelled, "patient_id"])
        split[rows["patient_id"].isin(test_patients)] = "test"
        return common.carve_splits(
            split, rows["patient_id"], fractions, seed, from_split="train", into=["val"]
        )
    return common.carve_splits(
        split, rows["patient_id"], fractions, seed, from_split="train", into=["val", "test"]
    )
