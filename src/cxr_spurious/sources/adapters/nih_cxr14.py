"""NIH ChestX-ray14: ``Data_Entry_2017[_v2020].csv``, split lists, boxes and a PNG tree.

Layout (``root`` holds the CSVs; PNGs anywhere below it, NIH Box ``images/`` or Kaggle
``images_0NN/images/``)::

    <root>/Data_Entry_2017_v2020.csv | Data_Entry_2017.csv
    <root>/train_val_list.txt, test_list.txt       (optional; one filename per line)
    <root>/BBox_List_2017.csv                       (optional)
    <root>/**/<8-digit patient>_<3-digit>.png

* ``v2020`` is preferred when both entry files exist (``nih_data_entry`` picks one). The
  bracketed header names contain commas (11 fields; 2017 adds a trailing empty 12th).
* Ages that cannot be right (> 110 years, the 2017 file has up to 414) become NaN;
  ``058Y`` strings are parsed.
* Splits: ``train_val_list.txt`` -> ``train``, ``test_list.txt`` -> ``test`` (checked
  patient-disjoint); ``val`` is carved from the train_val patients with
  ``split_fractions`` and ``seed``. Without the lists all three are carved.
* ``BBox_List_2017.csv`` boxes become polygons (4 corners) in ``annotations``, filled boxes
  in ``segmentations`` (per task, with empty masks for tasks labelled absent) and one
  instance per box in ``instance_segmentations``; ``Infiltrate`` means ``Infiltration``.
  A box starting outside its PNG (a downsampled copy) is refused, naming its line.
* Task columns keep NIH's spellings (``Effusion``, ``Pleural_Thickening``...).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.sources.adapters import _common as common
from cxr_spurious.sources.adapters.base import IngestedSource, Json
from cxr_spurious.sources.contract import normalise_manifest

logger = logging.getLogger(__name__)

SOURCE = "nih_cxr14"
ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_FILE = "BBox_List_2017.csv"
SPLIT_LISTS = (("train_val_list.txt", "train"), ("test_list.txt", "test"))
TASKS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"
ENTRY_HEADER: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
ENTRY_NAMES = (
    "image",
    "labels",
    "follow_up",
    "patient",
    "age",
    "sex",
    "view",
    "orig_w",
    "orig_h",
    "spacing_x",
    "spacing_y",
)
BBOX_HEADER: tuple[str, ...] = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
BBOX_LABELS = {**{t: t for t in TASKS}, "Infiltrate": "Infiltration"}


def _csv_frame(
    path: Path, names: Sequence[str], values_of: Callable[[list[str]], list[str] | str]
) -> pd.DataFrame:
    """The data rows of a CSV whose header was checked, as strings, with ``_ref``.

    Blank lines are skipped; ``values_of`` turns a row's fields into its ``len(names)``
    values, or returns what is wrong with the row.

    Raises:
        DataFormatError: naming the row's line (``values_of``'s problem), or an unreadable file.
    """
    rows: list[list[str]] = []
    refs: list[str] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            next(reader, None)  # the header
            for fields in reader:
                if not fields:
                    continue
                values = values_of(fields)
                if isinstance(values, str):
                    raise DataFormatError(path, values, where=f"line {reader.line_num}")
                rows.append(values)
                refs.append(f"line {reader.line_num}")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(path, f"cannot read the CSV rows: {exc}") from exc
    frame = pd.DataFrame(rows, columns=list(names), dtype=str)
    frame["_ref"] = refs
    return frame


def read_data_entry(path: Path) -> pd.DataFrame:
    """Read either Data_Entry variant with its header checked and own column names.

    Every row must have the header's 11 values: a row with fewer or more would shift or
    drop values silently. The 2017 file ends each line with a comma (an empty 12th field);
    there a row may end with one empty field, and an 11-field row must not end empty (10
    values and the trailing comma). Blank lines are skipped.

    Returns:
        Columns ``ENTRY_NAMES`` (strings) plus ``_ref`` (``line N``, the row's line in
        the file).

    Raises:
        DataFormatError: the header is neither the 2017 nor the v2020 one, or a row has the
            wrong number of fields (naming its line).
    """
    found = [c.strip() for c in common.read_first_line(path).split(",")]
    trailing = len(found) == len(ENTRY_HEADER) + 1 and found[-1] == ""
    common.check_header(path, found[:-1] if trailing else found, ENTRY_HEADER)
    n = len(ENTRY_NAMES)
    expected = f"{n} like the header" + (
        f", or {n + 1} with an empty last one (the 2017 file's trailing comma)" if trailing else ""
    )

    def values_of(fields: list[str]) -> list[str] | str:
        values = fields[:-1] if trailing and fields[-1] == "" else fields
        if len(values) != n:
            empty = " (the last empty)" if fields[-1] == "" else ""
            return f"row has {len(fields)} fields{empty}; expected {expected}"
        return values

    return _csv_frame(path, ENTRY_NAMES, values_of)


def parse_findings(labels: pd.Series, refs: pd.Series, *, source_file: Path) -> pd.DataFrame:
    """``Effusion|Infiltration`` -> one 1/0 column per task.

    Raises:
        DataFormatError: an empty label, an unknown finding name, or ``No Finding`` combined
            with others.
    """
    out = np.zeros((len(labels), len(TASKS)), dtype=np.float64)
    column = {t: j for j, t in enumerate(TASKS)}
    for i, (text, ref) in enumerate(zip(labels, refs)):
        names = [n.strip() for n in str(text).split("|") if n.strip()]
        if not names:
            raise DataFormatError(
                source_file,
                f"empty 'Finding Labels' ({text!r}); expected a finding or 'No Finding'",
                where=ref,
            )
        if names == [NO_FINDING]:
            continue
        for name in names:
            if name not in column:
                raise DataFormatError(
                    source_file,
                    f"unknown finding {name!r} in {text!r}; "
                    f"expected '|'-separated names from {list(TASKS)} or 'No Finding' alone",
                    where=ref,
                )
            out[i, column[name]] = 1.0
    return pd.DataFrame(out, columns=list(TASKS), index=labels.index)


def read_split_lists(folder: Path) -> dict[str, str]:
    """``{filename stem: split}`` from the official lists (empty when absent).

    Raises:
        DataFormatError: an image listed in both files, or one file without the other (the
            images of the absent list would all be left out as in neither list).
    """
    present = [(folder / name).is_file() for name, _ in SPLIT_LISTS]
    if any(present) and not all(present):
        there, absent = (SPLIT_LISTS[i][0] for i in ((0, 1) if present[0] else (1, 0)))
        raise DataFormatError(
            folder / there,
            f"{absent} is missing beside it: the official split needs both lists (else every "
            f"image of the absent list would be left out); add {absent}, or remove {there} to "
            "carve val and test by patient",
        )
    split: dict[str, str] = {}
    for name, value in SPLIT_LISTS:
        path = folder / name
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            stem = line.strip().removesuffix(".png")
            if not stem:
                continue
            if stem in split and split[stem] != value:
                raise DataFormatError(
                    path,
                    f"{stem}.png is also in the {split[stem]} list; "
                    "the official lists must be disjoint",
                    where=f"line {number}",
                )
            split[stem] = value
    return split


def read_boxes(path: Path) -> pd.DataFrame:
    """Read ``BBox_List_2017.csv`` (9-field header, 6-field rows; empty fields after them).

    Returns:
        Columns ``image``, ``task`` (``Infiltrate`` -> ``Infiltration``), ``x, y, w, h``
        (float pixels of the 1024x1024 PNG, top-left corner) and ``_ref``.

    Raises:
        DataFormatError: a changed header, a row with fewer than 6 fields or a value after
            the 6th (naming its line), an unknown label or a non-numeric / negative box.
    """
    found = [c.strip() for c in common.read_first_line(path).split(",")]
    common.check_header(
        path,
        [c for c in found if c] if all(c == "" for c in found[len(BBOX_HEADER) :]) else found,
        BBOX_HEADER,
    )
    names = ["image", "label", "x", "y", "w", "h"]

    def values_of(fields: list[str]) -> list[str] | str:
        extra = [f for f in fields[len(names) :] if f.strip()]
        if len(fields) < len(names) or extra:
            return (
                f"row has {len(fields)} fields"
                + (f" with values after the 6th ({extra[:3]})" if extra else "")
                + "; expected 6 (image, label, x, y, w, h), then only empty ones"
            )
        return fields[: len(names)]

    frame = _csv_frame(path, names, values_of)
    unknown = ~frame["label"].str.strip().isin(list(BBOX_LABELS))
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataFormatError(
            path,
            f"unknown box label {frame['label'].iat[i]!r}; expected one of {sorted(BBOX_LABELS)}",
            where=frame["_ref"].iat[i],
        )
    frame["task"] = frame["label"].str.strip().map(BBOX_LABELS)
    coords = frame[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce")
    bad = (
        coords.isna().any(axis=1)
        | (coords[["w", "h"]] <= 0).any(axis=1)
        | (coords[["x", "y"]] < 0).any(axis=1)
    )
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(
            path,
            f"box {frame.loc[frame.index[i], ['x', 'y', 'w', 'h']].tolist()} "
            "is not x, y >= 0 and w, h > 0",
            where=frame["_ref"].iat[i],
        )
    frame[["x", "y", "w", "h"]] = coords
    frame["image"] = frame["image"].str.strip().str.removesuffix(".png")
    return frame


def box_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    """The 4 corners (x, y) of a box, clockwise from the top-left."""
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def box_mask(boxes: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Fill boxes ``(x, y, w, h)`` into a uint8 (height, width) mask, ``w x h`` pixels each.

    A box covers the pixels ``[x, x + w) x [y, y + h)``, its edges rounded to the pixel grid
    and clipped to the image, at least one pixel when it starts inside the image (one that
    starts beyond its right or bottom edge draws nothing). Filling its corner
    polygon instead (``rasterize_polygons``, outline included, the CheXlocalize convention
    for hand-drawn contours) adds a row and a column: an 11 x 21 mask for a 10 x 20 box.
    """
    mask = np.zeros((int(height), int(width)), dtype=np.uint8)
    for x, y, w, h in boxes:
        c0, r0 = max(round(x), 0), max(round(y), 0)
        if c0 >= width or r0 >= height:
            continue
        c1, r1 = min(max(round(x + w), c0 + 1), width), min(max(round(y + h), r0 + 1), height)
        mask[r0:r1, c0:c1] = 1
    return mask


