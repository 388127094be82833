"""The phantom source: a folder written by ``cxr_spurious.phantom.generate_phantom``.

The generator writes the CheXpert / CheXlocalize on-disk formats (plus ``attributes.csv``,
``spurious_segmentations.json``, the simulated human benchmark and counterfactual renders),
so reading it is the CheXlocalize reader with the phantom's task list. The artefact renders
of a sweep phantom (``counterfactuals/with_<kind>/``) also carry ``masks.json``: each
image's exact artefact mask, read here into ``IngestedSource.render_masks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.chexlocalize import check_segmentations, load_json
from cxr_spurious.sources.adapters.base import RENDER_MASKS_FILE, IngestedSource
from cxr_spurious.sources.adapters.chexlocalize import read_chexlocalize
from cxr_spurious.tasks import PHANTOM_TASKS


def read_phantom(root: Path, params: Mapping[str, Any]) -> IngestedSource:
    """Read a generated phantom folder.

    Args:
        root: The generator's output folder.
        params: The ``ingestion`` parameters; ``tasks`` defaults to all phantom pathologies.

    Returns:
        The manifest and ground truth, ``source = "phantom"``.

    Raises:
        DataFormatError: a render's ``masks.json`` lacks an image of the render, or holds a
            mask of the wrong size (naming the file and the image).
    """
    merged = {**params, "source": "phantom", "tasks": params.get("tasks") or list(PHANTOM_TASKS)}
    source = read_chexlocalize(Path(root), merged)
    sizes = dict(
        zip(source.manifest["image_id"], zip(source.manifest["height"], source.manifest["width"]))
    )
    source.render_masks = read_render_masks(Path(root), source.renders, sizes)
    return source


def read_render_masks(
    root: Path, renders: Mapping[str, Mapping[str, str]], sizes: Mapping[str, tuple[int, int]]
) -> dict[str, dict[str, Any]]:
    """``{render: {image_id: rle}}`` from ``counterfactuals/<render>/masks.json``.

    Renders without the file (``no_tube``, ``no_lesion``) have no masks. A file must hold a
    mask of each image of its render, at the image's size.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, images in sorted(renders.items()):
        path = root / "counterfactuals" / name / RENDER_MASKS_FILE
        if not path.is_file():
            continue
        masks = load_json(path)
        missing = sorted(set(images) - set(masks))
        if missing:
            raise DataFormatError(
                path, f"no mask for {len(missing)} image(s) of render '{name}', e.g. {missing[:3]}"
            )
        kept = {image_id: masks[image_id] for image_id in images}
        check_segmentations(
            {i: {name: rle} for i, rle in kept.items()}, path, sizes, frozenset({name})
        )
        out[name] = kept
    return out
