"""Tensor storages of plain pickles (CheXlocalize's heatmaps) are read without torch.load.

``io.safe_pickle`` builds the one storage of a legacy ``torch.save`` payload itself; the
result must be what ``torch.load`` makes of the same bytes, for every storage type, and a
payload outside that plain case must still go through ``torch.load``.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
from pathlib import Path

import pytest
import torch
from tests.io.legacy_payloads import StoragePayload, legacy_storage_payload

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io import chexlocalize, safe_pickle
from cxr_spurious.io.chexlocalize import load_heatmap_pickle, read_heatmap_pickle
from cxr_spurious.io.safe_pickle import load_torch_pickle

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def _values(dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    if dtype == torch.bool:
        return torch.rand(3, 5, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(3, 5, generator=gen) * 100).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, (3, 5), generator=gen).to(dtype)


def _payload(count: int, numel: int, **kwargs) -> bytes:
    return legacy_storage_payload(numel, bytes(4 * max(numel, count)), count=count, **kwargs)


@pytest.fixture
def torch_loads(monkeypatch) -> list[tuple]:
    """The calls that reach ``torch.load`` (which still runs)."""
    calls: list[tuple] = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_storage_equals_torch_load_for_every_dtype(
    tmp_path: Path, dtype: torch.dtype, torch_loads: list[tuple]
) -> None:
    base = _values(dtype)
    view = base[1:, ::2]  # offset and strides into the storage
    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    path.write_bytes(pickle.dumps({"t": view, "whole": base}, protocol=4))
    got = load_torch_pickle(path)
    assert torch_loads == []  # built by safe_pickle, not torch.load
    for key, want in (("t", view), ("whole", base)):
        assert got[key].dtype == want.dtype
        assert got[key].shape == want.shape
        assert got[key].stride() == want.stride()
        assert torch.equal(got[key], want)
    # the built storage is writable and owned: changing it changes nothing in the file
    got["whole"].view(-1)[0] = got["whole"].view(-1)[1]
    assert torch.equal(load_torch_pickle(path)["whole"], base)


def test_element_count_that_disagrees_with_the_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    path.write_bytes(pickle.dumps({"s": StoragePayload(_payload(3, 4))}, protocol=3))
    with pytest.raises(
        DataFormatError,
        match=r"Edema_map\.pkl \(tensor storage\): tensor storage holds 3 elements "
        r"where its record says 4",
    ):
        load_torch_pickle(path)


# an untyped storage record named as ``torch.UntypedStorage`` (how pickle spells the class,
# ``torch.storage.UntypedStorage``, is refused before): torch.load refuses it, having no dtype
_UNTYPED = _payload(4, 4, kind=torch.UntypedStorage).replace(
    b"ctorch.storage\nUntypedStorage\n", b"ctorch\nUntypedStorage\n"
)


@pytest.mark.parametrize(
    "payload",
    [_payload(4, 4, magic=12345), _payload(4, 4, keys=("0", "1")), _UNTYPED],
    ids=["foreign magic number", "two storage keys", "untyped storage"],
)
def test_payload_outside_the_plain_case_goes_to_torch_load(
    tmp_path: Path, payload: bytes, torch_loads: list[tuple]
) -> None:
    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    path.write_bytes(pickle.dumps({"s": StoragePayload(payload)}, protocol=3))
    with pytest.raises(DataFormatError):  # torch rejects each of them
        load_torch_pickle(path)
    assert len(torch_loads) == 1


def _heatmap(tmp_path: Path) -> Path:
    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    info = {
        "map": torch.rand(1, 1, 32, 32),
        "prob": 0.7,
        "task": "Edema",
        "gt": 1,
        "cxr_img": torch.rand(3, 200, 200),  # a payload seeked over, never read
        "cxr_dims": (300, 250),
    }
    path.write_bytes(pickle.dumps(info))
    return path


def test_heatmap_reads_ask_the_os_for_no_readahead(tmp_path: Path, monkeypatch) -> None:
    """The file is opened with ``POSIX_FADV_RANDOM`` before its first read, and the opcode
    scan's mapping with ``MADV_RANDOM``, so that the payloads seeked over are not read from
    disk by the kernel's readahead."""
    if not hasattr(os, "posix_fadvise") or not hasattr(mmap, "MADV_RANDOM"):
        pytest.fail("this test needs posix_fadvise and madvise (Linux)")
    path = _heatmap(tmp_path)
    events: list[str] = []
    real_advise, real_open, real_mmap = os.posix_fadvise, Path.open, mmap.mmap

    def advise(fd, offset, length, advice):
        events.append("fadvise-random" if advice == os.POSIX_FADV_RANDOM else f"fadvise-{advice}")
        return real_advise(fd, offset, length, advice)

    class Tracked(io.BufferedReader):
        def read(self, *args):
            events.append("read")
            return super().read(*args)

    def tracked_open(self, mode="r", *args, **kwargs):
        fh = real_open(self, mode, *args, **kwargs)
        if mode == "rb" and self == path:
            return Tracked(fh.detach())
        return fh

    class Mapped(real_mmap):
        def madvise(self, advice, *rest):
            events.append("madvise-random" if advice == mmap.MADV_RANDOM else "madvise")
            return super().madvise(advice, *rest)

    real_scan = safe_pickle._scan_buffer

    def scan(data, pos, ctx):
        events.append("scan-mapped" if isinstance(data, real_mmap) else "scan")
        return real_scan(data, pos, ctx)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    monkeypatch.setattr(Path, "open", tracked_open)
    monkeypatch.setattr(safe_pickle.mmap, "mmap", Mapped)
    monkeypatch.setattr(safe_pickle, "_scan_buffer", scan)
    rec = read_heatmap_pickle(path)
    assert rec.map.shape == (32, 32)
    assert events[0] == "fadvise-random"
    assert events.index("madvise-random") < events.index("scan-mapped")
    assert chexlocalize.SKIP_PAYLOAD_BYTES <= 3 * 200 * 200 * 4


def test_heatmap_map_equals_plain_pickle_load(tmp_path: Path) -> None:
    path = _heatmap(tmp_path)
    with path.open("rb") as fh:
        want = pickle.load(fh)
    got = load_heatmap_pickle(path)
    assert torch.equal(got["map"], want["map"])
    assert got["map"].dtype == torch.float32


def test_key_list_naming_a_missing_record_is_reported_as_bad_data(tmp_path: Path) -> None:
    """torch.load asserts on it; the reader reports it as the file's problem instead."""
    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    path.write_bytes(
        pickle.dumps({"s": StoragePayload(_payload(4, 4, keys=("0", "1")))}, protocol=3)
    )
    with pytest.raises(
        DataFormatError,
        match=r"Edema_map\.pkl \(tensor storage\): not a readable legacy torch\.save payload: "
        r"storage key '1' not found",
    ):
        load_torch_pickle(path)
