"""CheXpert v1.0 (full or ``-small``): ``train.csv`` / ``valid.csv`` and the image tree.

Layout (``root`` is the folder holding the CSVs, or its parent)::

    <root>/CheXpert-v1.0-small/train.csv, valid.csv[, test_labels.csv]
    <root>/CheXpert-v1.0-small/{train,valid,test}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg

Splits: official ``train.csv`` -> ``train``, ``valid.csv`` -> ``val`` (the CheXlocalize
convention: CheXpert valid is the validation set, the CheXlocalize test set is the test
set); ``test_labels.csv`` (released with CheXlocalize) -> ``test`` when present, otherwise a
test split is carved from the training patients with ``split_fractions``.

Parameters (``ingestion.*``): ``uncertainty_policy`` (ignore | zeros | ones; -1.0 -> NaN / 0
/ 1), ``frontal_only`` (bool), ``sex_conflict`` (error | missing), plus the common
``on_missing``, ``tasks``, ``split_fractions``, ``seed``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import DataFormatError
from cxr_spurious.sources.adapters import _common as common
from cxr_spurious.sources.adapters.base import IngestedSource
from cxr_spurious.sources.contract import normalise_manifest
from cxr_spurious.tasks import CHEXPERT_HEADER, CHEXPERT_OBSERVATIONS, task_column

logger = logging.getLogger(__name__)

SOURCE = "chexpert"
# `AP/PA` values of rows marked Frontal that are not frontal views (frontal_only drops them).
LATERAL_VIEWS: tuple[str, ...] = ("LL", "RL")
DATASET_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
# (file, split, header): test_labels.csv carries no demographic columns.
LABEL_FILES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("train.csv", "train", CHEXPERT_HEADER),
    ("valid.csv", "val", CHEXPERT_HEADER),
    ("test_labels.csv", "test", ("Path", *CHEXPERT_OBSERVATIONS)),
)
SPLIT_DIRS = ("train", "valid", "test")
SEX_VALUES = {"Male": "M", "Female": "F"}
TASKS: tuple[str, ...] = tuple(task_column(o) for o in CHEXPERT_OBSERVATIONS)


def split_csv_path(csv_path: str, *, source_file: Path, where: str) -> tuple[str, ...]:
    """Path parts from the split folder on.

    ``CheXpert-v1.0-small/train/p/s/v.jpg`` -> (train, p, s, v.jpg).

    Raises:
        DataFormatError: no ``train/`` / ``valid/`` / ``test/`` folder in the path, or not
            ``<split>/patientN/studyN/<file>``.
    """
    parts = PurePosixPath(str(csv_path).strip().replace("\\", "/")).parts
    for i, part in enumerate(parts):
        if part in SPLIT_DIRS:
            rest = parts[i:]
            if (
                len(rest) != 4
                or not rest[1].startswith("patient")
                or not rest[2].startswith("study")
            ):
                break
            return rest
    raise DataFormatError(
        source_file,
        f"Path {csv_path!r} is not "
        "'<prefix>/{train,valid,test}/patientN/studyN/viewN_<orientation>.jpg'",
        where=where,
    )


def read_label_file(path: Path, split: str, header: tuple[str, ...]) -> pd.DataFrame:
    """Read one labels CSV, checking its header; adds ``_split`` and ``_ref`` (file and line).

    Raises:
        DataFormatError: the header differs from the documented one.
    """
    found = [c.strip() for c in common.read_first_line(path).split(",")]
    common.check_header(path, found, header)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    frame.columns = found
    frame["_split"] = split
    frame["_file"] = str(path)
    frame["_ref"] = [f"{path.name} {common.csv_line(i)}" for i in range(len(frame))]
    return frame


def rows_to_manifest(frame: pd.DataFrame, dataset_dir: Path, policy: str) -> pd.DataFrame:
    """Turn CheXpert CSV rows into manifest columns (ids, path, view, sex, age, labels)."""
    parts = [
        split_csv_path(p, source_file=Path(f), where=r)
        for p, f, r in zip(frame["Path"], frame["_file"], frame["_ref"])
    ]
    out = pd.DataFrame(index=frame.index)
    out["image_id"] = ["_".join((*p[1:3], PurePosixPath(p[3]).stem)) for p in parts]
    out["patient_id"] = [p[1] for p in parts]
    out["study_id"] = [f"{p[1]}_{p[2]}" for p in parts]
    out["path"] = [str(dataset_dir.joinpath(*p)) for p in parts]
    out["split"] = frame["_split"].to_numpy()
    projection = frame.get("Frontal/Lateral", pd.Series(np.nan, index=frame.index))
    orientation = pd.Series(
        [PurePosixPath(p[3]).stem.rsplit("_", 1)[-1].capitalize() for p in parts], index=frame.index
    )
    out["projection"] = projection.fillna(orientation).astype(str)
    ap_pa = (
        frame.get("AP/PA", pd.Series(np.nan, index=frame.index))
        .astype(object)
        .map(lambda v: str(v).strip() if pd.notna(v) and str(v).strip() else math.nan)
    )
    out["view"] = np.where(out["projection"] == "Lateral", "Lateral", ap_pa)
    out["view"] = out["view"].astype(object).where(pd.notna(out["view"]), math.nan)
    out["sex"] = common.normalise_sex(
        frame.get("Sex", pd.Series(np.nan, index=frame.index)), SEX_VALUES
    )
    age = common.plausible_age(frame.get("Age", pd.Series(np.nan, index=frame.index)))
    out["age_years"] = age.mask(age == 0)  # Age 0 marks a missing age in CheXpert
    for file_name, group in frame.groupby("_file", sort=False):
        labels = common.parse_labels(
            group[list(CHEXPERT_OBSERVATIONS)],
            policy,
            source_file=Path(file_name),
            row_refs=list(group["_ref"]),
        )
        for obs in CHEXPERT_OBSERVATIONS:
            out.loc[group.index, task_column(obs)] = labels[obs].to_numpy()
    out["_ref"] = frame["_ref"]
    return out


def read_chexpert(root: Path, params: Mapping[str, Any]) -> IngestedSource:
    """Read CheXpert (``train.csv`` / ``valid.csv`` / optional ``test_labels.csv``).

    Args:
        root: The folder holding the CSVs, or its parent (``CheXpert-v1.0[-small]`` below it).
        params: The ``ingestion`` parameter block.

    Returns:
        The manifest (14 observation columns, ``Lung Opacity`` named ``Airspace Opacity``;
        extra column ``projection``: Frontal / Lateral) and no location ground truth.

    Raises:
        DataFormatError: a missing or changed CSV, a bad path or label, a missing image
            (``on_missing: error``), a duplicated image or conflicting sex.
    """
    on_missing = common.on_missing_param(params)
    policy = common.choice_param(
        params, "uncertainty_policy", common.UNCERTAINTY_POLICIES, "ignore"
    )
    sex_rule = common.choice_param(params, "sex_conflict", common.SEX_CONFLICT_RULES, "error")
    tasks = common.select_tasks(TASKS, params)
    dataset_dir = common.find_dataset_dir(Path(root), ("train.csv", "valid.csv"), DATASET_DIRS)
    frames = [
        read_label_file(dataset_dir / name, split, header)
        for name, split, header in LABEL_FILES
        if (dataset_dir / name).is_file()
    ]
    rows = rows_to_manifest(pd.concat(frames, ignore_index=True), dataset_dir, policy)
    refs = list(rows["_ref"])
    label_files = " + ".join(
        f.name for f in (dataset_dir / n for n, _, _ in LABEL_FILES) if f.is_file()
    )
    common.check_unique_ids(rows["image_id"], refs, source_file=label_files)
    common.check_patient_disjoint(rows["split"], rows["patient_id"], source_file=label_files)
    rows["sex"] = common.resolve_sex_conflicts(
        rows, sex_rule, source_file=label_files, row_refs=refs
    )
    if params.get("frontal_only"):
        # `AP/PA` also says LL / RL (lateral decubitus) on some rows marked Frontal: frontal
        # means PA or AP, as in the MIMIC adapter (a frontal row without AP/PA is kept)
        rows = rows[(rows["projection"] == "Frontal") & ~rows["view"].isin(LATERAL_VIEWS)]
    keep = common.keep_existing(
        [Path(p) for p in rows["path"]],
        list(rows["_ref"]),
        source_file=Path(label_files),
        on_missing=on_missing,
    )
    rows = rows[keep].reset_index(drop=True)
    rows["split"] = _fill_missing_splits(rows, params)
    rows["width"], rows["height"] = common.image_sizes([Path(p) for p in rows["path"]])
    unused = [t for t in TASKS if t not in tasks]
    manifest = normalise_manifest(rows.drop(columns=["_ref", *unused]), tasks, SOURCE)
    logger.info(
        "chexpert: %d images, %d patients, splits %s",
        len(manifest),
        manifest["patient_id"].nunique(),
        manifest["split"].value_counts().to_dict(),
    )
    return IngestedSource(manifest=manifest, tasks=tasks)


def _fill_missing_splits(rows: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Carve whichever of val / test has no official rows from the training patients."""
    missing = [s for s in ("val", "test") if not (rows["split"] == s).any()]
    if not missing:
        return rows["split"]
    return common.carve_splits(
        rows["split"],
        rows["patient_id"],
        common.fractions_param(params),
        common.seed_param(params),
        from_split="train",
        into=missing,
    )