def check_boxes_inside(
    boxes: pd.DataFrame, manifest: pd.DataFrame, tasks: list[str], path: Path
) -> None:
    """Refuse a box of ``tasks`` that starts beyond its image's right or bottom edge.

    ``box_mask`` draws nothing for such a box, so its positive label would get a known-empty
    mask. It happens with downsampled copies of NIH (boxes are in the 1024 x 1024 PNG's
    pixels).

    Raises:
        DataFormatError: naming ``path``, the box's line and the image size.
    """
    used = boxes[boxes["task"].isin(tasks)]
    info = manifest.set_index("image_id")
    width = info["width"].reindex(used["image"]).to_numpy(dtype=float)
    height = info["height"].reindex(used["image"]).to_numpy(dtype=float)
    outside = (np.round(used["x"].to_numpy(dtype=float)) >= width) | (
        np.round(used["y"].to_numpy(dtype=float)) >= height
    )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        box = used[["x", "y", "w", "h"]].iloc[i].tolist()
        raise DataFormatError(
            path,
            f"{used['task'].iat[i]} box {box} (x, y, w, h) lies outside its image "
            f"{used['image'].iat[i]}.png of {int(width[i])}x{int(height[i])} (w x h) pixels, so "
            "the positive label would get an empty mask; the boxes are in the pixels of NIH's "
            "1024x1024 PNGs: use the full-size images, or leave this file out",
            where=used["_ref"].iat[i],
        )


