"""Restricted unpickling for files from outside the project.

Only plain Python values (dict, list, tuple, str, numbers, bool, None), numpy arrays and
torch tensors may be reconstructed; any other global (a function, a class with side
effects, ``os.system``...) raises ``DataFormatError`` before it can run.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from cxr_spurious.errors import DataFormatError

_PLAIN = {
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "bool"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
}
_NUMPY = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}
_TORCH = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch", "strided"),
}
_TORCH_STORAGES = {
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "UntypedStorage",
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str, allow_torch: bool, allow_numpy: bool) -> None:
        super().__init__(file)
        self._source = source
        self._allow_torch = allow_torch
        self._allow_numpy = allow_numpy

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        allowed = key in _PLAIN
        if self._allow_numpy and (key in _NUMPY or (module == "numpy" and name == "dtype")):
            allowed = True
        if self._allow_torch and (key in _TORCH or (module == "torch" and name in _TORCH_STORAGES)):
            allowed = True
        if not allowed:
            raise DataFormatError(
                self._source,
                f"refusing to unpickle global '{module}.{name}': only plain values"
                + (", numpy arrays" if self._allow_numpy else "")
                + (" and torch tensors" if self._allow_torch else "")
                + " are allowed",
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise DataFormatError(self._source, f"pickle references an external object {pid!r:.60}; not allowed")


def load_pickle(path: str | Path, *, allow_numpy: bool = False) -> Any:
    """Load a pickle of plain Python values (and optionally numpy arrays) safely.

    Raises:
        DataFormatError: the file is not a pickle or holds a disallowed global.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return _RestrictedUnpickler(fh, str(path), allow_torch=False, allow_numpy=allow_numpy).load()
    except DataFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise DataFormatError(path, f"not a readable pickle: {exc}") from exc


def load_torch_pickle(path: str | Path) -> Any:
    """Load a pickle that holds torch tensors (e.g. CheXlocalize heatmaps) safely, on CPU.

    Plain ``pickle.dump`` of a dict with tensors (what CheXlocalize did) records tensors
    through ``torch.Tensor.__reduce_ex__`` -> ``torch._utils._rebuild_tensor_v2`` with
    storages as ``torch.*Storage`` persistent ids; ``torch.save`` files are zip archives
    that ``torch.load(weights_only=True)`` reads with its own restricted unpickler.

    Raises:
        DataFormatError: not a pickle, or it references anything but tensors and plain values.
    """
    import torch

    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK":  # torch.save zip format
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise DataFormatError(path, f"torch file holds disallowed objects: {exc}") from exc
        except Exception as exc:
            raise DataFormatError(path, f"not a readable torch file: {exc}") from exc
    try:
        with path.open("rb") as fh:
            return _TorchPickleUnpickler(fh, str(path)).load()
    except DataFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, RuntimeError) as exc:
        raise DataFormatError(path, f"not a readable heatmap pickle: {exc}") from exc


class _TorchPickleUnpickler(_RestrictedUnpickler):
    """Plain pickles of tensors: tensors pickle their storage via ``torch.storage`` reducers."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, source, allow_torch=True, allow_numpy=True)

    def find_class(self, module: str, name: str) -> Any:
        # Pickled tensors (without torch.save) rebuild storages from bytes.
        if (module, name) in {("torch.storage", "_load_from_bytes")}:
            return _load_storage_from_bytes
        return super().find_class(module, name)


def _load_storage_from_bytes(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
