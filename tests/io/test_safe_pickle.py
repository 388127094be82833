"""Restricted unpickling: real heatmap pickles load, code-executing pickles do not."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.safe_pickle import load_pickle, load_torch_pickle


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_plain_pickle_loads(tmp_path: Path) -> None:
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps({"a": True, "b": [1, 2.5, "x"]}, protocol=4))
    assert load_pickle(path) == {"a": True, "b": [1, 2.5, "x"]}


def test_code_executing_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"map": _Evil()}))
    with pytest.raises(
        DataFormatError,
        match=r"evil\.pkl.*refusing to unpickle global 'posix.system'|evil\.pkl.*refusing",
    ):
        load_pickle(path)
    with pytest.raises(DataFormatError, match="refusing"):
        load_torch_pickle(path)


def test_not_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(b"hello world")
    with pytest.raises(DataFormatError, match="x.pkl"):
        load_pickle(path)


def test_tensor_dict_round_trip_like_chexlocalize(tmp_path: Path) -> None:
    path = tmp_path / "m.pkl"
    data = {
        "map": torch.rand(1, 1, 4, 5),
        "prob": 0.3,
        "task": "Edema",
        "gt": 1,
        "cxr_dims": (50, 40),
    }
    with path.open("wb") as fh:
        pickle.dump(data, fh, protocol=3)
    loaded = load_torch_pickle(path)
    torch.testing.assert_close(loaded["map"], data["map"])
    assert loaded["cxr_dims"] == (50, 40) and loaded["task"] == "Edema"


def test_torch_save_file_loads_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"map": torch.ones(2, 2)}, path)
    assert load_torch_pickle(path)["map"].sum().item() == 4


def test_real_chexlocalize_heatmap(chexlocalize_sample: Path) -> None:
    path = (
        chexlocalize_sample
        / "gradcam_maps_val"
        / "patient64541_study1_view1_frontal_Cardiomegaly_map.pkl"
    )
    d = load_torch_pickle(path)
    assert set(d) == {"map", "prob", "task", "gt", "cxr_dims"}  # the repo copy drops ``cxr_img``
    assert tuple(d["map"].shape) == (1, 1, 320, 320)
    assert d["cxr_dims"] == (2828, 2320) and d["task"] == "Cardiomegaly" and d["gt"] == 1
