"""Provenance carried inside a PNG figure: which trained model a figure was drawn from.

A figure saved as a PNG loses the table row that would say which training of the model it
shows, so a reader (the study report) cannot tell an overlay of an earlier training from one
of the model on disk now. A node records that on the figure (``set_png_text``); the
project's ``FigureDataset`` writes it into the PNG as ``tEXt`` chunks when it saves a PNG
(``png_save_args``); a reader gets it back from the bytes (``read_png_text``). Other image
viewers show the chunks as the file's properties (e.g. ``identify -verbose``).

Keys and values are Latin-1 text (the ``tEXt`` chunk's encoding); keys are 1-79 characters.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any

from cxr_spurious.errors import ContractError

#: Attribute of a matplotlib ``Figure`` holding the text to write into its PNG.
PNG_TEXT_ATTR = "cxr_spurious_png_text"

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The most bytes of one compressed (``zTXt``) text that ``read_png_text`` inflates.
MAX_TEXT = 1 << 16


def _checked(text: Mapping[str, object]) -> dict[str, str]:
    out = {}
    for key, value in text.items():
        key, value = str(key), str(value)
        if not 1 <= len(key) <= 79 or "\0" in key or "\0" in value:
            raise ContractError(f"PNG text key {key!r}: expected 1-79 characters without NUL")
        try:
            key.encode("latin-1"), value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ContractError(f"PNG text {key!r}: expected Latin-1 text ({exc})") from exc
        out[key] = value
    return out


def set_png_text(fig: Any, text: Mapping[str, object]) -> Any:
    """Record ``text`` on ``fig`` for its PNG (added to any text already recorded); returns
    ``fig``.

    Raises:
        ContractError: a key or value that a ``tEXt`` chunk cannot hold.
    """
    setattr(fig, PNG_TEXT_ATTR, {**png_text_of(fig), **_checked(text)})
    return fig


def png_text_of(fig: Any) -> dict[str, str]:
    """The text recorded on ``fig`` (empty when none)."""
    return dict(getattr(fig, PNG_TEXT_ATTR, None) or {})


def png_save_args(fig: Any, save_args: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``save_args`` for ``fig.savefig`` with the figure's text added to ``metadata`` when
    the file is a PNG (``format: png`` or a ``.png`` path without another ``format``);
    other formats get ``save_args`` unchanged."""
    args = dict(save_args)
    text = png_text_of(fig)
    fmt = str(args.get("format") or str(path).rsplit(".", 1)[-1]).lower()
    if text and fmt == "png":
        args["metadata"] = {**dict(args.get("metadata") or {}), **text}
    return args


def read_png_text(data: bytes) -> dict[str, str]:
    """The ``tEXt`` and ``zTXt`` chunks of a PNG as ``{key: text}`` (empty when it has none).

    Raises:
        ContractError: ``data`` is not a PNG, or a chunk is cut short.
    """
    if not data.startswith(_SIGNATURE):
        raise ContractError("not a PNG file (its first 8 bytes are not the PNG signature)")
    out: dict[str, str] = {}
    pos = len(_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            raise ContractError(f"PNG chunk {kind!r} at byte {pos} is cut short")
        if kind == b"tEXt" and b"\0" in body:
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt" and b"\0" in body:
            key, _, rest = body.partition(b"\0")
            inflate = zlib.decompressobj()  # capped: a compressed chunk may expand hugely
            out[key.decode("latin-1")] = inflate.decompress(rest[1:], MAX_TEXT).decode("latin-1")
        elif kind == b"IEND":
            break
        pos += 12 + length
    return out
