"""``CheXlocalizeJSONDataset`` reads a file on any fsspec filesystem with the codec's parser."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest
from kedro.io import DatasetError

from cxr_spurious.datasets.chexlocalize import CheXlocalizeJSONDataset

CXR = "patient1_study1_view1_frontal"
SEGMENTATIONS = {CXR: {"Edema": {"size": [2, 2], "counts": "04"}}}


def _memory_file(text: str) -> str:
    """Write ``text`` to a fresh file on fsspec's in-memory filesystem; its ``memory://`` URL."""
    path = f"/chexlocalize-{uuid.uuid4().hex}/gt_segmentations.json"
    with fsspec.filesystem("memory").open(path, "w") as fh:
        fh.write(text)
    return f"memory://{path}"


def test_a_remote_file_loads_like_a_local_one(tmp_path: Path) -> None:
    local = tmp_path / "gt_segmentations.json"
    local.write_text(json.dumps(SEGMENTATIONS))
    remote = _memory_file(json.dumps(SEGMENTATIONS))
    loaded = CheXlocalizeJSONDataset(remote, kind="segmentations").load()
    assert (
        loaded == CheXlocalizeJSONDataset(str(local), kind="segmentations").load() == SEGMENTATIONS
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": \n oops}', r"gt_segmentations\.json \(line 2\): invalid JSON"),
        ("[1, 2]", r"gt_segmentations\.json: expected a JSON object keyed by cxr id, got list"),
    ],
)
@pytest.mark.parametrize("kind", [None, "segmentations"])
def test_a_remote_file_that_is_not_a_json_object_is_named(
    text: str, expected: str, kind: str | None
) -> None:
    with pytest.raises(DatasetError, match=expected):
        CheXlocalizeJSONDataset(_memory_file(text), kind=kind).load()


def test_a_remote_segmentation_file_has_its_rles_checked() -> None:
    bad = {CXR: {"Edema": {"size": [2, 2], "counts": "%%%"}}}
    with pytest.raises(DatasetError, match=rf"gt_segmentations\.json \({CXR}/Edema\)"):
        CheXlocalizeJSONDataset(_memory_file(json.dumps(bad)), kind="segmentations").load()