def boxes_to_ground_truth(
    boxes: pd.DataFrame, manifest: pd.DataFrame, tasks: list[str]
) -> tuple[Json, Json, Json]:
    """Polygons, per-task filled-box masks and per-box instances for the boxed images.

    A task gets a mask when it has a box (filled) or is labelled absent (empty); tasks
    labelled present without a box are left out (location unknown).
    """
    info = manifest.set_index("image_id")
    annotations: Json = {}
    segmentations: Json = {}
    instances: Json = {}
    for image_id, group in boxes[boxes["task"].isin(tasks)].groupby("image", sort=False):
        h, w = int(info.at[image_id, "height"]), int(info.at[image_id, "width"])
        by_task = {
            task: [tuple(map(float, r)) for r in g[["x", "y", "w", "h"]].itertuples(index=False)]
            for task, g in group.groupby("task", sort=False)
        }
        polygons = {task: [box_polygon(*b) for b in bs] for task, bs in by_task.items()}
        annotations[image_id] = {"img_size": [h, w], **polygons}
        instances[image_id] = {
            t: [encode_rle(box_mask([b], h, w)) for b in bs] for t, bs in by_task.items()
        }
        masks = {t: encode_rle(box_mask(bs, h, w)) for t, bs in by_task.items()}
        empty = encode_rle(np.zeros((h, w), dtype=np.uint8))
        masks.update(
            {t: dict(empty) for t in tasks if t not in masks and info.at[image_id, t] == 0.0}
        )
        segmentations[image_id] = {t: masks[t] for t in tasks if t in masks}
    return annotations, segmentations, instances


