"""CheXlocalize layout: CheXpert-style labels CSV + images + annotation / segmentation JSON.

Reads a folder laid out like the CheXlocalize release (or its ``sample/`` folder)::

    <root>/valid.csv | val_labels.csv | test_labels.csv | labels.csv   (CheXpert header)
    <root>/valid/patientXXXXX/studyN/viewN_frontal.jpg                 (or val/, test/, images/)
    <root>/gt_annotations_val.json, gt_segmentations_val.json          (optional, also *_test)
    <root>/hb_annotations_test.json, hb_segmentations_test.json, hb_salient_pt_test.json

The JSON files may also sit in ``<root>/CheXlocalize/``, or, in the release layout
(``<download>/CheXpert/`` with the labels and images beside ``<download>/CheXlocalize/``
with the JSON files), in ``<root>/../CheXlocalize/`` when ``root`` and its ``CheXlocalize/``
hold no ``gt_*`` file. Labels with positives for CheXlocalize tasks but no ``gt_*`` file in
any of those folders are an error (naming them). The phantom generator writes the
same layout (plus ``attributes.csv`` and ``spurious_segmentations.json``), so both go
through this reader. The JSON formats themselves (reading, checks, polygon rasterisation)
are ``cxr_spurious.io.chexlocalize``; this module knows where the files are and turns the
labels CSV into the manifest.

Parameters (``ingestion.*``): ``tasks`` (default: the CheXlocalize tasks with labels here),
``uncertainty_policy`` (as for CheXpert: -1.0 -> NaN / 0 / 1), plus the common
``on_missing``, ``split_fractions`` and ``seed`` (``split_fractions`` only serves rows of
``labels.csv`` without an ``attributes.csv`` split).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.io.chexlocalize import (
    check_annotations,
    check_segmentations,
    load_json,
    rasterize_annotations,
)
from cxr_spurious.sources.adapters import _common as common
from cxr_spurious.sources.adapters.base import IngestedSource, Json
from cxr_spurious.sources.contract import (
    ATTRIBUTE_HEADER,
    assign_patient_splits,
    normalise_manifest,
)
from cxr_spurious.tasks import (
    CHEXLOCALIZE_TASKS,
    CHEXPERT_HEADER,
    CHEXPERT_OBSERVATIONS,
    SPURIOUS_OBJECTS,
    task_column,
)

logger = logging.getLogger(__name__)

SOURCE = "chexlocalize"
# Labels files and the split they hold, in lookup order.
LABEL_FILES: tuple[tuple[str, str], ...] = (
    ("labels.csv", ""),  # phantom: split from attributes.csv
    ("valid.csv", "val"),
    ("val_labels.csv", "val"),
    ("test_labels.csv", "test"),
)
# test_labels.csv has no demographic columns.
TEST_LABELS_HEADER: tuple[str, ...] = ("Path", *CHEXPERT_OBSERVATIONS)
# The human benchmark's parts and their file names, in lookup order.
HUMAN_BENCHMARK_FILES: dict[str, tuple[str, ...]] = {
    "annotations": ("hb_annotations_test.json", "hb_annotations.json"),
    "segmentations": ("hb_segmentations_test.json", "hb_segmentations.json"),
    "salient_points": ("hb_salient_pt_test.json", "hb_salient_pt.json"),
}
ATTRIBUTES_FILE = "attributes.csv"
ALL_TASKS: tuple[str, ...] = tuple(task_column(o) for o in CHEXPERT_OBSERVATIONS)
_SPLIT_DIRS = ("valid", "val", "test", "train", "images")
_SEX = {"Male": "M", "Female": "F", "M": "M", "F": "F"}
_RENDER_DIR = re.compile(r"^[a-z0-9_]+$")
# The JSON folder of the CheXlocalize release, inside ``root`` or beside it.
JSON_DIR = "CheXlocalize"
GT_STEMS: tuple[str, ...] = ("gt_annotations", "gt_segmentations")
GT_FILES: tuple[str, ...] = tuple(
    f"{stem}{suffix}.json" for stem in GT_STEMS for suffix in ("_val", "_test", "")
)


@dataclass(frozen=True)
class GroundTruth:
    """The checked location ground truth of a CheXlocalize folder, keyed by cxr id."""

    annotations: Json
    segmentations: Json
    spurious: Json


def read_chexlocalize(root: Path, params: Mapping[str, Any]) -> IngestedSource:
    """Read a CheXlocalize-layout folder (see module docstring).

    Args:
        root: The folder.
        params: The ``ingestion`` parameters (``on_missing``, ``split_fractions``, ``seed``,
            ``tasks``, ``source``).

    Returns:
        The manifest and ground truth in the project contract.

    Raises:
        ParameterError: ``root`` is not a folder, a bad ``on_missing`` or an unknown task.
        DataFormatError: see ``read_labels``, ``read_images``, ``read_ground_truth`` and
            ``read_human_benchmark``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ParameterError("ingestion.root", f"'{root}' is not a folder")
    on_missing = common.on_missing_param(params)
    policy = common.choice_param(
        params, "uncertainty_policy", common.UNCERTAINTY_POLICIES, "ignore"
    )
    labels, attributes = read_labels(root, policy), _read_attributes(root / ATTRIBUTES_FILE)
    manifest, sizes = read_images(root, labels, on_missing)
    if attributes is not None:
        manifest = _merge_attributes(manifest, attributes, root / ATTRIBUTES_FILE)
    tasks = select_tasks(params.get("tasks"), manifest)
    truth = read_ground_truth(root, sizes, tasks)
    _check_ground_truth_found(root, manifest, tasks)
    human = read_human_benchmark(root, sizes)
    renders = _find_renders(root, manifest)
    manifest["split"] = _fill_missing_splits(manifest, params)
    keep = set(manifest["image_id"])
    manifest = manifest.drop(columns=[t for t in ALL_TASKS if t not in tasks and t in manifest])
    segmentations = {
        k: {t: r for t, r in v.items() if t in tasks}
        for k, v in _only(truth.segmentations, keep).items()
    }
    return IngestedSource(
        manifest=normalise_manifest(manifest, tasks, source=str(params.get("source", SOURCE))),
        tasks=tasks,
        annotations=_only(truth.annotations, keep),
        segmentations=segmentations,
        spurious_segmentations=_only(truth.spurious, keep),
        human_benchmark={name: _only(blob, keep) for name, blob in human.items()},
        renders=renders,
    )


