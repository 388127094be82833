"""Restricted unpickling: audit fixes (bounded reprs, total allocation, broadcast views, codecs)."""

from __future__ import annotations

import pickle
import struct
import time
from pathlib import Path

import pytest
import torch
from tests.io.pickle_files import write_pickle as _write

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.chexlocalize import load_heatmap_pickle
from cxr_spurious.io.safe_pickle import load_pickle, load_torch_pickle


def _shared_tuples(depth: int) -> bytes:
    """A tuple DAG: level i is (level i-1, level i-1) through the memo; repr is 2**depth."""
    ops = bytearray(b"\x80\x02K\x00\x85q\x00")
    for i in range(1, depth + 1):
        ops += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    return bytes(ops)


def test_error_message_of_a_shared_structure_is_short_and_fast(tmp_path: Path) -> None:
    # depth 21: the full repr is ~2**21 * 5 chars (10 MB, about a second); bounded: instant
    path = _write(tmp_path, _shared_tuples(21) + b"Q.", "labels.pkl")
    start = time.perf_counter()
    with pytest.raises(DataFormatError, match="external object") as info:
        load_pickle(path)
    assert time.perf_counter() - start < 0.3
    assert len(str(info.value)) < 300


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_malformed_tensor_record_message_is_short(tmp_path: Path) -> None:
    # _rebuild_tensor_v2(storage, offset=<shared DAG>, size, stride): malformed offset
    ops = bytearray(_shared_tuples(21))
    ops += b"\x30"  # POP the DAG (it stays in memo 21)
    ops += b"ctorch._utils\n_rebuild_tensor_v2\n(ctorch\nFloatStorage\nK\x02\x85R"
    ops += b"h\x15K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR."
    path = _write(tmp_path, bytes(ops))
    start = time.perf_counter()
    with pytest.raises(DataFormatError, match="malformed") as info:
        load_torch_pickle(path)
    assert time.perf_counter() - start < 0.3
    assert len(str(info.value)) < 400


def test_one_payload_listed_many_times_is_refused(tmp_path: Path) -> None:
    # list(B) of one memoised 20 KB bytes value, 200 times: 32 MB of pointers from 20 KB
    size, times = 20_000, 200
    ops = bytearray(b"\x80\x03cbuiltins\nlist\nq\x00")
    ops += b"B" + struct.pack("<I", size) + b"A" * size + b"\x85q\x01\x30"
    ops += b"(" + b"h\x00h\x01R" * times + b"l."
    path = _write(tmp_path, bytes(ops), "labels.pkl")
    with pytest.raises(DataFormatError, match=r"labels\.pkl.*in all, more than the limit"):
        load_pickle(path)


def test_bytes_of_n_repeated_is_refused(tmp_path: Path) -> None:
    size = 4000
    ops = bytearray(b"\x80\x02c__builtin__\nbytes\nq\x00J" + size.to_bytes(4, "little"))
    ops += b"\x85q\x01("
    ops += b"h\x00h\x01R" * ((size - len(ops) - 2) // 5) + b"l."
    ops += b"\x00" * (size - len(ops))
    path = _write(tmp_path, bytes(ops), "labels.pkl")
    with pytest.raises(DataFormatError, match="in all, more than the limit"):
        load_pickle(path)


def test_numpy_arrays_sharing_one_payload_are_refused(tmp_path: Path) -> None:
    size, times = 20_000, 200  # 4 MB of copies from a 20 KB file
    o = bytearray(b"\x80\x03cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01")
    o += b"K\x00\x85q\x02C\x01bq\x03h\x01h\x02h\x03\x87q\x04\x30"
    o += b"cnumpy\ndtype\nq\x05X\x02\x00\x00\x00u1K\x00K\x01\x87R"
    o += b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbq\x06\x30"
    o += b"B" + struct.pack("<I", size) + b"\x07" * size + b"q\x07\x30"
    o += b"(K\x01J" + struct.pack("<i", size) + b"\x85h\x06\x89h\x07tq\x08\x30"
    o += b"(" + b"h\x00h\x04Rh\x08b" * times + b"l."
    path = _write(tmp_path, bytes(o), "arrays.pkl")
    with pytest.raises(DataFormatError, match=r"arrays\.pkl.*in all, more than the limit"):
        load_pickle(path, allow_numpy=True)


@pytest.mark.parametrize("protocol", [2, 3])
def test_chexlocalize_layout_still_loads(tmp_path: Path, protocol: int) -> None:
    # the real layout: a 1.2 MB cxr_img tensor, a small map, prob, gt, cxr_dims
    payload = {
        "map": torch.rand(1, 1, 10, 10),
        "prob": 0.5,
        "gt": 1.0,
        "cxr_img": torch.rand(3, 320, 320),
        "cxr_dims": (2828, 2320),
    }
    path = _write(tmp_path, pickle.dumps(payload, protocol=protocol))
    loaded = load_torch_pickle(path)
    assert torch.equal(loaded["cxr_img"], payload["cxr_img"])
    assert torch.equal(loaded["map"], payload["map"])
    assert torch.equal(load_heatmap_pickle(path)["map"], payload["map"])


@pytest.mark.parametrize("loader", [load_torch_pickle, load_heatmap_pickle])
def test_broadcast_view_of_a_tiny_storage_is_refused(tmp_path: Path, loader) -> None:
    # 1 float stored, 100k x 100k elements claimed (stride 0): a 1e10-element tensor
    path = _write(tmp_path, pickle.dumps({"map": torch.zeros(1).expand(100_000, 100_000)}, 2))
    assert path.stat().st_size < 1000
    with pytest.raises(DataFormatError, match="more than the 1 of its storage"):
        loader(path)


def test_views_within_their_storage_still_load(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    views = {"t": base.t(), "slice": base[:, ::2], "row": base[1], "empty": base[:0]}
    loaded = load_torch_pickle(_write(tmp_path, pickle.dumps(views, protocol=2)))
    for key, value in views.items():
        assert torch.equal(loaded[key], value)


def test_unknown_codec_is_a_data_format_error(tmp_path: Path) -> None:
    path = _write(tmp_path, b"\x80\x03cbuiltins\nstr\nC\x02abX\x03\x00\x00\x00hex\x86R.", "l.pkl")
    with pytest.raises(
        DataFormatError, match=r"l\.pkl: builtins\.str\(\) with encoding 'hex' is not allowed"
    ):
        load_pickle(path)


def test_a_broadcast_tensor_in_a_torch_zip_file_is_refused(tmp_path: Path) -> None:
    # torch.save keeps a stride-0 view: its 4-byte storage would stand for a huge map
    path = tmp_path / "broadcast.pt"
    torch.save({"map": torch.zeros(1).expand(3000, 3000)}, path)
    with pytest.raises(DataFormatError, match="more than the 1 of its storage"):
        load_torch_pickle(path)
    torch.save({"map": torch.zeros(3, 4).t()}, path)  # an ordinary view still loads
    assert load_torch_pickle(path)["map"].shape == (4, 3)


def test_cxr_dims_of_a_shared_structure_is_reported_short() -> None:
    from cxr_spurious.io.chexlocalize import _cxr_dims

    x: object = 1
    for _ in range(22):  # a full repr has 2**22 items (seconds and tens of MB)
        x = (x, x)
    with pytest.raises(DataFormatError, match="cxr_dims") as err:
        _cxr_dims((x, -1), "map.pkl")
    assert len(str(err.value)) < 300
