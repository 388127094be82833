"""Restricted unpickling: sizes a file chooses are bounded by its own size and ``max_bytes``."""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.io.legacy_payloads import StoragePayload, legacy_storage_payload
from tests.io.pickle_files import write_pickle as _write

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io import safe_pickle
from cxr_spurious.io.chexlocalize import load_heatmap_pickle
from cxr_spurious.io.safe_pickle import load_pickle, load_torch_pickle

BIG = 1 << 28  # 256 MiB: far more than any test file, small enough not to hurt if allocated


def _long1(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def test_bytes_of_n_is_capped_by_the_file_size(tmp_path: Path) -> None:
    path = _write(tmp_path, b"\x80\x03cbuiltins\nbytes\n" + _long1(BIG) + b"\x85R.", "labels.pkl")
    assert path.stat().st_size < 64
    with pytest.raises(
        DataFormatError,
        match=r"labels\.pkl: bytes\(268435456\) asks for 268,435,456 bytes, "
        r"more than the \d+ bytes",
    ):
        load_pickle(path)


def test_torch_storage_of_n_is_capped(tmp_path: Path) -> None:
    path = _write(tmp_path, b"\x80\x02ctorch\nFloatStorage\n" + _long1(BIG // 4) + b"\x85R.")
    for load in (load_torch_pickle, load_heatmap_pickle):
        with pytest.raises(
            DataFormatError,
            match=r"Edema_map\.pkl: torch\.FloatStorage\(67108864\) asks for 268,435,456 bytes",
        ):
            load(path)


class _TensorView:
    """Pickles as ``_rebuild_tensor_v2`` of a 4-element storage with a huge size (resizes it)."""

    def __init__(self, state: tuple | None = None) -> None:
        self.state = state

    def __reduce__(self):
        storage = torch.zeros(4).untyped_storage()
        typed = torch.storage.TypedStorage(
            wrap_storage=storage, dtype=torch.float32, _internal=True
        )
        args = (typed, 0, (BIG,) if self.state is None else (4,), (1,), False, OrderedDict())
        if self.state is None:
            return (torch._utils._rebuild_tensor_v2, args)
        return (torch._utils._rebuild_tensor_v2, args, self.state)


def test_tensor_larger_than_its_storage_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, pickle.dumps({"map": _TensorView()}, protocol=3))
    for load in (load_torch_pickle, load_heatmap_pickle):
        with pytest.raises(
            DataFormatError,
            match=r"Edema_map\.pkl: tensor of size \(268435456,\).* storage of 4 elements",
        ):
            load(path)


def test_tensor_state_cannot_be_set_by_the_pickle(tmp_path: Path) -> None:
    # BUILD on a tensor calls Tensor.__setstate__ -> set_(storage, 0, size, stride): a resize
    storage = torch.storage.TypedStorage(
        wrap_storage=torch.zeros(4).untyped_storage(), dtype=torch.float32, _internal=True
    )
    path = _write(
        tmp_path, pickle.dumps({"map": _TensorView((storage, 0, (BIG,), (1,)))}, protocol=3)
    )
    with pytest.raises(DataFormatError, match=r"Edema_map\.pkl.*sets the state"):
        load_torch_pickle(path)


def test_storage_cannot_claim_more_than_the_bytes_that_follow(tmp_path: Path) -> None:
    honest = _write(
        tmp_path,
        pickle.dumps(
            {"s": StoragePayload(legacy_storage_payload(4, np.arange(4, dtype="<f4").tobytes()))},
            protocol=3,
        ),
        "ok.pkl",
    )
    assert (
        bytes(load_torch_pickle(honest)["s"]._untyped_storage.tolist())
        == np.arange(4, dtype="<f4").tobytes()
    )
    path = _write(
        tmp_path,
        pickle.dumps(
            {"s": StoragePayload(legacy_storage_payload(BIG // 4, bytes(16)))}, protocol=3
        ),
    )
    for load in (load_torch_pickle, lambda p: load_heatmap_pickle(p, keys=("s",))):
        with pytest.raises(
            DataFormatError,
            match=r"Edema_map\.pkl \(tensor storage\): "
            r"tensor storage asks for 268,435,456 bytes, more than the 16 bytes",
        ):
            load(path)


def test_opcode_length_beyond_the_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, b"\x80\x04\x8e" + struct.pack("<Q", 1 << 33) + b"abc.", "x.pkl")
    for load in (load_pickle, load_torch_pickle):
        with pytest.raises(
            DataFormatError, match=r"x\.pkl: BINBYTES8 at offset 2 asks for 8,589,934,592 bytes"
        ):
            load(path)


def test_memo_index_far_beyond_the_opcodes_is_refused(tmp_path: Path) -> None:
    # LONG_BINPUT n makes the C unpickler allocate and zero a memo of 2n entries
    path = _write(tmp_path, b"\x80\x02]r" + struct.pack("<I", 1 << 24) + b".", "x.pkl")
    with pytest.raises(
        DataFormatError, match=r"x\.pkl: LONG_BINPUT at offset 3 uses memo index 16777216"
    ):
        load_pickle(path)


def test_max_bytes_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arr = np.arange(50_000, dtype=np.float32)  # 200 kB
    path = _write(tmp_path, pickle.dumps({"a": arr, "b": b"x" * 300_000}, protocol=4), "x.pkl")
    np.testing.assert_array_equal(load_pickle(path, allow_numpy=True)["a"], arr)
    with pytest.raises(
        DataFormatError, match=r"x\.pkl: .*more than the limit of 100,000 bytes \(max_bytes\)"
    ):
        load_pickle(path, allow_numpy=True, max_bytes=100_000)
    with pytest.raises(DataFormatError, match=r"limit of 100,000 bytes"):
        load_torch_pickle(path, max_bytes=100_000)
    monkeypatch.setattr(safe_pickle, "DEFAULT_MAX_BYTES", 250_000)  # the module-level default
    with pytest.raises(
        DataFormatError,
        match=r"BINBYTES at offset \d+ asks for 300,000 bytes, more than the limit of 250,000",
    ):
        load_pickle(path, allow_numpy=True)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_load_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    value = {
        "m": np.linspace(0, 1, 100_000, dtype=np.float32).reshape(1, 1, 250, 400),
        "s": np.float64(2.5),
        "b": b"\x00\xff" * 3,
    }
    path = _write(tmp_path, pickle.dumps(value, protocol=protocol), "x.pkl")
    loaded = load_pickle(path, allow_numpy=True)
    np.testing.assert_array_equal(loaded["m"], value["m"])
    assert loaded["m"].dtype == np.float32 and loaded["s"] == 2.5 and loaded["b"] == value["b"]
    assert loaded["m"].flags.writeable


def test_numpy_out_of_band_buffers_are_refused_clearly(tmp_path: Path) -> None:
    buffers: list = []
    path = _write(
        tmp_path, pickle.dumps(np.ones(10), protocol=5, buffer_callback=buffers.append), "x.pkl"
    )
    assert buffers  # really out-of-band
    with pytest.raises(
        DataFormatError, match=r"x\.pkl: .*out-of-band buffers.*re-pickle without buffer_callback"
    ):
        load_pickle(path, allow_numpy=True)


class _Ndarray:
    def __reduce__(self):
        return (np.ndarray, ((BIG,),))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (np.array([1, "x"], dtype=object), r"numpy dtype '\|O' is not supported"),
        (
            np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]),
            r"structured or sub-array numpy dtypes are not supported",
        ),
        (_Ndarray(), r"numpy\.ndarray\(\.\.\.\) directly"),
    ],
    ids=["object", "structured", "ndarray-call"],
)
def test_numpy_values_that_are_not_plain_arrays_are_refused(
    tmp_path: Path, value: object, problem: str
) -> None:
    path = _write(tmp_path, pickle.dumps({"a": value}, protocol=4), "x.pkl")
    with pytest.raises(DataFormatError, match=r"x\.pkl: .*" + problem):
        load_pickle(path, allow_numpy=True)


