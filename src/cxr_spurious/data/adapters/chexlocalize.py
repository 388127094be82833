"""CheXlocalize layout: CheXpert-style labels CSV + images + annotation / segmentation JSON.

Reads a folder laid out like the CheXlocalize release (or its ``sample/`` folder)::

    <root>/valid.csv | val_labels.csv | test_labels.csv | labels.csv   (CheXpert header)
    <root>/valid/patientXXXXX/studyN/viewN_frontal.jpg                 (or val/, test/, images/)
    <root>/gt_annotations_val.json, gt_segmentations_val.json          (optional, also *_test)
    <root>/hb_annotations_test.json, hb_segmentations_test.json, hb_salient_pt_test.json

The JSON files may also sit in ``<root>/CheXlocalize/``. The phantom generator writes the
same layout (plus ``attributes.csv`` and ``spurious_segmentations.json``), so both go
through this reader.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cxr_spurious.data.adapters.base import IngestedSource
from cxr_spurious.data.contract import ATTRIBUTE_HEADER, assign_patient_splits, normalise_manifest
from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.io.masks import encode_rle, rasterize_polygons
from cxr_spurious.localization.chexlocalize_io import load_json, validate_segmentation_json
from cxr_spurious.tasks import (
    CHEXLOCALIZE_TASKS,
    CHEXPERT_HEADER,
    CHEXPERT_OBSERVATIONS,
    PHANTOM_TASKS,
    SPURIOUS_OBJECTS,
    task_column,
)

logger = logging.getLogger(__name__)

# Labels files and the split they hold, in lookup order.
LABEL_FILES: tuple[tuple[str, str], ...] = (
    ("labels.csv", ""),  # phantom: split from attributes.csv
    ("valid.csv", "val"),
    ("val_labels.csv", "val"),
    ("test_labels.csv", "test"),
)
# test_labels.csv has no demographic columns.
TEST_LABELS_HEADER: tuple[str, ...] = ("Path", *CHEXPERT_OBSERVATIONS)
KNOWN_TASKS: frozenset[str] = frozenset(CHEXLOCALIZE_TASKS) | frozenset(PHANTOM_TASKS) | frozenset(task_column(o) for o in CHEXPERT_OBSERVATIONS)
_SPLIT_DIRS = ("valid", "val", "test", "train", "images")
_SEX = {"Male": "M", "Female": "F", "M": "M", "F": "F"}


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
    return pd.read_csv(path, dtype={"Path": str})


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for folder in (root, root / "CheXlocalize"):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def check_annotations(annotations: Mapping[str, Any], source: Path | str, sizes: Mapping[str, tuple[int, int]]) -> None:
    """Validate CheXlocalize polygon annotations.

    Checks every task name, every polygon (>= 3 points of 2 numbers) and ``img_size``
    against the image size.

    Raises:
        DataFormatError: naming the file, the cxr id and task.
    """
    for cxr_id, entry in annotations.items():
        if not isinstance(entry, Mapping):
            raise DataFormatError(source, f"expected an object of tasks, got {type(entry).__name__}", where=cxr_id)
        size = entry.get("img_size")
        if size is None or len(size) != 2:
            raise DataFormatError(source, "missing 'img_size' [h, w]", where=cxr_id)
        if cxr_id in sizes and tuple(int(v) for v in size) != sizes[cxr_id]:
            raise DataFormatError(source, f"img_size {list(size)} disagrees with the image's [h, w] {list(sizes[cxr_id])}", where=cxr_id)
        for task, polygons in entry.items():
            if task == "img_size":
                continue
            if task not in KNOWN_TASKS:
                raise DataFormatError(source, f"unknown task name '{task}'; expected one of {sorted(KNOWN_TASKS)}", where=cxr_id)
            for k, polygon in enumerate(polygons):
                pts = np.asarray(polygon, dtype=float)
                if pts.ndim != 2 or pts.shape[1] != 2:
                    raise DataFormatError(source, f"polygon {k} must be a list of [x, y] points", where=f"{cxr_id}/{task}")
                if len(pts) < 3:
                    raise DataFormatError(source, f"polygon {k} has {len(pts)} point(s); a polygon needs at least 3", where=f"{cxr_id}/{task}")


def check_segmentations(segmentations: Mapping[str, Any], source: Path | str, sizes: Mapping[str, tuple[int, int]], names: frozenset[str] | None = None) -> None:
    """Validate RLE segmentations: known names, decodable RLE of the image's size.

    The image sizes are compared here; names and RLEs go through the localization
    reader's ``validate_segmentation_json``.
    """
    for cxr_id, entry in segmentations.items():
        for name, rle in (entry.items() if isinstance(entry, Mapping) else ()):
            size = rle.get("size") if isinstance(rle, Mapping) else None
            if cxr_id in sizes and isinstance(size, list | tuple) and tuple(size) != tuple(sizes[cxr_id]):
                raise DataFormatError(source, f"RLE size {list(size)} disagrees with the image's [h, w] {list(sizes[cxr_id])}", where=f"{cxr_id}/{name}")
    allowed = names if names is not None else KNOWN_TASKS
    validate_segmentation_json(segmentations, source=source, tasks=tuple(sorted(allowed)), decode=True)


def rasterize_annotations(annotations: Mapping[str, Any], tasks: list[str]) -> dict[str, dict[str, Any]]:
    """CheXlocalize reference rasterisation: polygons -> RLE for every task of every CXR."""
    out: dict[str, dict[str, Any]] = {}
    for cxr_id, entry in annotations.items():
        h, w = (int(v) for v in entry["img_size"])
        out[cxr_id] = {task: encode_rle(rasterize_polygons(entry.get(task, []), h, w)) for task in tasks}
    return out


def _image_size(path: Path, row: int, csv_path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            w, h = img.size
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataFormatError(path, f"unreadable or truncated image (referenced by {csv_path.name} row {row}): {exc}") from exc
    return h, w


def read_chexlocalize(root: Path, params: Mapping[str, Any]) -> IngestedSource:
    """Read a CheXlocalize-layout folder (see module docstring).

    Args:
        root: The folder.
        params: The ``ingestion`` parameters (``on_missing``, ``split_fractions``, ``seed``,
            ``tasks``).

    Returns:
        The manifest and ground truth in the project contract.
    """
    root = Path(root)
    if not root.is_dir():
        raise ParameterError("ingestion.root", f"'{root}' is not a folder")
    on_missing = params.get("on_missing", "error")
    if on_missing not in {"error", "skip"}:
        raise ParameterError("ingestion.on_missing", f"must be 'error' or 'skip', got {on_missing!r}")
    frames = []
    for name, split in LABEL_FILES:
        path = root / name
        if path.is_file():
            df = read_labels_csv(path)
            df["_split"] = split
            df["_csv"] = str(path)
            df["_row"] = np.arange(2, len(df) + 2)  # 1-based line numbers after the header
            frames.append(df)
    if not frames:
        raise DataFormatError(root, f"no labels CSV found; expected one of {[n for n, _ in LABEL_FILES]}")
    labels = pd.concat(frames, ignore_index=True)
    labels["image_id"] = labels["Path"].map(cxr_id_from_path)
    attributes = _read_attributes(root)

    rows, skipped = [], 0
    sizes: dict[str, tuple[int, int]] = {}
    for rec in labels.to_dict("records"):
        csv_path = Path(rec["_csv"])
        img_path = resolve_image_path(root, rec["Path"])
        if not img_path.is_file():
            if on_missing == "skip":
                skipped += 1
                logger.warning("Skipping %s row %d: image %s not found", csv_path.name, rec["_row"], img_path)
                continue
            raise DataFormatError(csv_path, f"image '{img_path}' referenced by this row does not exist", where=f"row {rec['_row']}")
        h, w = _image_size(img_path, rec["_row"], csv_path)
        sizes[rec["image_id"]] = (h, w)
        parts = rec["image_id"].split("_")
        row = {
            "image_id": rec["image_id"],
            "patient_id": parts[0],
            "study_id": "_".join(parts[:2]),
            "split": rec["_split"],
            "path": str(img_path.resolve()),
            "view": rec.get("AP/PA") if isinstance(rec.get("AP/PA"), str) else rec.get("Frontal/Lateral", np.nan),
            "width": w,
            "height": h,
            "sex": _SEX.get(str(rec.get("Sex")), np.nan),
            "age_years": float(rec["Age"]) if pd.notna(rec.get("Age")) and float(rec["Age"]) > 0 else np.nan,
        }
        for obs in CHEXPERT_OBSERVATIONS:
            row[task_column(obs)] = rec.get(obs, np.nan)
        rows.append(row)
    if skipped:
        logger.warning("Skipped %d CSV row(s) whose image is missing (ingestion.on_missing=skip)", skipped)
    if not rows:
        raise DataFormatError(root, "no usable rows: every image referenced by the labels CSV is missing")
    manifest = pd.DataFrame(rows)
    if attributes is not None:
        manifest = _merge_attributes(manifest, attributes, root / "attributes.csv")

    # Ground truth.
    annotations = _load_split_json(root, "gt_annotations")
    check_annotations(annotations, "gt_annotations", sizes)
    segmentations = _load_split_json(root, "gt_segmentations")
    check_segmentations(segmentations, "gt_segmentations", sizes)
    all_tasks = [task_column(o) for o in CHEXPERT_OBSERVATIONS]
    tasks = _select_tasks(params.get("tasks"), manifest, annotations, all_tasks)
    if annotations and not segmentations:
        segmentations = rasterize_annotations(annotations, [t for t in CHEXLOCALIZE_TASKS if t in tasks] or tasks)
    spurious_path = _find(root, ("spurious_segmentations.json",))
    spurious = load_json(spurious_path) if spurious_path else {}
    check_segmentations(spurious, spurious_path or "spurious_segmentations", sizes, frozenset(SPURIOUS_OBJECTS))
    human = {
        "annotations": _load_optional(root, ("hb_annotations_test.json", "hb_annotations.json")),
        "segmentations": _load_optional(root, ("hb_segmentations_test.json", "hb_segmentations.json")),
        "salient_points": _load_optional(root, ("hb_salient_pt_test.json", "hb_salient_pt.json")),
    }
    check_annotations(human["annotations"], "hb_annotations", sizes)
    check_segmentations(human["segmentations"], "hb_segmentations", sizes)
    variants = _find_variants(root, manifest)

    if (manifest["split"] == "").any():
        assignment = assign_patient_splits(manifest["patient_id"], dict(params.get("split_fractions", {"train": 0.6, "val": 0.15, "test": 0.25})), int(params.get("seed", 0)))
        manifest.loc[manifest["split"] == "", "split"] = manifest["patient_id"].map(assignment)
    keep = set(manifest["image_id"])
    manifest = manifest.drop(columns=[t for t in all_tasks if t not in tasks and t in manifest.columns])
    return IngestedSource(
        manifest=normalise_manifest(manifest, tasks, source=str(params.get("source", "chexlocalize"))),
        tasks=tasks,
        annotations={k: v for k, v in annotations.items() if k in keep},
        segmentations={k: {t: r for t, r in v.items() if t in tasks} for k, v in segmentations.items() if k in keep},
        spurious_segmentations={k: v for k, v in spurious.items() if k in keep},
        human_benchmark={name: {k: v for k, v in blob.items() if k in keep} for name, blob in human.items()},
        variants=variants,
    )


def _select_tasks(requested: Any, manifest: pd.DataFrame, annotations: Mapping[str, Any], all_tasks: list[str]) -> list[str]:
    if requested:
        tasks = [task_column(t) for t in ([requested] if isinstance(requested, str) else requested)]
        unknown = [t for t in tasks if t not in manifest.columns]
        if unknown:
            raise ParameterError("ingestion.tasks", f"unknown task(s) {unknown}; this source has {all_tasks}")
        return tasks
    # Default: the CheXlocalize localization tasks that have labels here.
    return [t for t in CHEXLOCALIZE_TASKS if t in manifest.columns and manifest[t].notna().any()]


def _load_split_json(root: Path, stem: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in (f"{stem}_val.json", f"{stem}_test.json", f"{stem}.json"):
        path = _find(root, (name,))
        if path is not None:
            merged.update(load_json(path))
    return merged


def _load_optional(root: Path, names: tuple[str, ...]) -> dict[str, Any]:
    path = _find(root, names)
    return load_json(path) if path else {}




def _read_attributes(root: Path) -> pd.DataFrame | None:
    path = root / "attributes.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "study_id": str})
    missing = [c for c in ATTRIBUTE_HEADER if c not in df.columns]
    if missing:
        raise DataFormatError(path, f"missing column(s) {missing}; expected {list(ATTRIBUTE_HEADER)}", where="line 1")
    return df


def _merge_attributes(manifest: pd.DataFrame, attributes: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = sorted(set(manifest["image_id"]) - set(attributes["image_id"]))
    if missing:
        raise DataFormatError(path, f"no attributes for {len(missing)} image(s), e.g. {missing[:3]}")
    attrs = attributes.set_index("image_id")
    out = manifest.drop(columns=[c for c in ("sex", "age_years") if c in manifest.columns])
    for col in ("patient_id", "study_id", "split", "sex", "age_years", "race", "insurance", "site", "tube"):
        out[col] = out["image_id"].map(attrs[col])
    extra = [c for c in attributes.columns if c not in ATTRIBUTE_HEADER]
    for col in extra:
        out[col] = out["image_id"].map(attrs[col])
    return out


_VARIANT_DIR = re.compile(r"^[a-z0-9_]+$")


def _find_variants(root: Path, manifest: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Counterfactual renders under ``counterfactuals/<name>/`` mirroring the image paths."""
    base = root / "counterfactuals"
    if not base.is_dir():
        return {}
    out: dict[str, dict[str, str]] = {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and _VARIANT_DIR.match(p.name)):
        found = {}
        for image_id, path in zip(manifest["image_id"], manifest["path"]):
            rel = Path(path).resolve().relative_to(root.resolve())
            candidate = folder / rel
            if candidate.is_file():
                found[image_id] = str(candidate.resolve())
        if found:
            out[folder.name] = found
    return out
