"""Helpers shared by the real-dataset adapters (CheXpert, SIIM-ACR, NIH, MIMIC, MURA).

Parameter parsing, CSV header checks, missing-file policy, label and sex normalisation,
patient-level split carving and image-size probing. Each adapter module stays a readable
description of its own source's layout.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cxr_spurious.errors import DataFormatError, ParameterError, unknown_name_error
from cxr_spurious.io.images import DICOM_SUFFIXES
from cxr_spurious.progress import progress_bar
from cxr_spurious.sources.contract import SPLITS, assign_patient_splits
from cxr_spurious.stats.seed_param import check_seed

logger = logging.getLogger(__name__)

ON_MISSING = ("error", "skip")
UNCERTAINTY_POLICIES = ("ignore", "zeros", "ones")
SEX_CONFLICT_RULES = ("error", "missing")
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
STRAY_FILES = (".DS_Store", "Thumbs.db")


# ----------------------------------------------------------------------------- params


def choice_param(params: Mapping[str, Any], key: str, valid: Sequence[str], default: str) -> str:
    """Read a string parameter that must be one of ``valid``.

    Raises:
        ParameterError: naming ``ingestion.<key>`` and the valid values.
    """
    value = params.get(key)
    value = default if value is None else str(value)
    if value not in valid:
        raise unknown_name_error(key.replace("_", " "), value, valid, key=f"ingestion.{key}")
    return value


def on_missing_param(params: Mapping[str, Any]) -> str:
    """``ingestion.on_missing``: ``error`` (default) or ``skip``."""
    return choice_param(params, "on_missing", ON_MISSING, "error")


def fractions_param(params: Mapping[str, Any]) -> dict[str, float]:
    """``ingestion.split_fractions`` as floats (defaults 0.7 / 0.1 / 0.2)."""
    raw = params.get("split_fractions") or DEFAULT_FRACTIONS
    try:
        return {str(k): float(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            "ingestion.split_fractions", f"expected a mapping split -> fraction, got {raw!r}"
        ) from exc


def seed_param(params: Mapping[str, Any]) -> int:
    """``ingestion.seed`` as an int (default 0)."""
    return check_seed(params.get("seed", 0), "ingestion.seed")


def path_param(params: Mapping[str, Any], key: str, root: Path) -> Path | None:
    """A path parameter; relative paths are taken relative to the dataset ``root``."""
    raw = params.get(key)
    if raw is None or str(raw).strip() == "":
        return None
    path = Path(os.path.expanduser(str(raw)))
    return path if path.is_absolute() else Path(root) / path


def select_tasks(available: Sequence[str], params: Mapping[str, Any]) -> list[str]:
    """The source's tasks, restricted to ``ingestion.tasks`` when given (in that order).

    Raises:
        ParameterError: a requested task is not provided by this source.
    """
    requested = params.get("tasks")
    if requested is None:
        return list(available)
    if isinstance(requested, str):
        requested = [requested]
    unknown = [t for t in requested if t not in available]
    if unknown:
        raise unknown_name_error(
            "task for this source", unknown[0], available, key="ingestion.tasks"
        )
    return list(requested)


# ----------------------------------------------------------------------------- files


def find_dataset_dir(root: Path, markers: str | Sequence[str], subdirs: Iterable[str]) -> Path:
    """The folder that holds one of ``markers``: ``root`` itself or one of ``subdirs`` below it.

    Raises:
        DataFormatError: ``root`` is missing or holds none of the markers where expected.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, "dataset root folder not found")
    names = [markers] if isinstance(markers, str) else list(markers)
    candidates = [root, *(root / s for s in subdirs)]
    for folder in candidates:
        if any((folder / m).is_file() for m in names):
            return folder
    raise DataFormatError(
        root,
        f"expected {' or '.join(names)} in the dataset root "
        f"or in {', '.join(f'{s}/' for s in subdirs) or 'it'}",
    )


