"""``example_grid``: a figure of phantom examples with outlines, tube masks and labels."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon as PolygonPatch

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.images import read_image
from cxr_spurious.io.masks import decode_rle
from cxr_spurious.tasks import PHANTOM_TASKS

TASK_COLOURS: dict[str, str] = {
    "Pneumothorax": "#ff3b30",
    "Pleural Effusion": "#34c759",
    "Lung Lesion": "#ffcc00",
    "Cardiomegaly": "#0a84ff",
    "Airspace Opacity": "#ff9f0a",
}
TUBE_COLOUR = (0.85, 0.2, 0.85)
_SHORT = {
    "Pneumothorax": "PTX",
    "Pleural Effusion": "Effusion",
    "Lung Lesion": "Lesion",
    "Cardiomegaly": "Cardiomeg.",
    "Airspace Opacity": "Opacity",
}


def _load_folder(root: Path) -> dict[str, Any]:
    for name in ("attributes.csv", "gt_annotations.json"):
        if not (root / name).is_file():
            raise DataFormatError(
                root / name, "not found; expected a folder written by generate_phantom"
            )
    attributes = pd.read_csv(root / "attributes.csv", dtype={"image_id": str})
    paths = {
        image_id: str(root / "images" / ("/".join(image_id.split("_", 2)) + ".png"))
        for image_id in attributes["image_id"]
    }
    spurious_path = root / "spurious_segmentations.json"
    return {
        "attributes": attributes,
        "annotations": json.loads((root / "gt_annotations.json").read_text()),
        "spurious_segmentations": json.loads(spurious_path.read_text())
        if spurious_path.is_file()
        else {},
        "paths": paths,
    }


def _normalise(data: Any) -> dict[str, Any]:
    """Accept a phantom folder, an ``IngestedSource`` or a mapping with the same parts."""
    if isinstance(data, str | Path):
        return _load_folder(Path(data))
    if hasattr(data, "manifest") and hasattr(data, "annotations"):
        manifest = data.manifest
        return {
            "attributes": manifest,
            "annotations": data.annotations,
            "spurious_segmentations": data.spurious_segmentations,
            "paths": dict(zip(manifest["image_id"], manifest["path"])),
        }
    if isinstance(data, Mapping) and "attributes" in data:
        table = data["attributes"]
        paths = data.get("paths") or (
            dict(zip(table["image_id"], table["path"])) if "path" in table else {}
        )
        return {
            "attributes": table,
            "annotations": data.get("annotations", {}),
            "spurious_segmentations": data.get("spurious_segmentations", {}),
            "paths": paths,
            "images": data.get("images", {}),
        }
    raise TypeError(
        "example_grid expects a phantom folder, an IngestedSource or a mapping with "
        "'attributes', 'annotations', 'spurious_segmentations' and 'paths' or 'images'"
    )


def _pick(table: pd.DataFrame, annotations: Mapping[str, Any], n: int, seed: int) -> list[str]:
    """A varied sample: tube with and without PTX, PTX without tube, other findings."""
    rng = np.random.default_rng(seed)
    ids = [i for i in table["image_id"] if i in annotations]
    tube = dict(zip(table["image_id"], table["tube"]))
    groups: dict[str, list[str]] = {
        "ptx_tube": [],
        "ptx_only": [],
        "tube_only": [],
        "other": [],
        "normal": [],
    }
    for image_id in ids:
        ptx = "Pneumothorax" in annotations[image_id]
        has_tube = bool(tube.get(image_id, 0) == 1)
        other = any(t in annotations[image_id] for t in PHANTOM_TASKS if t != "Pneumothorax")
        key = (
            "ptx_tube"
            if ptx and has_tube
            else "ptx_only"
            if ptx
            else "tube_only"
            if has_tube
            else "other"
            if other
            else "normal"
        )
        groups[key].append(image_id)
    for members in groups.values():
        rng.shuffle(members)
    chosen: list[str] = []
    while len(chosen) < min(n, len(ids)):
        for members in groups.values():
            if members and len(chosen) < n:
                chosen.append(members.pop())
    return chosen


def example_grid(data: Any, n: int = 12, seed: int = 0, *, ncols: int = 4) -> Figure:
    """A grid of phantom images with pathology outlines, the chest-tube mask and labels.

    Args:
        data: The generator's output folder (path), an ``IngestedSource`` of it, or a
            mapping with ``attributes`` (table), ``annotations``, ``spurious_segmentations``
            and ``paths`` (image_id -> file) or ``images`` (image_id -> array).
        n: Number of examples.
        seed: Seed of the (stratified) sample of examples.
        ncols: Columns of the grid.

    Returns:
        The figure (the caller saves it).
    """
    parts = _normalise(data)
    table = parts["attributes"].set_index("image_id", drop=False)
    chosen = _pick(parts["attributes"], parts["annotations"], n, seed)
    nrows = max(1, int(np.ceil(len(chosen) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 3.45 * nrows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image_id in zip(axes.flat, chosen):
        image = parts.get("images", {}).get(image_id)
        if image is None:
            image = read_image(parts["paths"][image_id])
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="lanczos")
        tube_rle = parts["spurious_segmentations"].get(image_id, {}).get("Chest Tube")
        if tube_rle is not None:
            mask = decode_rle(tube_rle)
            if mask.any():
                overlay = np.zeros((*mask.shape, 4))
                overlay[mask > 0] = (*TUBE_COLOUR, 0.45)
                ax.imshow(overlay, interpolation="nearest")
        entry = parts["annotations"][image_id]
        for task in PHANTOM_TASKS:
            for outline in entry.get(task, []):
                ax.add_patch(
                    PolygonPatch(
                        np.asarray(outline),
                        closed=True,
                        fill=False,
                        edgecolor=TASK_COLOURS[task],
                        linewidth=1.3,
                    )
                )
        row = table.loc[image_id]
        findings = ", ".join(_SHORT[t] for t in PHANTOM_TASKS if t in entry) or "no finding"
        tube = "tube" if row.get("tube", 0) == 1 else "no tube"
        age = row.get("age_years")
        age_text = f"{int(age)} y" if age is not None and pd.notna(age) else "age ?"
        ax.set_title(
            f"{findings} | {tube}\n{row.get('split', '?')} | site {row.get('site', '?')} | "
            f"{row.get('sex', '?')} {age_text}",
            fontsize=8.5,
        )
    handles = [Line2D([], [], color=c, lw=2, label=t) for t, c in TASK_COLOURS.items()]
    handles.append(Line2D([], [], color=TUBE_COLOUR, lw=6, alpha=0.6, label="Chest Tube mask"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8.5, frameon=False)
    fig.suptitle("Phantom chest radiographs: pathology outlines and chest-tube masks", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return fig
