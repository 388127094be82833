"""CheXlocalize heatmap pickles: export layout, import, round trip, the real sample."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_spurious.errors import DataFormatError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.chexlocalize import (
    INDEX_BAR_MIN_FILES,
    PREFETCH_TAIL_BYTES,
    map_bytes,
    prefetch_heatmap,
    read_chexlocalize_folder,
    read_heatmap_folder,
    read_heatmap_pickle,
    write_chexlocalize_folder,
)
from cxr_spurious.io.safe_pickle import load_torch_pickle

# 2 of the real sample's 20 Grad-CAM pickles, kept in the repository (see its PROVENANCE.md).
SAMPLE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "chexlocalize_sample" / "gradcam_maps_val"
)
# Key order of the original CheXlocalize pickles (measured on the full sample; the copies in
# tests/fixtures were re-pickled without ``cxr_img`` to keep the repository small).
REAL_KEYS = ["map", "prob", "task", "gt", "cxr_img", "cxr_dims"]


def _set(n_images: int = 3, size: int = 16) -> tuple[HeatmapSet, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ids = [f"patient{i:05d}_study1_view1_frontal" for i in range(n_images)]
    tasks = ["Pneumothorax", "Airspace Opacity"]
    index = pd.DataFrame(
        {
            "image_id": np.repeat(ids, 2),
            "task": tasks * n_images,
            "prob": rng.random(2 * n_images),
            "gt": [1.0, 0.0, np.nan, 1.0, 0.0, 0.0][: 2 * n_images],
            "cxr_w": 2000,
            "cxr_h": 1500,
            "model": "erm",
            "method": "gradcam",
        }
    )
    maps = rng.random((2 * n_images, size, size)).astype(np.float16)
    images = {i: rng.integers(0, 256, (size, size), dtype=np.uint8) for i in ids}
    return HeatmapSet(index, maps), images


def _globals(raw: bytes) -> set[str]:
    out = io.StringIO()
    pickletools.dis(raw, out=out)
    return {
        line.split("GLOBAL", 1)[1].strip().strip("'")
        for line in out.getvalue().splitlines()
        if " GLOBAL " in line
    }


def test_export_layout(tmp_path):
    hset, images = _set()
    assert write_chexlocalize_folder(hset, images, tmp_path / "erm.gradcam", progress=False) == 6
    path = tmp_path / "erm.gradcam" / "patient00000_study1_view1_frontal_Airspace Opacity_map.pkl"
    raw = path.read_bytes()
    assert raw[:2] == b"\x80\x03"  # protocol 3
    payload = load_torch_pickle(path)
    assert set(payload) == {"map", "prob", "task", "gt", "cxr_img", "cxr_dims"}
    assert payload["map"].shape == (1, 1, 16, 16) and payload["map"].dtype == torch.float32
    assert (
        payload["cxr_img"].shape == (3, 16, 16)
        and 0 <= float(payload["cxr_img"].min()) <= float(payload["cxr_img"].max()) <= 1
    )
    torch.testing.assert_close(
        payload["cxr_img"][0],
        torch.from_numpy(images["patient00000_study1_view1_frontal"]).float() / 255,
    )
    assert (
        payload["task"] == "Airspace Opacity"
        and payload["gt"] == 0
        and isinstance(payload["gt"], int)
    )
    assert payload["cxr_dims"] == (2000, 1500) and isinstance(payload["prob"], float)


def test_round_trip(tmp_path):
    hset, images = _set()
    write_chexlocalize_folder(hset, images, tmp_path / "x", progress=False)
    back = read_chexlocalize_folder(tmp_path / "x", model="erm", method="gradcam")
    key = ["image_id", "task"]
    a = hset.index.assign(row=range(len(hset))).sort_values(key).reset_index(drop=True)
    b = back.index.assign(row=range(len(back))).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="row"), b.drop(columns="row"), check_dtype=False)
    np.testing.assert_array_equal(hset.maps[a["row"]].astype(np.float32), back.maps[b["row"]])


def test_task_names_with_spaces_round_trip(tmp_path):
    hset, images = _set(1)
    write_chexlocalize_folder(hset, images, tmp_path / "x", progress=False)
    assert set(read_chexlocalize_folder(tmp_path / "x").index["task"]) == {
        "Pneumothorax",
        "Airspace Opacity",
    }


def test_lazy_import_matches_materialised(tmp_path):
    hset, images = _set(2)
    write_chexlocalize_folder(hset, images, tmp_path / "x", progress=False)
    lazy = read_chexlocalize_folder(tmp_path / "x", materialise=False)
    full = read_chexlocalize_folder(tmp_path / "x")
    np.testing.assert_array_equal(np.asarray(lazy.maps[3]), full.maps[3])


def test_import_refuses_code_in_pickles(tmp_path):
    (tmp_path / "a_Edema_map.pkl").write_bytes(
        pickle.dumps({"map": print, "prob": 0.1, "task": "Edema"}, protocol=3)
    )
    with pytest.raises(DataFormatError, match="refusing to unpickle global 'builtins.print'"):
        read_chexlocalize_folder(tmp_path)


def test_import_empty_folder_names_it(tmp_path):
    with pytest.raises(DataFormatError, match=str(tmp_path)):
        read_chexlocalize_folder(tmp_path)


def test_real_sample_imports_and_our_export_uses_the_same_pickle_layout(tmp_path):
    real = read_chexlocalize_folder(SAMPLE)
    assert len(real) == 2 and real.maps.shape == (2, 320, 320)
    row = real.index.set_index(["image_id", "task"]).loc[
        ("patient64541_study1_view1_frontal", "Cardiomegaly")
    ]
    assert row["prob"] == pytest.approx(0.1537875697016716) and row["gt"] == 1
    assert (row["cxr_w"], row["cxr_h"]) == (2828, 2320)
    reference_path = SAMPLE / "patient64541_study1_view1_frontal_Cardiomegaly_map.pkl"
    reference = reference_path.read_bytes()
    hset, images = _set(1)
    write_chexlocalize_folder(hset, images, tmp_path / "ours", progress=False)
    ours = next((tmp_path / "ours").glob("*_map.pkl")).read_bytes()
    assert ours[:2] == reference[:2]
    assert _globals(ours) == _globals(reference)
    ref_payload, our_payload = (
        load_torch_pickle(reference_path),
        load_torch_pickle(next((tmp_path / "ours").glob("*_map.pkl"))),
    )
    assert list(our_payload) == REAL_KEYS
    assert list(ref_payload) == [k for k in REAL_KEYS if k != "cxr_img"]
    for key in ref_payload:
        assert type(our_payload[key]) is type(ref_payload[key]), key


def _folder_of(tmp_path: Path, n_files: int) -> Path:
    rng = np.random.default_rng(1)
    ids = [f"patient{i:05d}_study1_view1_frontal" for i in range(n_files // 2)]
    index = pd.DataFrame(
        {
            "image_id": np.repeat(ids, 2),
            "task": ["Pneumothorax", "Edema"] * len(ids),
            "prob": rng.random(n_files),
            "gt": 0.0,
            "cxr_w": 40,
            "cxr_h": 30,
            "model": "erm",
            "method": "gradcam",
        }
    )
    maps = rng.random((n_files, 6, 6)).astype(np.float32)
    images = {i: np.zeros((8, 8), np.uint8) for i in ids}
    folder = tmp_path / f"maps{n_files}"
    write_chexlocalize_folder(HeatmapSet(index, maps), images, folder, progress=False)
    return folder


def test_index_bar_only_for_folders_that_take_a_while(tmp_path, capsys):
    """An overlay's few sampled pickles are indexed without printing an empty bar."""
    for n_files, shown in ((8, False), (INDEX_BAR_MIN_FILES, True)):
        folder = _folder_of(tmp_path, n_files)
        capsys.readouterr()
        heatmaps = read_heatmap_folder(folder, workers=1, lazy=True)
        assert len(heatmaps.index) == n_files
        assert ("index heatmaps" in capsys.readouterr().err) is shown, n_files


