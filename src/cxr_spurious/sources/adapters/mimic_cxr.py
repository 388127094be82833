"""MIMIC-CXR-JPG (v2.0.0 / v2.1.0) joined with MIMIC-IV ``patients`` and ``admissions``.

Layout (``root`` is the MIMIC-CXR-JPG folder)::

    <root>/mimic-cxr-2.0.0-metadata.csv.gz, -chexpert.csv.gz, -negbio.csv.gz, -split.csv.gz
    <root>/files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg
    <mimic_iv_dir>/hosp/patients.csv.gz, admissions.csv.gz   (v2+; v1.0: core/)

* Labels are per study: joined on (``subject_id``, ``study_id``); ``mimic_labels`` picks
  ``chexpert`` (default) or ``negbio``; ``uncertainty_policy`` as for CheXpert. Studies
  without a label row keep NaN labels (logged). Tasks use the CheXpert observation names,
  ``Lung Opacity`` as ``Airspace Opacity``.
* ``split.csv.gz``: ``validate`` -> ``val``.
* Demographics (``mimic_iv_dir``, relative to ``root`` or absolute; optional): ``sex`` from
  ``gender``; ``age_years`` = ``anchor_age`` + (StudyDate year - ``anchor_year``); ``race``
  (``ethnicity`` in MIMIC-IV v1.0) and ``insurance`` from the admissions. Admissions are
  many per subject: ``admission_rule: nearest`` (default) takes the admission whose
  ``admittime`` is closest to the study time (ties: the earlier admission), falling back
  to the subject's most frequent value when the study has no date; ``most_frequent`` takes
  each subject's most frequent non-missing value (ties: alphabetical). ``UNKNOWN``,
  ``UNABLE TO OBTAIN`` and ``PATIENT DECLINED TO ANSWER`` race values count as missing.
  Subjects without admissions (or absent from ``patients``) get NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import DataFormatError
from cxr_spurious.sources.adapters import _common as common
from cxr_spurious.sources.adapters.base import IngestedSource
from cxr_spurious.sources.contract import normalise_manifest
from cxr_spurious.tasks import CHEXPERT_OBSERVATIONS, task_column

logger = logging.getLogger(__name__)

SOURCE = "mimic_cxr"
METADATA_HEADER: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
LABEL_HEADER: tuple[str, ...] = ("subject_id", "study_id", *sorted(CHEXPERT_OBSERVATIONS))
SPLIT_HEADER: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
SPLIT_VALUES = {"train": "train", "validate": "val", "test": "test"}
TASKS: tuple[str, ...] = tuple(task_column(o) for o in CHEXPERT_OBSERVATIONS)
PATIENT_COLUMNS = ("subject_id", "gender", "anchor_age", "anchor_year")
ADMISSION_COLUMNS = ("subject_id", "hadm_id", "admittime", "insurance")
UNKNOWN_RACE = {
    "UNKNOWN",
    "UNABLE TO OBTAIN",
    "PATIENT DECLINED TO ANSWER",
    "UNKNOWN/NOT SPECIFIED",
    "",
}
ADMISSION_RULES = ("nearest", "most_frequent")
VIEW_NAMES = {"LATERAL": "Lateral"}


def find_table(folder: Path, kind: str) -> Path:
    """``mimic-cxr-<version>-<kind>.csv[.gz]`` in ``folder`` (the newest version if several).

    Raises:
        DataFormatError: no such file.
    """
    matches = sorted(folder.glob(f"mimic-cxr-*-{kind}.csv.gz")) + sorted(
        folder.glob(f"mimic-cxr-*-{kind}.csv")
    )
    if not matches:
        raise DataFormatError(folder, f"expected mimic-cxr-<version>-{kind}.csv.gz here")
    return sorted(matches, key=lambda p: p.name)[-1]


def read_table(
    path: Path, expected: tuple[str, ...] | None = None, *, required: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Read a (gzipped) CSV as strings; check its header exactly or for required columns.

    Raises:
        DataFormatError: a changed header (names the file and what was expected).
    """
    found = [c.strip() for c in common.read_first_line(path).split(",")]
    if expected is not None:
        common.check_header(path, found, expected)
    missing = [c for c in required if c not in found]
    if missing:
        raise DataFormatError(
            path, f"missing column(s) {missing}; expected at least {list(required)}", where="line 1"
        )
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    frame.columns = found
    frame["_ref"] = [f"{path.name} {common.csv_line(i)}" for i in range(len(frame))]
    return frame