def test_numpy_array_with_too_few_bytes_is_refused(tmp_path: Path) -> None:
    data = pickle.dumps(np.arange(4, dtype="<f4"), protocol=3)
    payload = np.arange(4, dtype="<f4").tobytes()
    data = data.replace(
        b"C" + bytes([len(payload)]) + payload, b"C" + bytes([8]) + payload[:8]
    )  # SHORT_BINBYTES
    path = _write(tmp_path, data, "x.pkl")
    with pytest.raises(
        DataFormatError, match=r"x\.pkl: numpy array \(4,\) of <f4 needs 16 bytes of data, got 8"
    ):
        load_pickle(path, allow_numpy=True)


def test_plain_pickles_still_load(tmp_path: Path) -> None:
    value = {
        "a": [1, 2.5, "x", None, True],
        "b": (b"\x00" * 70_000, frozenset({1, 2})),
        "c": OrderedDict(x=1),
        "d": 3 + 4j,
    }
    for protocol in (0, 1, 2, 3, 4, 5):
        path = _write(tmp_path, pickle.dumps(value, protocol=protocol), f"x{protocol}.pkl")
        assert load_pickle(path) == value


def test_numpy1_names_and_protocol2_tensors_load(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = pickle.dumps({"a": arr}, protocol=2)  # text GLOBALs: rename to what numpy 1.x wrote
    assert b"numpy._core.multiarray\n_reconstruct" in data
    path = _write(
        tmp_path, data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"), "x.pkl"
    )
    np.testing.assert_array_equal(load_pickle(path, allow_numpy=True)["a"], arr)
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    path = _write(tmp_path, pickle.dumps({"map": tensor}, protocol=2), "t.pkl")
    assert torch.equal(load_torch_pickle(path)["map"], tensor)


def _redeflate(src: Path, dst: Path) -> Path:
    """``src`` (a ``torch.save`` zip) with every entry re-compressed (ZIP_DEFLATED)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), zipfile.ZIP_DEFLATED)
    return dst


def test_a_compressed_torch_zip_is_refused_before_loading(tmp_path: Path) -> None:
    saved = {"map": torch.zeros(1, 1, 1024, 1024), "prob": 0.5, "cxr_dims": (320, 320)}
    real = tmp_path / "real_Edema_map.pkl"
    torch.save(saved, real)
    with zipfile.ZipFile(real) as archive:  # torch.save stores its entries uncompressed
        assert {e.compress_type for e in archive.infolist()} == {zipfile.ZIP_STORED}
    for load in (load_torch_pickle, load_heatmap_pickle):  # a real torch.save still loads
        assert torch.equal(load(real, max_bytes=8 << 20)["map"], saved["map"])
    bomb = _redeflate(real, tmp_path / "bomb_Edema_map.pkl")
    assert bomb.stat().st_size * 100 < 4 * 1024 * 1024  # unpacks to > 100x its size
    for load in (load_torch_pickle, load_heatmap_pickle):
        with pytest.raises(
            DataFormatError,
            match=r"bomb_Edema_map\.pkl: zip entry '[^']+' is compressed \(\d+ bytes for "
            r"[\d,]+\); torch\.save stores entries uncompressed",
        ):
            load(bomb, max_bytes=8 << 20)


def test_a_stored_torch_zip_larger_than_max_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big_Edema_map.pkl"
    saved = {"map": torch.arange(1_000_000, dtype=torch.float32)}
    torch.save(saved, path)
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(e.file_size for e in archive.infolist())
    assert 4_000_000 < unpacked <= path.stat().st_size
    for load in (load_torch_pickle, load_heatmap_pickle):
        with pytest.raises(
            DataFormatError,
            match=rf"big_Edema_map\.pkl: unpacking the zip entries asks for {unpacked:,} bytes, "
            r"more than the limit of 1,000,000 bytes \(max_bytes\)",
        ):
            load(path, max_bytes=1_000_000)
        assert torch.equal(load(path)["map"], saved["map"])  # the default limit: 1 GiB


def test_model_artifacts_and_checkpoints_refuse_a_compressed_zip(tmp_path: Path) -> None:
    """A model file or checkpoint from elsewhere goes through the same zip check before
    ``torch.load`` (a re-deflated copy unpacks to far more than its size)."""
    from kedro.io import DatasetError

    from cxr_spurious.datasets.torch_model import TorchModelDataset
    from cxr_spurious.training.checkpoints import load_latest_checkpoint

    artifact = {"state_dict": {"w": torch.zeros(512, 512)}, "config": {"architecture": "x"}}
    real = tmp_path / "model.pt"
    torch.save(artifact, real)
    assert torch.equal(
        TorchModelDataset(filepath=str(real)).load()["state_dict"]["w"], artifact["state_dict"]["w"]
    )
    bomb = _redeflate(real, tmp_path / "bomb.pt")
    with pytest.raises(DatasetError, match=r"bomb\.pt: zip entry '[^']+' is compressed") as err:
        TorchModelDataset(filepath=str(bomb)).load()  # kedro wraps the dataset's error
    assert isinstance(err.value.__cause__, DataFormatError)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    _redeflate(real, folder / "epoch_001.pt")
    with pytest.raises(DataFormatError, match=r"epoch_001\.pt: zip entry '[^']+' is compressed"):
        load_latest_checkpoint(folder, {})


def test_bytes_of_text_allows_only_plain_encodings(tmp_path: Path) -> None:
    # bytes(str, "unicode_escape") makes up to 10 bytes a character: 32 copies of a 400 kB
    # string loaded 32 MB from a 400 kB file, 10x the 8x-file-size budget, uncharged
    class Escaped:
        def __reduce__(self):
            return (bytes, ("\U0001f600" * 1000, "unicode_escape"))

    path = _write(tmp_path, pickle.dumps([Escaped()], protocol=4), "escaped.pkl")
    with pytest.raises(
        DataFormatError, match=r"escaped\.pkl: builtins\.bytes\(\) with encoding 'unicode_escape'"
    ):
        load_pickle(path)

    class Plain:
        def __reduce__(self):
            return (bytes, ("caf\u00e9", "utf-8"))

    ok = _write(tmp_path, pickle.dumps([Plain()], protocol=4), "plain.pkl")
    assert load_pickle(ok) == ["caf\u00e9".encode()]


def test_a_legacy_torch_save_is_named_not_returned_as_its_magic_number(tmp_path: Path) -> None:
    # the first of a legacy torch.save's pickles is torch's magic number: it came back as an int
    path = tmp_path / "heat_Edema_map.pt"
    torch.save({"map": torch.zeros(1, 1, 4, 4)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(DataFormatError, match=r"heat_Edema_map\.pt: a legacy torch\.save file"):
        load_torch_pickle(path)
