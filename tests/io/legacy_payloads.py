"""Hand-made ``torch.storage._load_from_bytes`` payloads (legacy ``torch.save`` of a storage).

Shared by the restricted unpickler's tests: the size limits (``test_safe_pickle_limits``)
and the direct storage build (``test_legacy_storage``) vary the element counts, the magic
number, the key list and the storage type of an otherwise plain payload.
"""

from __future__ import annotations

import io
import pickle
import struct

import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy_storage_payload(
    numel: int,
    data: bytes,
    *,
    count: int | None = None,
    magic: int = LEGACY_MAGIC,
    keys: tuple[str, ...] = ("0",),
    kind: type = torch.FloatStorage,
) -> bytes:
    """What ``_load_from_bytes`` receives: a storage record of ``numel`` elements of
    ``kind``, the key list, an element count (``count``, default ``numel``) and ``data``."""
    marker = object()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", kind, "0", "cpu", numel, None) if obj is marker else None

    out = io.BytesIO()
    for value in (
        magic,
        1001,
        {
            "protocol_version": 1001,
            "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4},
        },
    ):
        pickle.dump(value, out, protocol=2)
    P(out, protocol=2).dump(marker)
    pickle.dump(list(keys), out, protocol=2)
    size = numel if count is None else count
    return out.getvalue() + struct.pack("<q", size) + data


class StoragePayload:
    """Pickles as ``torch.storage._load_from_bytes(payload)``, as a tensor's storage does."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.payload,))