# ----------------------------------------------------------------------------- labels


def cxr_id_from_path(path: str) -> str:
    """CheXlocalize id of an image path: the patient/study/view parts joined by '_'.

    ``CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg`` ->
    ``patient64541_study1_view1_frontal``.
    """
    parts = Path(path).with_suffix("").parts
    for i, part in enumerate(parts):
        if part.startswith("patient"):
            return "_".join(parts[i:])
    return "_".join(parts[-3:])


def resolve_image_path(root: Path, csv_path: str) -> Path:
    """Join a CSV ``Path`` with ``root``, dropping any dataset prefix before the split folder."""
    parts = Path(csv_path).parts
    for i, part in enumerate(parts):
        if part in _SPLIT_DIRS:
            return root.joinpath(*parts[i:])
    return root / csv_path


def read_labels_csv(path: Path) -> pd.DataFrame:
    """Read a CheXpert-style labels CSV and check its header exactly.

    Raises:
        DataFormatError: the header is not the CheXpert header (or the test-labels header).
    """
    with path.open(newline="", encoding="utf-8") as fh:
        header = tuple(next(csv.reader(fh), []))
    if header not in {CHEXPERT_HEADER, TEST_LABELS_HEADER}:
        extra = [h for h in header if h not in CHEXPERT_HEADER]
        missing = [h for h in TEST_LABELS_HEADER if h not in header]
        raise DataFormatError(
            path,
            f"unexpected CSV header; expected the CheXpert header {list(CHEXPERT_HEADER)} "
            f"(or {list(TEST_LABELS_HEADER)}); unknown columns {extra}, missing columns {missing}",
            where="line 1",
        )
    # Labels as text (``parse_labels`` quotes a bad one as written); only blank is missing.
    text = {"Path": str, **dict.fromkeys(CHEXPERT_OBSERVATIONS, str)}
    return pd.read_csv(path, dtype=text, keep_default_na=False, na_values=[""])


