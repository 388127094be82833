"""The image cache against inputs that used to pass silently: a source rewritten during the
build, renders and masks of another size, lesions below a cache pixel, polygons outside
the image, and a cache folder that is a symbolic link."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_spurious.datasets.image_cache import ImageCacheDataset
from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.sources import cache as cache_mod
from cxr_spurious.sources.cache import (
    boxes_from_polygons,
    build_cache,
    load_cache,
    make_cache_spec,
    remove_stale_builds,
)


def _image(path: Path, hw: tuple[int, int], value: int = 0) -> str:
    Image.fromarray(np.full(hw, value, np.uint8)).save(path)
    return str(path)


def _manifest(path: str, hw: tuple[int, int], task: str = "t", label: float = 0.0):
    return pd.DataFrame(
        {"image_id": ["a"], "path": [path], "height": [hw[0]], "width": [hw[1]], task: [label]}
    )


def test_a_source_rewritten_during_the_build_is_rebuilt_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _image(tmp_path / "a.png", (32, 32), 10)
    manifest = _manifest(path, (32, 32))
    read = cache_mod.read_image

    def read_then_rewritten(p: str) -> np.ndarray:
        pixels = read(p)
        Image.fromarray(np.full((32, 32), 200, np.uint8)).save(p)  # a writer, meanwhile
        os.utime(p, ns=(1, 1))  # a stamp surely not the one read
        return pixels

    dataset = ImageCacheDataset(str(tmp_path / "cache"), progress=False)
    monkeypatch.setattr(cache_mod, "read_image", read_then_rewritten)
    dataset.save(make_cache_spec(manifest, ["t"], 16))
    monkeypatch.setattr(cache_mod, "read_image", read)
    assert dataset.load().images[0, 0, 0] == 10  # what was read
    dataset.save(make_cache_spec(manifest, ["t"], 16))  # the record has the stamp before
    assert dataset.load().images[0, 0, 0] == 200


def test_a_render_of_another_size_than_its_original_is_refused(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", (40, 20))
    render = _image(tmp_path / "a_no_tube.png", (20, 40))  # transposed
    spec = make_cache_spec(_manifest(path, (40, 20)), ["t"], 16, renders={"no_tube": {"a": render}})
    with pytest.raises(DataFormatError, match=r"a_no_tube\.png.*no_tube/a.*render is 40x20.*20x40"):
        build_cache(spec, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kind", ["spurious", "instance"])
def test_spurious_and_instance_masks_of_another_size_are_refused(tmp_path: Path, kind: str) -> None:
    path = _image(tmp_path / "a.png", (40, 20))
    wrong = np.zeros((20, 40), np.uint8)
    wrong[:, :8] = 1
    full = np.zeros((40, 20), np.uint8)
    full[:8] = 1
    extra = (
        {"spurious_segmentations": {"a": {"chest_tube": encode_rle(wrong)}},
         "objects": ["chest_tube"]}
        if kind == "spurious"
        else {"segmentations": {"a": {"t": encode_rle(full)}},
              "instance_segmentations": {"a": {"t": [encode_rle(wrong)]}}}
    )  # fmt: skip
    spec = make_cache_spec(_manifest(path, (40, 20), label=1.0), ["t"], 16, **extra)
    source = f"{kind}_segmentations"
    with pytest.raises(DataFormatError, match=rf"{source}.*mask size \[20, 40\].*\[40, 20\]"):
        build_cache(spec, tmp_path / "cache", progress=False)


def test_a_lesion_below_half_a_cache_pixel_keeps_a_pixel(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", (1024, 1024))
    lesion = np.zeros((1024, 1024), np.uint8)
    lesion[500:506, 500:506] = 1  # 6 x 6 px: 0.3 % of a 96-px cache pixel
    spec = make_cache_spec(
        _manifest(path, (1024, 1024), "Lung Lesion", 1.0),
        ["Lung Lesion"],
        96,
        segmentations={"a": {"Lung Lesion": encode_rle(lesion)}},
    )
    build_cache(spec, tmp_path / "cache", progress=False)
    cache = load_cache(tmp_path / "cache")
    assert bool(cache.has_mask[0, 0])  # a known location: so it must not be empty
    (y, x), = np.argwhere(cache.masks[0, 0])  # fmt: skip
    assert (y, x) == (47, 47)  # 500..505 / (1024 / 96) = 46.9..47.4: the cell holding it
    assert cache.boxes[0, 0].sum() >= 1


def test_a_polygon_outside_the_image_draws_no_box() -> None:
    left = [[-30.0, 10.0], [-5.0, 10.0], [-5.0, 30.0], [-30.0, 30.0]]
    above = [[10.0, -40.0], [30.0, -40.0], [30.0, -2.0]]
    assert boxes_from_polygons([left, above], 64, 64).sum() == 0
    inside = [[10.0, 10.0], [19.0, 10.0], [19.0, 19.0]]
    box = boxes_from_polygons([left, inside], 64, 64)
    assert box.sum() == 100 and box[10:20, 10:20].all()
    edge = [[-5.0, -5.0], [3.0, 2.0]]  # partly outside: clipped to the image
    assert boxes_from_polygons([edge], 64, 64).sum() == 4 * 3


def test_a_linked_cache_folder_is_cleaned_and_checked_beside_its_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, project = tmp_path / "disk2" / "cache", tmp_path / "project"
    target.mkdir(parents=True)
    project.mkdir()
    (project / "cache").symlink_to(target)
    stale = tmp_path / "disk2" / ".cache.tmp.dead"
    stale.mkdir()
    owner = {"pid": 2**22 + 7, "start": None, "host": os.uname().nodename, "created": 0}
    (stale / ".owner.json").write_text(json.dumps(owner))
    assert remove_stale_builds(project / "cache") == [stale] and not stale.exists()
    probed: list[str] = []
    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: (probed.append(str(p)), usage(p))[1])
    path = _image(tmp_path / "a.png", (16, 16))
    build_cache(
        make_cache_spec(_manifest(path, (16, 16)), ["t"], 8), project / "cache", progress=False
    )
    assert probed and all(Path(p).resolve() == (tmp_path / "disk2").resolve() for p in probed)
    assert (project / "cache").is_symlink() and load_cache(project / "cache").images.shape[0] == 1