def test_prefetch_covers_the_map_and_the_closing_opcodes(tmp_path, monkeypatch):
    """The two ranges a worker asks the OS for ahead of time hold every byte the map-only
    reader needs: the map at the start, and the opcodes after ``cxr_img`` at the end."""
    rng = np.random.default_rng(2)
    index = pd.DataFrame(
        {
            "image_id": ["patient00001_study1_view1_frontal"],
            "task": ["Edema"],
            "prob": [0.5],
            "gt": [1.0],
            "cxr_w": 2000,
            "cxr_h": 1500,
            "model": "erm",
            "method": "gradcam",
        }
    )
    maps = rng.random((1, 320, 320)).astype(np.float32)  # the real sample's sizes
    images = {"patient00001_study1_view1_frontal": np.zeros((320, 320), np.uint8)}
    write_chexlocalize_folder(HeatmapSet(index, maps), images, tmp_path, progress=False)
    path = next(tmp_path.glob("*_map.pkl"))
    raw = path.read_bytes()
    nbytes = map_bytes(maps.shape[1:])
    ops = list(pickletools.genops(raw))
    payloads = [(pos, len(arg)) for op, arg, pos in ops if op.name.startswith("BINBYTES")]
    assert len(payloads) == 2  # the map's storage, then cxr_img's
    (map_at, map_len), (img_at, img_len) = payloads
    assert map_at + map_len < nbytes  # the map and the opcodes around it: the head range
    tail_start = len(raw) - PREFETCH_TAIL_BYTES
    assert img_at + img_len > nbytes and img_at + img_len >= tail_start  # then the tail
    assert ops[-1][0].name == "STOP"

    calls = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, *args: calls.append(args))
    prefetch_heatmap(path, nbytes)
    assert calls == [
        (0, nbytes, os.POSIX_FADV_WILLNEED),
        (tail_start, PREFETCH_TAIL_BYTES, os.POSIX_FADV_WILLNEED),
    ]
    calls.clear()
    prefetch_heatmap(path, len(raw) + 1)  # the whole file in the head range: one call
    assert calls == [(0, len(raw) + 1, os.POSIX_FADV_WILLNEED)]