def read_labels(root: Path, policy: str = "ignore") -> pd.DataFrame:
    """Every labels CSV of ``root`` (``LABEL_FILES``), one row per image.

    Args:
        root: The folder.
        policy: ``uncertainty_policy``: -1.0 (uncertain) becomes NaN (``ignore``), 0
            (``zeros``) or 1 (``ones``).

    Returns:
        The CSV columns plus ``image_id``, ``_split`` (the file's split, ``""`` for
        ``labels.csv``), ``_csv`` (the file) and ``_ref`` (``row N``, the file's line).
        Labels are 1 / 0 / NaN; ``Age`` is in years or NaN (``plausible_age``; 0, CheXpert's
        missing age, is NaN too).

    Raises:
        DataFormatError: no labels CSV, one with a changed header, or a label that is not
            1, 0, -1 or blank (naming the file, row and column).
    """
    frames = []
    for name, split in LABEL_FILES:
        path = root / name
        if path.is_file():
            df = read_labels_csv(path)
            df["_split"] = split
            df["_csv"] = str(path)
            # 1-based line numbers after the header
            df["_ref"] = [f"row {i}" for i in range(2, len(df) + 2)]
            observations = [o for o in CHEXPERT_OBSERVATIONS if o in df.columns]
            df[observations] = common.parse_labels(
                df[observations], policy, source_file=path, row_refs=list(df["_ref"])
            )
            if "Age" in df.columns:
                age = common.plausible_age(df["Age"])
                df["Age"] = age.mask(age == 0)
            frames.append(df)
    if not frames:
        expected = [n for n, _ in LABEL_FILES]
        raise DataFormatError(root, f"no labels CSV found; expected one of {expected}")
    labels = pd.concat(frames, ignore_index=True)
    labels["image_id"] = labels["Path"].map(cxr_id_from_path)
    return labels


def select_tasks(requested: Any, manifest: pd.DataFrame) -> list[str]:
    """``ingestion.tasks`` (CheXpert names mapped to task columns), or by default the
    CheXlocalize localization tasks that have labels in ``manifest``.

    Raises:
        ParameterError: a requested task is not a column of this source.
    """
    if requested:
        tasks = [task_column(t) for t in ([requested] if isinstance(requested, str) else requested)]
        unknown = [t for t in tasks if t not in manifest.columns]
        if unknown:
            problem = f"unknown task(s) {unknown}; this source has {list(ALL_TASKS)}"
            raise ParameterError("ingestion.tasks", problem)
        return tasks
    return [t for t in CHEXLOCALIZE_TASKS if t in manifest.columns and manifest[t].notna().any()]


