"""Heatmap pickles whose values are numpy arrays read exactly like the same values as tensors.

The map-only reader seeks over large payloads; a numpy map's bytes (protocols 3/4
``BINBYTES``, protocol 5 ``BYTEARRAY8``) must still be its real values, never a
zero-filled placeholder.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.chexlocalize import (
    load_heatmap_pickle,
    load_json,
    read_heatmap_folder,
    read_heatmap_pickle,
)
from cxr_spurious.io.safe_pickle import load_torch_pickle
from cxr_spurious.localization.evaluate import evaluate_heatmap_set

PROTOCOLS = (2, 3, 4, 5)


def _sample_maps(sample_dir: Path) -> list[Path]:
    paths = sorted((sample_dir / "gradcam_maps_val").glob("*_map.pkl"))
    assert len(paths) == 2
    return paths


def _numpy_variant(
    src: Path, dst: Path, protocol: int, *, squeeze: bool, with_img: bool = True
) -> None:
    """``src`` with every tensor replaced by its ``.numpy()`` (map optionally H x W)."""
    info = load_torch_pickle(src)
    out = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in info.items()}
    if squeeze:
        out["map"] = out["map"][0, 0]
    if with_img:  # a large numpy value that is not asked for (like CheXlocalize's cxr_img)
        out["cxr_img"] = np.arange(3 * 200 * 200, dtype=np.float32).reshape(3, 200, 200)
    with dst.open("wb") as fh:
        pickle.dump(out, fh, protocol=protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("squeeze", [False, True], ids=["1x1xHxW", "HxW"])
def test_numpy_map_equals_tensor_map(
    sample_dir: Path, tmp_path: Path, protocol: int, squeeze: bool
) -> None:
    for src in _sample_maps(sample_dir):
        dst = tmp_path / src.name
        _numpy_variant(src, dst, protocol, squeeze=squeeze)
        want, got = read_heatmap_pickle(src), read_heatmap_pickle(dst)
        assert got.map.dtype == want.map.dtype == np.float32
        np.testing.assert_array_equal(got.map, want.map)
        assert float(np.abs(got.map).max()) > 0  # not the zero-filled placeholder
        assert (got.cxr_id, got.task, got.width, got.height, got.prob, got.gt) == (
            want.cxr_id,
            want.task,
            want.width,
            want.height,
            want.prob,
            want.gt,
        )
        header = read_heatmap_pickle(dst, with_map=False)  # index: shape without the bytes
        assert header.map.shape == want.map.shape and header.prob == want.prob
        lazy = load_heatmap_pickle(dst)
        np.testing.assert_array_equal(np.asarray(lazy["map"]).reshape(want.map.shape), want.map)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_numpy_values_load_like_load_torch_pickle(tmp_path: Path, protocol: int) -> None:
    """Every numpy value (not only ``map``) is real, large or small, C or Fortran order."""
    rng = np.random.default_rng(0)
    values = {
        "map": rng.random((1, 1, 160, 160), dtype=np.float32),  # 100 kB: above the skip size
        "prob": np.float32(0.25),
        "gt": np.int64(1),
        "fortran": np.asfortranarray(rng.random((300, 70))),  # 168 kB, float64, F order
        "big_endian": np.arange(20000, dtype=">i4"),
        "task": "Edema",
        "cxr_dims": (9, 11),
    }
    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    path.write_bytes(pickle.dumps(values, protocol=protocol))
    full = load_torch_pickle(path)
    lazy = load_heatmap_pickle(path, keys=tuple(values))
    for loaded in (full, lazy):
        for key, value in values.items():
            np.testing.assert_array_equal(loaded[key], value)
            if isinstance(value, np.ndarray | np.generic):
                assert loaded[key].dtype == value.dtype, key


def test_numpy_folder_evaluates_like_tensor_folder(sample_dir: Path, tmp_path: Path) -> None:
    gt = load_json(sample_dir / "gt_segmentations_val.json")
    tensors, arrays = tmp_path / "tensors", tmp_path / "arrays"
    tensors.mkdir()
    arrays.mkdir()
    for i, src in enumerate(_sample_maps(sample_dir)):
        shutil.copy(src, tensors / src.name)
        _numpy_variant(src, arrays / src.name, (2, 5)[i], squeeze=bool(i % 2))
    want, want_seg = evaluate_heatmap_set(
        read_heatmap_folder(tensors, workers=1), gt, progress=False, workers=1
    )
    got, got_seg = evaluate_heatmap_set(
        read_heatmap_folder(arrays, workers=1), gt, progress=False, workers=1
    )
    pd.testing.assert_frame_equal(got, want)
    assert got_seg == want_seg
    evaluated = want.dropna(subset=["prob"])  # rows with a map (the others are missing maps)
    assert (
        len(evaluated) == 2
        and (evaluated["pred_area"] > 0).all()
        and evaluated["argmax_row"].notna().all()
    )


def test_skipped_payload_never_reaches_a_value_as_zeros(tmp_path: Path) -> None:
    """A large plain ``bytes`` value (not a storage) read through the skipping reader is real."""
    raw = bytes(range(256)) * 512  # 128 kB
    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    path.write_bytes(
        pickle.dumps(
            {"map": np.ones((2, 2), np.float32), "raw": raw, "prob": 0.5, "cxr_dims": (2, 2)},
            protocol=4,
        )
    )
    assert load_heatmap_pickle(path)["raw"] == raw


def test_numpy_object_map_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    path.write_bytes(
        pickle.dumps(
            {"map": np.array([[1.0, "x"]], dtype=object), "prob": 0.5, "cxr_dims": (2, 1)},
            protocol=4,
        )
    )
    with pytest.raises(
        DataFormatError, match=r"p1_study1_view1_frontal_Edema_map\.pkl.*not supported"
    ):
        read_heatmap_pickle(path)