def _map_pickle(folder: Path, heatmap: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "patient64541_study1_view1_frontal_Edema_map.pkl"
    with path.open("wb") as fh:
        data = {"map": heatmap, "prob": 0.5, "task": "Edema", "gt": 1, "cxr_dims": (320, 320)}
        pickle.dump(data, fh, protocol=3)
    return path


def test_a_map_shape_beyond_the_mask_limit_is_refused_without_allocating(tmp_path):
    # an 865-byte pickle whose map claims 300000 x 300000 (a broadcast view of 1 value)
    path = _map_pickle(tmp_path / "maps", torch.zeros(1, 1, 1, 1).expand(1, 1, 300000, 300000))
    assert path.stat().st_size < 2000
    message = r"Edema_map\.pkl \(map\): 'map' \(h, w\) = \(300000, 300000\); expected each side"
    with pytest.raises(DataFormatError, match=message):
        read_heatmap_pickle(path, with_map=False)
    with pytest.raises(DataFormatError, match=message):
        read_heatmap_folder(tmp_path / "maps")  # the index pass reads with_map=False


def test_the_index_pass_map_is_a_zero_placeholder_of_the_map_shape(tmp_path):
    heatmap = torch.rand(1, 1, 7, 5)
    path = _map_pickle(tmp_path / "maps", heatmap)
    placeholder = read_heatmap_pickle(path, with_map=False).map
    assert placeholder.shape == (7, 5) and placeholder.dtype == np.float32
    assert placeholder.strides == (0, 0) and not placeholder.any()  # no memory per pixel
    np.testing.assert_array_equal(read_heatmap_pickle(path).map, heatmap.numpy()[0, 0])
