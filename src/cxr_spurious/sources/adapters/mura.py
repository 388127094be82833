"""MURA v1.1 (musculoskeletal radiographs): header-less path and study-label CSVs.

Layout (``root`` is ``MURA-v1.1/`` or its parent)::

    <root>/MURA-v1.1/{train,valid}_image_paths.csv        (no header; one path per line)
    <root>/MURA-v1.1/{train,valid}_labeled_studies.csv    (no header; "<study dir>/,<0|1>")
    <root>/MURA-v1.1/{train,valid}/XR_<BODY>/patientNNNNN/studyK_{positive,negative}/imageM.png

Study labels (1 = abnormal) are copied to every image of the study as the task
``Abnormal`` and must agree with the folder suffix. The body part (``XR_WRIST`` ->
``wrist``) is the extra column ``body_part``. Splits: ``train`` -> ``train``, ``valid`` ->
``val``; the test set is hidden, so ``test`` is carved from the training patients by
``split_fractions``. Paths of OS clutter (``._*``, ``.DS_Store``) are dropped (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import DataFormatError
from cxr_spurious.sources.adapters import _common as common
from cxr_spurious.sources.adapters.base import IngestedSource
from cxr_spurious.sources.contract import normalise_manifest

logger = logging.getLogger(__name__)

SOURCE = "mura"
TASK = "Abnormal"
DATASET_DIR = "MURA-v1.1"
SPLITS = (("train", "train"), ("valid", "val"))
BODY_PARTS = (
    "XR_ELBOW",
    "XR_FINGER",
    "XR_FOREARM",
    "XR_HAND",
    "XR_HUMERUS",
    "XR_SHOULDER",
    "XR_WRIST",
)
STUDY_SUFFIX = {"positive": 1.0, "negative": 0.0}


def split_mura_path(path: str, *, source_file: Path, where: str, image: bool) -> tuple[str, ...]:
    """Parts from the split folder on: (split, XR_BODY, patientN, studyK_label[, imageM.png]).

    Raises:
        DataFormatError: the path does not follow the MURA layout.
    """
    parts = PurePosixPath(path.strip().rstrip("/")).parts
    size = 5 if image else 4
    for i, part in enumerate(parts):
        if part in ("train", "valid"):
            rest = parts[i:]
            if (
                len(rest) == size
                and rest[1] in BODY_PARTS
                and rest[2].startswith("patient")
                and rest[3].rsplit("_", 1)[-1] in STUDY_SUFFIX
            ):
                return rest
            break
    shape = "MURA-v1.1/{train,valid}/XR_<BODY>/patientN/studyK_{positive,negative}" + (
        "/imageM.png" if image else "/"
    )
    raise DataFormatError(
        source_file, f"{path.strip()!r} is not '{shape}' (the CSVs have no header)", where=where
    )


def read_headerless(path: Path, names: list[str]) -> pd.DataFrame:
    """Read a header-less MURA CSV (the first line is data, not a header).

    Raises:
        DataFormatError: wrong number of fields.
    """
    if not path.is_file():
        raise DataFormatError(path, "MURA CSV not found")
    try:
        frame = pd.read_csv(
            path, header=None, names=names, dtype=str, keep_default_na=False, index_col=False
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataFormatError(
            path, f"expected {len(names)} field(s) per line and no header: {exc}"
        ) from exc
    frame["_ref"] = [common.csv_line(i, header=False) for i in range(len(frame))]
    return frame


def read_study_labels(path: Path) -> dict[tuple[str, ...], float]:
    """``{(split, body, patient, study): label}`` from a ``*_labeled_studies.csv``.

    Raises:
        DataFormatError: a bad path, a label other than 0/1, or one that contradicts the
            study folder's ``_positive`` / ``_negative`` suffix.
    """
    frame = read_headerless(path, ["study", "label"])
    labels: dict[tuple[str, ...], float] = {}
    for study, label, ref in zip(frame["study"], frame["label"], frame["_ref"]):
        key = split_mura_path(study, source_file=path, where=ref, image=False)
        if label.strip() not in ("0", "1"):
            raise DataFormatError(
                path, f"label {label!r}; expected 0 (normal) or 1 (abnormal)", where=ref
            )
        value = float(label.strip())
        if STUDY_SUFFIX[key[3].rsplit("_", 1)[-1]] != value:
            raise DataFormatError(
                path, f"label {label.strip()} contradicts the study folder '{key[3]}'", where=ref
            )
        labels[key] = value
    return labels


def read_mura(root: Path, params: Mapping[str, Any]) -> IngestedSource:
    """Read MURA v1.1.

    Args:
        root: ``MURA-v1.1/`` or the folder holding it.
        params: The ``ingestion`` block (common keys).

    Returns:
        Manifest with the task ``Abnormal`` and the extra column ``body_part``.

    Raises:
        DataFormatError: a bad path or label, an image whose study has no label or whose
            file is missing (``on_missing: error``).
    """
    on_missing = common.on_missing_param(params)
    tasks = common.select_tasks((TASK,), params)
    folder = common.find_dataset_dir(Path(root), "train_image_paths.csv", (DATASET_DIR,))
    frames = [_split_rows(folder, name, split, on_missing) for name, split in SPLITS]
    rows = pd.concat(frames, ignore_index=True)
    common.check_unique_ids(rows["image_id"], list(rows["_ref"]), source_file=folder)
    common.check_patient_disjoint(
        rows["split"], rows["patient_id"], source_file=f"{folder}/{{train,valid}}_image_paths.csv"
    )
    keep = common.keep_existing(
        [Path(p) for p in rows["path"]],
        list(rows["_ref"]),
        source_file=folder,
        on_missing=on_missing,
    )
    rows = rows[keep].reset_index(drop=True)
    rows["split"] = common.carve_splits(
        rows["split"],
        rows["patient_id"],
        common.fractions_param(params),
        common.seed_param(params),
        from_split="train",
        into=["test"],
    )
    rows["width"], rows["height"] = common.image_sizes([Path(p) for p in rows["path"]])
    rows["view"] = np.nan
    manifest = normalise_manifest(rows.drop(columns=["_ref"]), tasks, SOURCE)
    logger.info(
        "mura: %d images, %d studies, splits %s",
        len(manifest),
        manifest["study_id"].nunique(),
        manifest["split"].value_counts().to_dict(),
    )
    return IngestedSource(manifest=manifest, tasks=tasks)


def _split_rows(folder: Path, name: str, split: str, on_missing: str) -> pd.DataFrame:
    """Manifest rows of one official split (``train`` or ``valid``)."""
    paths_csv = folder / f"{name}_image_paths.csv"
    labels = read_study_labels(folder / f"{name}_labeled_studies.csv")
    frame = read_headerless(paths_csv, ["path"])
    stray = frame["path"].map(common.is_stray_file)
    if stray.any():
        logger.warning(
            "%s: %d OS clutter path(s) (._*, .DS_Store) dropped, first %s",
            paths_csv,
            int(stray.sum()),
            frame.loc[stray, "_ref"].iat[0],
        )
        frame = frame[~stray]
    parts = [
        split_mura_path(p, source_file=paths_csv, where=r, image=True)
        for p, r in zip(frame["path"], frame["_ref"])
    ]
    label = [labels.get(p[:4], np.nan) for p in parts]
    unlabelled = np.isnan(label)
    if unlabelled.any():
        i = int(np.flatnonzero(unlabelled)[0])
        common.skip_or_raise(
            f"study {'/'.join(parts[i][:4])}/ of this image "
            f"has no row in {name}_labeled_studies.csv",
            source_file=paths_csv,
            where=frame["_ref"].iat[i],
            on_missing=on_missing,
            count=int(unlabelled.sum()),
        )
    rows = pd.DataFrame(
        {
            "image_id": ["_".join((p[1], p[2], p[3], PurePosixPath(p[4]).stem)) for p in parts],
            "patient_id": [p[2] for p in parts],
            "study_id": [f"{p[2]}_{p[1]}_{p[3]}" for p in parts],
            "path": [str(folder.joinpath(*p)) for p in parts],
            "split": split,
            TASK: label,
            "body_part": [p[1].removeprefix("XR_").lower() for p in parts],
            "_ref": [f"{paths_csv.name} {r}" for r in frame["_ref"]],
        }
    )
    return rows[~unlabelled].reset_index(drop=True)