def _fill_missing_splits(manifest: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Rows without a split (``labels.csv`` without ``attributes.csv``) get one by patient,
    at random (``ingestion.split_fractions``, ``ingestion.seed``)."""
    split = manifest["split"]
    if not (split == "").any():
        return split
    fractions, seed = common.fractions_param(params), common.seed_param(params)
    assignment = assign_patient_splits(manifest["patient_id"], fractions, seed)
    return split.mask(split == "", manifest["patient_id"].map(assignment))


# ----------------------------------------------------------------------------- images


def read_images(
    root: Path, labels: pd.DataFrame, on_missing: str
) -> tuple[pd.DataFrame, dict[str, tuple[int, int]]]:
    """Manifest rows of the labelled images, and each image's (h, w).

    Args:
        root: The folder.
        labels: ``read_labels`` output.
        on_missing: ``error`` or ``skip`` (a row whose image does not exist).

    Returns:
        One manifest row per existing image (ids, split, path, view, size, sex, age,
        labels) and ``{image_id: (h, w)}``.

    Raises:
        DataFormatError: a missing image (``on_missing: error``; names the CSV and row), an
            unreadable or truncated image, or no usable row at all.
    """
    labels = labels.assign(_image=[resolve_image_path(root, p) for p in labels["Path"]])
    keep = np.ones(len(labels), dtype=bool)
    for csv_path, group in labels.groupby("_csv", sort=False):
        positions = labels.index.get_indexer(group.index)
        keep[positions] = common.keep_existing(
            list(group["_image"]),
            list(group["_ref"]),
            source_file=Path(csv_path),
            on_missing=on_missing,
        )
    skipped = int((~keep).sum())
    if skipped:
        logger.warning(
            "Skipped %d CSV row(s) whose image is missing (ingestion.on_missing=skip)", skipped
        )
    rows, sizes = [], {}
    for rec in labels[keep].to_dict("records"):
        h, w = _image_size(rec["_image"], rec["_ref"], Path(rec["_csv"]))
        sizes[rec["image_id"]] = (h, w)
        rows.append(_manifest_row(rec, h, w))
    if not rows:
        problem = "no usable rows: every image referenced by the labels CSV is missing"
        raise DataFormatError(root, problem)
    return pd.DataFrame(rows), sizes


def _image_size(path: Path, ref: str, csv_path: Path) -> tuple[int, int]:
    """(h, w) of an image, fully read once so a truncated file is caught here."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            img.verify()
    except Image.DecompressionBombError as exc:  # not an OSError
        problem = f"image too large to read (referenced by {csv_path.name} {ref}): {exc}"
        raise DataFormatError(path, problem) from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        problem = f"unreadable or truncated image (referenced by {csv_path.name} {ref}): {exc}"
        raise DataFormatError(path, problem) from exc
    return h, w


def _manifest_row(rec: Mapping[str, Any], h: int, w: int) -> dict[str, Any]:
    """The manifest row of one labels-CSV record whose image is (h, w)."""
    parts = rec["image_id"].split("_")
    ap_pa = rec.get("AP/PA")
    row = {
        "image_id": rec["image_id"],
        "patient_id": parts[0],
        "study_id": "_".join(parts[:2]),
        "split": rec["_split"],
        "path": str(Path(rec["_image"]).resolve()),
        "view": ap_pa if isinstance(ap_pa, str) else rec.get("Frontal/Lateral", np.nan),
        "width": w,
        "height": h,
        "sex": _SEX.get(str(rec.get("Sex")), np.nan),
        "age_years": rec.get("Age", np.nan),
    }
    for obs in CHEXPERT_OBSERVATIONS:
        row[task_column(obs)] = rec.get(obs, np.nan)
    return row


def _read_attributes(path: Path) -> pd.DataFrame | None:
    """``attributes.csv`` (phantom): one row per image, ``None`` when there is none.

    Raises:
        DataFormatError: a column of ``ATTRIBUTE_HEADER`` is missing.
    """
    if not path.is_file():
        return None
    df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "study_id": str})
    missing = [c for c in ATTRIBUTE_HEADER if c not in df.columns]
    if missing:
        problem = f"missing column(s) {missing}; expected {list(ATTRIBUTE_HEADER)}"
        raise DataFormatError(path, problem, where="line 1")
    return df