def read_nih_cxr14(root: Path, params: Mapping[str, Any]) -> IngestedSource:
    """Read NIH ChestX-ray14.

    Args:
        root: The folder with ``Data_Entry_2017*.csv``.
        params: The ``ingestion`` block (``nih_data_entry`` optional file name; common keys).

    Returns:
        Manifest with the 14 NIH tasks (extra columns ``follow_up``, ``orig_width``,
        ``orig_height``) and box ground truth.

    Raises:
        DataFormatError: changed headers, bad rows, overlapping split lists, a missing image
            (``on_missing: error``), duplicated images, conflicting sex or a box outside its
            image.
    """
    on_missing = common.on_missing_param(params)
    sex_rule = common.choice_param(params, "sex_conflict", common.SEX_CONFLICT_RULES, "error")
    tasks = common.select_tasks(TASKS, params)
    entry_names = (str(params["nih_data_entry"]),) if params.get("nih_data_entry") else ENTRY_FILES
    folder = common.find_dataset_dir(Path(root), entry_names, ())
    entry_path = next(folder / n for n in entry_names if (folder / n).is_file())
    rows = _entry_rows(read_data_entry(entry_path), entry_path)
    refs = [f"{entry_path.name} {r}" for r in rows["_ref"]]
    common.check_unique_ids(rows["image_id"], refs, source_file=entry_path)
    rows["sex"] = common.resolve_sex_conflicts(
        rows, sex_rule, source_file=entry_path, row_refs=refs
    )
    index = common.index_files(folder, ".png")
    rows["path"] = [str(index.get(i, folder / "images" / f"{i}.png")) for i in rows["image_id"]]
    rows = rows[
        common.keep_existing(
            [Path(p) for p in rows["path"]],
            list(rows["_ref"]),
            source_file=entry_path,
            on_missing=on_missing,
        )
    ]
    rows = _assign_splits(rows.reset_index(drop=True), folder, params)
    rows["width"], rows["height"] = common.image_sizes([Path(p) for p in rows["path"]])
    unused = [t for t in TASKS if t not in tasks]
    manifest = normalise_manifest(rows.drop(columns=["_ref", *unused]), tasks, SOURCE)
    annotations: Json = {}
    segmentations: Json = {}
    instances: Json = {}
    if (folder / BBOX_FILE).is_file():
        boxes = read_boxes(folder / BBOX_FILE)
        known = boxes["image"].isin(set(manifest["image_id"]))
        if not known.all():
            logger.warning(
                "%s: %d box(es) on images not in the manifest (first %s); ignored",
                folder / BBOX_FILE,
                int((~known).sum()),
                boxes.loc[~known, "image"].iat[0],
            )
        check_boxes_inside(boxes[known], manifest, tasks, folder / BBOX_FILE)
        annotations, segmentations, instances = boxes_to_ground_truth(boxes[known], manifest, tasks)
    logger.info(
        "nih_cxr14: %d images, %d with boxes, splits %s",
        len(manifest),
        len(annotations),
        manifest["split"].value_counts().to_dict(),
    )
    return IngestedSource(
        manifest=manifest,
        tasks=tasks,
        annotations=annotations,
        segmentations=segmentations,
        instance_segmentations=instances,
    )