def study_datetime(dates: pd.Series, times: pd.Series) -> pd.Series:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS.fff as a float, leading zeros lost)."""
    day = pd.to_datetime(dates.str.strip(), format="%Y%m%d", errors="coerce")
    seconds = pd.to_numeric(times, errors="coerce").fillna(0.0)
    hh, rest = np.divmod(np.floor(seconds.to_numpy()), 10000)
    mm, ss = np.divmod(rest, 100)
    return day + pd.to_timedelta(hh * 3600 + mm * 60 + ss, unit="s")


def image_paths(
    files_root: Path, subject: pd.Series, study: pd.Series, dicom: pd.Series
) -> list[str]:
    """``files/pXX/p<subject>/s<study>/<dicom_id>.jpg`` for each image."""
    return [
        str(files_root / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg")
        for s, t, d in zip(subject, study, dicom)
    ]


def read_mimic_cxr(root: Path, params: Mapping[str, Any]) -> IngestedSource:
    """Read MIMIC-CXR-JPG with optional MIMIC-IV demographics.

    Args:
        root: The MIMIC-CXR-JPG folder (``files/`` and the ``mimic-cxr-*.csv.gz`` tables).
        params: The ``ingestion`` block (``mimic_labels``, ``uncertainty_policy``,
            ``frontal_only``, ``mimic_iv_dir``, ``admission_rule``, common keys).

    Returns:
        Manifest with the 14 CheXpert observations; no location ground truth.

    Raises:
        DataFormatError: changed headers, bad label, split or size values, duplicate label
            rows, images without a split row, size or file (``on_missing: error``),
            conflicting gender.
    """
    on_missing = common.on_missing_param(params)
    policy = common.choice_param(
        params, "uncertainty_policy", common.UNCERTAINTY_POLICIES, "ignore"
    )
    labeler = common.choice_param(params, "mimic_labels", ("chexpert", "negbio"), "chexpert")
    rule = common.choice_param(params, "admission_rule", ADMISSION_RULES, "nearest")
    tasks = common.select_tasks(TASKS, params)
    folder = Path(root)
    if not folder.is_dir():
        raise DataFormatError(folder, "dataset root folder not found")
    meta = read_table(find_table(folder, "metadata"), METADATA_HEADER)
    rows = _join_splits(
        meta, read_table(find_table(folder, "split"), SPLIT_HEADER), folder / "files", on_missing
    )
    rows = _join_labels(rows, find_table(folder, labeler), policy)
    if params.get("frontal_only"):
        rows = rows[rows["view"].isin(["PA", "AP"])].reset_index(drop=True)
    keep = common.keep_existing(
        [Path(p) for p in rows["path"]],
        list(rows["_ref"]),
        source_file=find_table(folder, "metadata"),
        on_missing=on_missing,
    )
    rows = rows[keep].reset_index(drop=True)
    iv_dir = common.path_param(params, "mimic_iv_dir", folder)
    rows = (
        _join_demographics(rows, iv_dir, rule, params)
        if iv_dir is not None
        else _no_demographics(rows)
    )
    unused = [t for t in TASKS if t not in tasks]
    manifest = normalise_manifest(
        rows.drop(columns=["_ref", "_when", "subject_id", *unused]), tasks, SOURCE
    )
    logger.info(
        "mimic_cxr: %d images, %d studies, splits %s",
        len(manifest),
        manifest["study_id"].nunique(),
        manifest["split"].value_counts().to_dict(),
    )
    return IngestedSource(manifest=manifest, tasks=tasks)


def _join_splits(
    meta: pd.DataFrame, split: pd.DataFrame, files_root: Path, on_missing: str
) -> pd.DataFrame:
    """Metadata rows with ids, path, view, size, study time and split."""
    bad = ~split["split"].str.strip().isin(list(SPLIT_VALUES))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(
            split["_ref"].iat[i].split(" ")[0],
            f"split {split['split'].iat[i]!r}; expected one of {sorted(SPLIT_VALUES)}",
            where=split["_ref"].iat[i].split(" ", 1)[1],
        )
    by_dicom = (
        split.drop_duplicates("dicom_id")
        .set_index("dicom_id")["split"]
        .str.strip()
        .map(SPLIT_VALUES)
    )
    rows = pd.DataFrame(
        {
            "image_id": meta["dicom_id"].str.strip(),
            "subject_id": meta["subject_id"].str.strip(),
            "_ref": meta["_ref"],
        }
    )
    rows["patient_id"] = rows["subject_id"]
    rows["study_id"] = meta["study_id"].str.strip()
    rows["split"] = rows["image_id"].map(by_dicom)
    missing = rows["split"].isna()
    if missing.any():
        first = rows.loc[missing, "_ref"].iat[0]
        common.skip_or_raise(
            f"dicom_id {rows.loc[missing, 'image_id'].iat[0]} has no row in the split table",
            source_file=first.split(" ")[0],
            where=first.split(" ", 1)[1],
            on_missing=on_missing,
            count=int(missing.sum()),
        )
        meta, rows = meta[~missing], rows[~missing]
    view = meta["ViewPosition"].fillna("").str.strip()
    rows["view"] = view.map(lambda v: VIEW_NAMES.get(v, v) if v else np.nan)
    rows["width"] = pd.to_numeric(meta["Columns"], errors="coerce")
    rows["height"] = pd.to_numeric(meta["Rows"], errors="coerce")
    blank = _check_sizes(meta, rows)
    if blank.any():
        first = rows.loc[blank, "_ref"].iat[0]
        common.skip_or_raise(
            f"dicom_id {rows.loc[blank, 'image_id'].iat[0]} has a blank Rows or Columns "
            "(the image size, which the masks and cache need)",
            source_file=first.split(" ")[0],
            where=first.split(" ", 1)[1],
            on_missing=on_missing,
            count=int(blank.sum()),
        )
        meta, rows = meta[~blank], rows[~blank]
    rows["_when"] = study_datetime(meta["StudyDate"].fillna(""), meta["StudyTime"])
    rows["path"] = image_paths(files_root, rows["subject_id"], rows["study_id"], rows["image_id"])
    common.check_unique_ids(rows["image_id"], list(rows["_ref"]), source_file="metadata")
    common.check_patient_disjoint(rows["split"], rows["patient_id"], source_file="split table")
    return rows.reset_index(drop=True)


def _check_sizes(meta: pd.DataFrame, rows: pd.DataFrame) -> pd.Series:
    """Rows whose ``Rows`` or ``Columns`` is blank (a missing size, for ``on_missing``).

    Raises:
        DataFormatError: a non-blank ``Rows`` / ``Columns`` that is not a positive integer
            (naming the metadata file and line).
    """
    raw = meta[["Columns", "Rows"]].apply(lambda c: c.fillna("").str.strip())
    blank = (raw == "").any(axis=1)
    size = rows[["width", "height"]]
    bad = ~blank & (size.isna() | (size < 1) | (size % 1 != 0)).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        ref = rows["_ref"].iat[i]
        raise DataFormatError(
            ref.split(" ")[0],
            f"Rows {raw['Rows'].iat[i]!r} / Columns {raw['Columns'].iat[i]!r} of dicom_id "
            f"{rows['image_id'].iat[i]}; expected positive integers (the image's size)",
            where=ref.split(" ", 1)[1],
        )
    return blank


def _join_labels(rows: pd.DataFrame, path: Path, policy: str) -> pd.DataFrame:
    """Study-level labels copied to every image of the study."""
    labels = read_table(path, LABEL_HEADER)
    key = labels["subject_id"].str.strip() + "/" + labels["study_id"].str.strip()
    dup = key.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataFormatError(
            path,
            f"study {key.iat[i]} has more than one label row; expected one row per study",
            where=labels["_ref"].iat[i].split(" ", 1)[1],
        )
    values = common.parse_labels(
        labels[list(CHEXPERT_OBSERVATIONS)],
        policy,
        source_file=path,
        row_refs=[r.split(" ", 1)[1] for r in labels["_ref"]],
    )
    values.index = key
    values.columns = [task_column(c) for c in values.columns]
    joined = values.reindex(rows["subject_id"] + "/" + rows["study_id"])
    unlabeled = (
        joined.isna().all(axis=1)
        & ~(rows["subject_id"] + "/" + rows["study_id"]).isin(key).to_numpy()
    )
    if unlabeled.any():
        logger.warning(
            "%s: %d image(s) of %d studies have no label row; their labels are NaN",
            path,
            int(unlabeled.sum()),
            rows.loc[unlabeled.to_numpy(), "study_id"].nunique(),
        )
    for task in TASKS:
        rows[task] = joined[task].to_numpy()
    return rows


def _no_demographics(rows: pd.DataFrame) -> pd.DataFrame:
    logger.warning(
        "mimic_cxr: ingestion.mimic_iv_dir not set; sex, age, race and insurance are NaN"
    )
    return rows


def _find_iv_table(iv_dir: Path, name: str) -> Path:
    for sub in ("hosp", "core", ""):
        for suffix in (".csv.gz", ".csv"):
            path = iv_dir / sub / f"{name}{suffix}"
            if path.is_file():
                return path
    raise DataFormatError(
        iv_dir,
        f"expected MIMIC-IV {name}.csv.gz in hosp/ (v2+), core/ (v1.0) "
        "or the folder itself (ingestion.mimic_iv_dir)",
    )


def _join_demographics(
    rows: pd.DataFrame, iv_dir: Path, rule: str, params: Mapping[str, Any]
) -> pd.DataFrame:
    """Sex and age from ``patients``; race / ethnicity and insurance from ``admissions``."""
    patients_path = _find_iv_table(iv_dir, "patients")
    patients = read_table(patients_path, required=PATIENT_COLUMNS)
    patients["patient_id"] = patients["subject_id"].str.strip()
    patients["sex"] = common.normalise_sex(patients["gender"], {"M": "M", "F": "F"})
    sex_rule = common.choice_param(params, "sex_conflict", common.SEX_CONFLICT_RULES, "error")
    patients["sex"] = common.resolve_sex_conflicts(
        patients,
        sex_rule,
        source_file=patients_path,
        row_refs=[r.split(" ", 1)[1] for r in patients["_ref"]],
    )
    patients = patients.drop_duplicates("patient_id").set_index("patient_id")
    absent = ~rows["subject_id"].isin(patients.index)
    if absent.any():
        logger.warning(
            "%s: %d subject(s) of MIMIC-CXR are not in patients; their sex and age are NaN",
            patients_path,
            rows.loc[absent, "subject_id"].nunique(),
        )
    rows["sex"] = rows["subject_id"].map(patients["sex"])
    anchor_age = rows["subject_id"].map(pd.to_numeric(patients["anchor_age"], errors="coerce"))
    anchor_year = rows["subject_id"].map(pd.to_numeric(patients["anchor_year"], errors="coerce"))
    rows["age_years"] = (
        (anchor_age + (rows["_when"].dt.year - anchor_year))
        .astype("float64")
        .where(lambda a: a >= 0)
    )
    admissions_path = _find_iv_table(iv_dir, "admissions")
    race_column = (
        "race"
        if "race" in [c.strip() for c in common.read_first_line(admissions_path).split(",")]
        else "ethnicity"
    )
    admissions = read_table(admissions_path, required=(*ADMISSION_COLUMNS, race_column))
    admissions = admissions.rename(columns={race_column: "race"})
    admissions["race"] = admissions["race"].where(
        ~admissions["race"].fillna("").str.strip().str.upper().isin(UNKNOWN_RACE)
    )
    admissions["subject_id"] = admissions["subject_id"].str.strip()
    admissions["admittime"] = pd.to_datetime(admissions["admittime"], errors="coerce")
    chosen = choose_admission_values(rows[["study_id", "subject_id", "_when"]], admissions, rule)
    rows["race"] = rows["study_id"].map(chosen["race"])
    rows["insurance"] = rows["study_id"].map(chosen["insurance"])
    logger.info(
        "mimic_cxr: race known for %.1f%%, insurance for %.1f%% of images (%s rule)",
        100 * rows["race"].notna().mean(),
        100 * rows["insurance"].notna().mean(),
        rule,
    )
    return rows


def choose_admission_values(
    studies: pd.DataFrame, admissions: pd.DataFrame, rule: str
) -> pd.DataFrame:
    """Race and insurance per study from a subject's many admissions.

    Args:
        studies: ``study_id``, ``subject_id``, ``_when`` (study datetime, may be NaT).
        admissions: ``subject_id``, ``admittime`` (datetime), ``race``, ``insurance``.
        rule: ``nearest`` (per column, the closest admittime among the subject's admissions
            that record a value, ties -> earlier; a study without a date, or whose subject
            has no dated admission recording the column, falls back to ``most_frequent``)
            or ``most_frequent`` (per subject mode of the recorded values, ties ->
            alphabetical). Race UNKNOWN / UNABLE TO OBTAIN / declined is not recorded
            (NaN before this call).

    Returns:
        Indexed by ``study_id``: columns ``race``, ``insurance`` (NaN when unknown).
    """
    per_study = studies.drop_duplicates("study_id").set_index("study_id")
    frequent = pd.DataFrame({c: _subject_mode(admissions, c) for c in ("race", "insurance")})
    fallback = frequent.reindex(per_study["subject_id"]).set_axis(per_study.index)
    if rule == "most_frequent":
        return fallback
    dated = per_study[per_study["_when"].notna()].reset_index()
    pairs = dated.merge(
        admissions[["subject_id", "admittime", "race", "insurance"]], on="subject_id", how="inner"
    )
    pairs = pairs[pairs["admittime"].notna()]
    pairs["_gap"] = (pairs["admittime"] - pairs["_when"]).abs()
    pairs = pairs.sort_values(["study_id", "_gap", "admittime"], kind="stable")
    out = fallback.copy()
    for column in ("race", "insurance"):
        # per column, the nearest admission that records it: an UNKNOWN race on the nearest
        # admission must not hide the race the subject's other admissions record
        nearest = (
            pairs[pairs[column].notna()].drop_duplicates("study_id").set_index("study_id")[column]
        )
        out.loc[nearest.index, column] = nearest.to_numpy()
    return out


def _subject_mode(admissions: pd.DataFrame, column: str) -> pd.Series:
    """Most frequent non-missing value per subject (ties: alphabetical)."""
    values = admissions[["subject_id", column]].dropna()
    if values.empty:
        return pd.Series(dtype=object)
    counts = values.groupby(["subject_id", column]).size().rename("n").reset_index()
    counts = counts.sort_values(
        ["subject_id", "n", column], ascending=[True, False, True], kind="stable"
    )
    return counts.drop_duplicates("subject_id").set_index("subject_id")[column]