def read_first_line(path: Path) -> str:
    """The first line of a text file (gz-compressed when the name ends in ``.gz``)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            return fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise DataFormatError(path, f"cannot read file: {exc}") from exc


def check_header(path: Path, found: Sequence[str], expected: Sequence[str]) -> None:
    """Raise when a CSV header differs from the documented one.

    Raises:
        DataFormatError: naming the file, the missing / unexpected columns and the expected header.
    """
    if list(found) == list(expected):
        return
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    detail = f"missing {missing}" if missing else ""
    detail += ("; " if detail and extra else "") + (f"unexpected {extra}" if extra else "")
    detail = detail or "columns in a different order"
    raise DataFormatError(
        path, f"unexpected CSV header ({detail}); expected: {','.join(expected)}", where="line 1"
    )


def csv_line(index: int, *, header: bool = True) -> str:
    """Human row reference for the ``index``-th data row (0-based) of a CSV."""
    return f"line {index + (2 if header else 1)}"


def keep_existing(
    paths: Sequence[Path], rows: Sequence[str], *, source_file: Path, on_missing: str
) -> np.ndarray:
    """Check that every image a table references exists.

    Args:
        paths: Image paths, one per table row.
        rows: Row references for messages (``"line 12"``), aligned with ``paths``.
        source_file: The table the rows come from.
        on_missing: ``error`` or ``skip``.

    Returns:
        Boolean mask of rows to keep.

    Raises:
        DataFormatError: some image is missing and ``on_missing`` is ``error``; or, whatever
            ``on_missing``, every image of a table of two or more rows is missing.
    """
    exists = np.fromiter(
        (
            Path(p).is_file()
            for p in progress_bar(paths, desc="check images", disable=len(paths) < 5000)
        ),
        dtype=bool,
        count=len(paths),
    )
    n_missing = int((~exists).sum())
    if n_missing and n_missing == len(paths) > 1:
        # a table whose every file is absent: its paths do not match the folder's layout
        # (another root, a release's path prefix), which skipping would hide as an empty split
        raise DataFormatError(
            source_file,
            f"none of the {n_missing} images this table references exists (the first: "
            f"{paths[0]}); check that ingestion.root is the dataset's folder and that the "
            "table's paths match its layout (ingestion.on_missing: skip drops rows whose "
            "file is missing, not a whole table)",
            where=rows[0],
        )
    if n_missing:
        first = int(np.flatnonzero(~exists)[0])
        message = (
            f"image {paths[first]} referenced here does not exist ({n_missing} missing in all)"
        )
        if on_missing == "error":
            raise DataFormatError(
                source_file,
                message + "; set ingestion.on_missing: skip to drop such rows",
                where=rows[first],
            )
        logger.warning(
            "%s (%s): %s; skipped (ingestion.on_missing=skip)", source_file, rows[first], message
        )
    return exists


def skip_or_raise(
    problem: str, *, source_file: Path | str, where: str, on_missing: str, count: int = 1
) -> None:
    """Raise ``DataFormatError`` (``on_missing=error``) or log a counted skip."""
    if on_missing == "error":
        raise DataFormatError(
            source_file,
            problem
            + ("" if count == 1 else f" ({count} such rows)")
            + "; set ingestion.on_missing: skip to drop them",
            where=where,
        )
    logger.warning(
        "%s (%s): %s; %d row(s) skipped (ingestion.on_missing=skip)",
        source_file,
        where,
        problem,
        count,
    )


def is_stray_file(name: str) -> bool:
    """OS clutter that sits in dataset folders (``._*`` AppleDouble, ``.DS_Store``)."""
    base = Path(name).name
    return base.startswith("._") or base in STRAY_FILES


def index_files(folder: Path, suffix: str) -> dict[str, Path]:
    """Map file stem -> path for every ``*<suffix>`` below ``folder`` (OS clutter ignored).

    Raises:
        DataFormatError: the folder is missing, or two files share a stem (ambiguous ids).
    """
    if not Path(folder).is_dir():
        raise DataFormatError(folder, "image folder not found")
    index: dict[str, Path] = {}
    for dirpath, _dirs, files in progress_bar(
        os.walk(folder), desc=f"index {Path(folder).name}", unit="dir"
    ):
        for name in files:
            if not name.lower().endswith(suffix) or is_stray_file(name):
                continue
            path = Path(dirpath) / name
            stem = name[: -len(suffix)]
            if stem in index:
                raise DataFormatError(
                    folder,
                    f"two files named '{name}': {index[stem]} and {path}; image ids must be unique",
                )
            index[stem] = path
    return index


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header (no pixel decoding).

    Raises:
        DataFormatError: the file is not a readable image, or has more pixels than
            Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    """
    if path.suffix.lower() in DICOM_SUFFIXES:
        from cxr_spurious.io.dicom import read_dicom_header

        header = read_dicom_header(path)
        return header.columns, header.rows
    try:
        with Image.open(path) as img:
            return int(img.width), int(img.height)
    except Image.DecompressionBombError as exc:  # not an OSError
        raise DataFormatError(path, f"image too large to read: {exc}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFormatError(path, f"unreadable image header: {exc}") from exc


def image_sizes(
    paths: Sequence[Path], *, desc: str = "read image sizes"
) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights of many images, with a progress bar."""
    sizes = [image_size(Path(p)) for p in progress_bar(paths, desc=desc, disable=len(paths) < 1000)]
    arr = np.array(sizes, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


# ----------------------------------------------------------------------------- values


def parse_labels(
    values: pd.DataFrame, policy: str, *, source_file: Path, row_refs: Sequence[str]
) -> pd.DataFrame:
    """CheXpert-style labels (1, 0, -1 = uncertain, blank = unmentioned) to 1 / 0 / NaN.

    Args:
        values: Raw label columns.
        policy: Uncertain labels become NaN (``ignore``), 0 (``zeros``) or 1 (``ones``).
        source_file: File the labels came from, for messages.
        row_refs: Row references aligned with ``values``.

    Raises:
        DataFormatError: a value that is not 1, 0, -1 or blank (names the row and column).
    """
    out = values.apply(pd.to_numeric, errors="coerce").astype("float64")
    bad = (
        out.isna() & values.notna() & (values.astype(str).apply(lambda c: c.str.strip()) != "")
    ) | ~(out.isna() | out.isin([1.0, 0.0, -1.0]))
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise DataFormatError(
            source_file,
            f"label column '{values.columns[c]}' has value {values.iat[r, c]!r}; "
            "expected 1.0, 0.0, -1.0 or blank",
            where=row_refs[r],
        )
    replacement = {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[policy]
    return out.mask(out == -1.0, replacement)


def normalise_sex(values: pd.Series, mapping: Mapping[str, str]) -> pd.Series:
    """Map source spellings to ``M`` / ``F``; anything else (Unknown, blank) to NaN."""
    return values.map(
        lambda v: mapping.get(str(v).strip(), math.nan) if pd.notna(v) else math.nan
    ).astype(object)


def resolve_sex_conflicts(
    frame: pd.DataFrame, rule: str, *, source_file: Path | str, row_refs: Sequence[str]
) -> pd.Series:
    """Check that each patient has one sex across rows.

    Args:
        frame: Table with ``patient_id`` and ``sex`` (M / F / NaN; NaN never conflicts).
        rule: ``error`` raises; ``missing`` sets the patient's sex to NaN everywhere and logs.
        source_file: Table the rows come from.
        row_refs: Row references aligned with ``frame``.

    Returns:
        The (possibly corrected) ``sex`` column.

    Raises:
        DataFormatError: naming the patient, the file and the conflicting rows.
    """
    sex = frame["sex"].reset_index(drop=True)
    patients = frame["patient_id"].reset_index(drop=True)
    counts = sex.groupby(patients).nunique()
    conflicting = counts[counts > 1].index
    if len(conflicting) == 0:
        return frame["sex"]
    if rule == "error":
        pid = conflicting[0]
        rows = np.flatnonzero((patients == pid).to_numpy() & sex.notna().to_numpy())
        described = ", ".join(f"{row_refs[i]}={sex.iat[i]}" for i in rows[:6])
        raise DataFormatError(
            source_file,
            f"patient '{pid}' has conflicting sex across rows ({described}); "
            f"{len(conflicting)} such patient(s); "
            "set ingestion.sex_conflict: missing to treat their sex as unknown",
        )
    logger.warning(
        "%s: %d patient(s) with conflicting sex (first '%s'); "
        "their sex set to NaN (ingestion.sex_conflict=missing)",
        source_file,
        len(conflicting),
        conflicting[0],
    )
    fixed = sex.mask(patients.isin(conflicting), math.nan)
    fixed.index = frame.index
    return fixed


def plausible_age(values: pd.Series) -> pd.Series:
    """Ages in years as float; strings like ``058Y`` parsed; impossible values -> NaN."""
    from cxr_spurious.io.dicom import parse_patient_age

    return values.map(parse_patient_age).astype("float64")


# ----------------------------------------------------------------------------- splits


def carve_splits(
    split: pd.Series,
    patients: pd.Series,
    fractions: Mapping[str, float],
    seed: int,
    *,
    from_split: str,
    into: Sequence[str],
) -> pd.Series:
    """Move a random, patient-level share of ``from_split`` into the splits ``into``.

    The shares are the requested fractions renormalised over ``from_split`` and ``into``
    (train 0.7, val 0.1 -> 1/8 of the training patients become validation patients).

    Args:
        split: Current split per image.
        patients: Patient id per image (aligned with ``split``).
        fractions: ``ingestion.split_fractions``.
        seed: ``ingestion.seed``.
        from_split: The split to carve from (usually ``train``).
        into: The splits to fill.

    Returns:
        The new split column.
    """
    for name in (from_split, *into):
        if name not in SPLITS:
            raise ParameterError(
                "ingestion.split_fractions", f"unknown split '{name}'; expected one of {SPLITS}"
            )
    share = {s: float(fractions.get(s, 0.0)) for s in (from_split, *into)}
    total = sum(share.values())
    if total <= 0 or sum(share[s] for s in into) <= 0:
        return split.copy()
    mask = split == from_split
    assignment = assign_patient_splits(
        patients[mask].astype(str), {k: v / total for k, v in share.items()}, seed
    )
    out = split.copy()
    out[mask] = patients[mask].astype(str).map(assignment)
    logger.info(
        "carved %s from %s by patient: %s",
        list(into),
        from_split,
        out[mask].value_counts().to_dict(),
    )
    return out


def check_patient_disjoint(
    split: pd.Series, patients: pd.Series, *, source_file: Path | str
) -> None:
    """Official split lists must not share a patient.

    Raises:
        DataFormatError: naming the first patient found in two splits.
    """
    per_patient = split.groupby(patients.astype(str)).nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        pid = leaking.index[0]
        found = sorted(split[patients.astype(str) == pid].unique())
        raise DataFormatError(
            source_file,
            f"patient '{pid}' appears in several official splits {found}; "
            f"the lists must be patient-disjoint ({len(leaking)} such patients)",
        )


def check_unique_ids(ids: pd.Series, row_refs: Sequence[str], *, source_file: Path | str) -> None:
    """Each image may appear once.

    Raises:
        DataFormatError: naming the duplicated image id and both rows.
    """
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        first = ids.iloc[int(np.flatnonzero(dup)[0])]
        rows = [row_refs[i] for i in np.flatnonzero((ids == first).to_numpy())[:4]]
        raise DataFormatError(
            source_file,
            f"image '{first}' is listed more than once ({', '.join(rows)}); "
            "expected one row per image",
        )