def _entry_rows(entry: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Manifest columns from Data_Entry rows."""
    image = entry["image"].str.strip()
    bad = ~image.str.fullmatch(r"\d{8}_\d{3}\.png")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(
            path,
            f"Image Index {image.iat[i]!r} is not '<8-digit patient>_<3-digit>.png'",
            where=entry["_ref"].iat[i],
        )
    patient = pd.to_numeric(entry["patient"].str.strip(), errors="coerce")
    if patient.isna().any():
        i = int(np.flatnonzero(patient.isna().to_numpy())[0])
        raise DataFormatError(
            path,
            f"Patient ID {entry['patient'].iat[i]!r} is not an integer",
            where=entry["_ref"].iat[i],
        )
    rows = pd.DataFrame({"image_id": image.str.removesuffix(".png")})
    rows["patient_id"] = patient.astype("int64").astype(str)
    rows["study_id"] = rows[
        "image_id"
    ]  # one study per follow-up image; Follow-up # is not the suffix
    rows["follow_up"] = pd.to_numeric(entry["follow_up"], errors="coerce")
    rows["view"] = entry["view"].str.strip().replace("", np.nan)
    rows["sex"] = common.normalise_sex(entry["sex"], {"M": "M", "F": "F"})
    rows["age_years"] = common.plausible_age(entry["age"])
    rows["orig_width"] = pd.to_numeric(entry["orig_w"], errors="coerce")
    rows["orig_height"] = pd.to_numeric(entry["orig_h"], errors="coerce")
    rows = pd.concat(
        [rows, parse_findings(entry["labels"], entry["_ref"], source_file=path)], axis=1
    )
    rows["_ref"] = entry["_ref"].to_numpy()
    return rows


def _assign_splits(rows: pd.DataFrame, folder: Path, params: Mapping[str, Any]) -> pd.DataFrame:
    """Official lists -> train / test (others dropped, logged); val carved by patient."""
    fractions, seed = common.fractions_param(params), common.seed_param(params)
    official = read_split_lists(folder)
    if not official:
        logger.warning(
            "%s: no train_val_list.txt / test_list.txt; carving val and test by patient", folder
        )
        split = pd.Series("train", index=rows.index, dtype=object)
        rows["split"] = common.carve_splits(
            split, rows["patient_id"], fractions, seed, from_split="train", into=["val", "test"]
        )
        return rows
    rows["split"] = rows["image_id"].map(official)
    unlisted = rows["split"].isna()
    if unlisted.any():
        logger.warning(
            "%s: %d image(s) in neither split list (first %s); left out",
            folder,
            int(unlisted.sum()),
            rows.loc[unlisted, "image_id"].iat[0],
        )
        rows = rows[~unlisted].reset_index(drop=True)
    common.check_patient_disjoint(
        rows["split"],
        rows["patient_id"],
        source_file=f"{folder / SPLIT_LISTS[0][0]} + {SPLIT_LISTS[1][0]}",
    )
    rows["split"] = common.carve_splits(
        rows["split"], rows["patient_id"], fractions, seed, from_split="train", into=["val"]
    )
    return rows