def _merge_attributes(manifest: pd.DataFrame, attributes: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The manifest with ids, split and attributes taken from ``attributes.csv``.

    Raises:
        DataFormatError: an image of the manifest has no attributes row.
    """
    missing = sorted(set(manifest["image_id"]) - set(attributes["image_id"]))
    if missing:
        problem = f"no attributes for {len(missing)} image(s), e.g. {missing[:3]}"
        raise DataFormatError(path, problem)
    attrs = attributes.set_index("image_id")
    out = manifest.drop(columns=[c for c in ("sex", "age_years") if c in manifest.columns])
    extra = [c for c in attributes.columns if c not in ATTRIBUTE_HEADER]
    for col in (*ATTRIBUTE_HEADER[1:], *extra):
        out[col] = out["image_id"].map(attrs[col])
    return out


def _find_renders(root: Path, manifest: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Counterfactual renders under ``counterfactuals/<name>/`` mirroring the image paths."""
    base = root / "counterfactuals"
    if not base.is_dir():
        return {}
    out: dict[str, dict[str, str]] = {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and _RENDER_DIR.match(p.name)):
        found = {}
        for image_id, path in zip(manifest["image_id"], manifest["path"]):
            candidate = folder / Path(path).resolve().relative_to(root.resolve())
            if candidate.is_file():
                found[image_id] = str(candidate.resolve())
        if found:
            out[folder.name] = found
    return out


# ----------------------------------------------------------------------------- ground truth


def read_ground_truth(
    root: Path, sizes: Mapping[str, tuple[int, int]], tasks: list[str]
) -> GroundTruth:
    """The ``gt_*`` annotations and segmentations and the spurious-object segmentations.

    ``gt_annotations*.json`` and ``gt_segmentations*.json`` (``_val``, ``_test`` and plain
    names merged); without segmentations the annotations are rasterised (CheXlocalize's
    reference rasterisation) for the CheXlocalize tasks among ``tasks`` (all of ``tasks``
    when none is).

    Args:
        root: The folder.
        sizes: ``{image_id: (h, w)}`` of the ingested images.
        tasks: The selected tasks.

    Raises:
        DataFormatError: invalid JSON, an unknown task or object name, a malformed polygon
            or RLE, or a size that is not the image's (names the file, CXR and task).
    """
    annotations = _load_split_json(root, "gt_annotations")
    check_annotations(annotations, "gt_annotations", sizes)
    segmentations = _load_split_json(root, "gt_segmentations")
    check_segmentations(segmentations, "gt_segmentations", sizes)
    if annotations and not segmentations:
        chexlocalize_tasks = [t for t in CHEXLOCALIZE_TASKS if t in tasks]
        segmentations = rasterize_annotations(annotations, chexlocalize_tasks or tasks)
    spurious_path = _find(root, ("spurious_segmentations.json",))
    spurious = load_json(spurious_path) if spurious_path else {}
    source = spurious_path or "spurious_segmentations"
    check_segmentations(spurious, source, sizes, frozenset(SPURIOUS_OBJECTS))
    return GroundTruth(annotations, segmentations, spurious)


def read_human_benchmark(root: Path, sizes: Mapping[str, tuple[int, int]]) -> Json:
    """The human benchmark (``HUMAN_BENCHMARK_FILES``; a missing part is ``{}``).

    Returns:
        ``{"annotations": ..., "segmentations": ..., "salient_points": ...}``.

    Raises:
        DataFormatError: invalid JSON, or annotations / segmentations that fail the
            checks of ``read_ground_truth``.
    """
    human = {part: _load_optional(root, names) for part, names in HUMAN_BENCHMARK_FILES.items()}
    check_annotations(human["annotations"], "hb_annotations", sizes)
    check_segmentations(human["segmentations"], "hb_segmentations", sizes)
    return human


def json_folders(root: Path) -> tuple[Path, ...]:
    """Where the JSON files are looked for, in order: ``root``, ``root/CheXlocalize`` and,
    when neither holds a ``gt_*`` file (``GT_FILES``), ``root/../CheXlocalize`` (the release
    puts ``CheXlocalize/`` beside ``CheXpert/``; a folder with its own ground truth, such as
    a phantom, never mixes in the files of a folder beside it)."""
    near = (root, root / JSON_DIR)
    beside = root.parent / JSON_DIR
    if any((folder / name).is_file() for folder in near for name in GT_FILES):
        return near
    if beside.resolve() in {folder.resolve() for folder in near}:
        return near
    return (*near, beside)


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` in the first folder of ``json_folders(root)`` holding one."""
    for folder in json_folders(root):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _check_ground_truth_found(root: Path, manifest: pd.DataFrame, tasks: list[str]) -> None:
    """Labels with positives for CheXlocalize tasks need a ``gt_*`` file somewhere.

    Raises:
        DataFormatError: no ``GT_FILES`` in any of ``json_folders(root)`` while some image is
            positive for a CheXlocalize task among ``tasks`` (naming the folders searched).
    """
    if _find(root, GT_FILES) is not None:
        return
    positive = {
        t: int((manifest[t] == 1.0).sum())
        for t in tasks
        if t in CHEXLOCALIZE_TASKS and t in manifest.columns
    }
    positive = {t: n for t, n in positive.items() if n}
    if not positive:
        return
    searched = ", ".join(str(folder) for folder in json_folders(root))
    problem = (
        f"the labels have positives for CheXlocalize task(s) {positive} but no ground truth: "
        f"none of {list(GT_FILES)} in {searched}; put the release's CheXlocalize/ folder "
        "inside or beside this one (or use source chexpert for labels without locations)"
    )
    raise DataFormatError(root, problem)


def _load_split_json(root: Path, stem: str) -> Json:
    """``<stem>_val.json``, ``<stem>_test.json`` and ``<stem>.json`` merged (later wins)."""
    merged: Json = {}
    for name in (f"{stem}_val.json", f"{stem}_test.json", f"{stem}.json"):
        path = _find(root, (name,))
        if path is not None:
            merged.update(load_json(path))
    return merged


def _load_optional(root: Path, names: tuple[str, ...]) -> Json:
    """The first of ``names`` that exists, or ``{}``."""
    path = _find(root, names)
    return load_json(path) if path else {}


def _only(blob: Mapping[str, Any], keep: set[str]) -> Json:
    """The entries of ``blob`` whose cxr id is in ``keep``."""
    return {k: v for k, v in blob.items() if k in keep}
