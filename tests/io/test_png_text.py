"""Text inside a PNG figure (``io.png_text``): written by ``FigureDataset``, read back as
Pillow reads it."""

from __future__ import annotations

import io
import zlib

import pytest
from kedro_datasets.partitions import PartitionedDataset
from matplotlib.figure import Figure
from PIL import Image

from cxr_spurious.datasets.figures import FigureDataset
from cxr_spurious.errors import ContractError
from cxr_spurious.io.png_text import png_save_args, png_text_of, read_png_text, set_png_text


def _figure() -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_a_figures_text_survives_the_dataset_and_reads_as_pillow_reads_it(tmp_path) -> None:
    fig = set_png_text(_figure(), {"model": "erm", "model_fingerprint": "ab" * 32})
    set_png_text(fig, {"note": "café"})  # added to what is there; Latin-1
    ds = FigureDataset(filepath=str(tmp_path / "f.png"), save_args={"dpi": 40})
    ds.save(fig)
    text = read_png_text(ds.load())
    assert {k: text[k] for k in ("model", "model_fingerprint", "note")} == {
        "model": "erm",
        "model_fingerprint": "ab" * 32,
        "note": "café",
    }
    assert Image.open(io.BytesIO(ds.load())).text == text  # Pillow, the reference reader
    # inside a PartitionedDataset (the overlays' dataset) as well, one text per partition
    parts = PartitionedDataset(
        path=str(tmp_path / "parts"),
        dataset={"type": "cxr_spurious.datasets.figures.FigureDataset"},
        filename_suffix=".png",
    )
    parts.save({"a": set_png_text(_figure(), {"model": "a"}), "b": _figure()})
    loaded = {k: read_png_text(v()) for k, v in parts.load().items()}
    assert loaded["a"]["model"] == "a" and "model" not in loaded["b"]


def test_text_goes_only_into_pngs() -> None:
    fig = set_png_text(_figure(), {"model": "erm"})
    assert png_save_args(fig, {"dpi": 50}, "x/f.png")["metadata"] == {"model": "erm"}
    assert png_save_args(fig, {"format": "png", "metadata": {"Title": "t"}}, "f")["metadata"] == {
        "Title": "t",
        "model": "erm",
    }
    assert "metadata" not in png_save_args(fig, {"dpi": 50}, "f.svg")
    assert "metadata" not in png_save_args(_figure(), {}, "f.png")  # nothing recorded
    buffer = io.BytesIO()
    fig.savefig(buffer, **png_save_args(fig, {"format": "svg"}, "f.svg"))  # saves fine
    assert b"<svg" in buffer.getvalue()


def test_bad_text_and_bad_files_are_refused() -> None:
    with pytest.raises(ContractError, match="1-79 characters"):
        set_png_text(_figure(), {"k" * 80: "v"})
    with pytest.raises(ContractError, match="Latin-1"):
        set_png_text(_figure(), {"model": "模型"})
    assert png_text_of(_figure()) == {}
    with pytest.raises(ContractError, match="not a PNG"):
        read_png_text(b"GIF89a....")
    buffer = io.BytesIO()
    _figure().savefig(buffer, format="png", metadata={"model": "erm"})
    data = buffer.getvalue()
    at = data.index(b"tEXtmodel")
    with pytest.raises(ContractError, match="cut short"):
        read_png_text(data[: at + 8])


def test_compressed_text_is_read_and_capped() -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    signature = b"\x89PNG\r\n\x1a\n"
    small = chunk(b"zTXt", b"model\0\0" + zlib.compress(b"erm"))
    huge = chunk(b"zTXt", b"bomb\0\0" + zlib.compress(b"x" * (10 << 20)))
    text = read_png_text(signature + small + huge + chunk(b"IEND", b""))
    assert text["model"] == "erm" and len(text["bomb"]) == 1 << 16
