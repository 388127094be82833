"""Restricted unpickling for files from outside the project.

Only plain Python values (dict, list, tuple, str, numbers, bool, None), numpy arrays and
torch tensors may be reconstructed; any other global (a function, a class with side
effects, ``os.system``...) raises ``DataFormatError`` before it can run.

Sizes are bounded too. Before unpickling, the opcode stream is scanned (payloads are
seeked over, not read): every length field must fit in the bytes left in the file and in
``max_bytes``, every memo index must be one a pickler could have written, and
out-of-band buffers (protocol 5 ``buffer_callback``) are refused. Numpy arrays, dtypes
and torch tensors/storages are recorded while unpickling and built afterwards by this
module, from checked sizes: an array's bytes must match its shape and dtype (numeric
dtypes only), a tensor must lie inside its storage, a storage inside the bytes that
carry it, and a constructor asked for ``N`` bytes (``bytes(N)``, ``torch.FloatStorage(N)``)
gets at most the file's own size. All allocations of one load together may not pass
``ALLOCATION_FACTOR`` times the file's size (at least ``ALLOCATION_FLOOR`` bytes) nor
``max_bytes``, so a payload used many times (memo) cannot multiply memory. Tensors may
have no more elements than their storage (no broadcast views of a tiny storage). Loaded
values in error messages are shown through a bounded repr (``short_repr``). A ``torch.save``
zip archive must hold only stored (uncompressed) entries, together within its own size and
``max_bytes``, before ``torch.load`` reads it (``check_torch_zip``). Numpy arrays
pickled at protocols 2 to 5 (in-band) are supported, from numpy 1.x (``numpy.core``) and
2.x (``numpy._core``).
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import mmap
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cxr_spurious.errors import DataFormatError

DEFAULT_MAX_BYTES = 1 << 30
#: Largest total size of the zip entries of a model weights file (pretrained weights, model
#: artifacts, training checkpoints; ``check_torch_zip``): far above any of them (the largest
#: torchvision weights file is about 2.5 GB).
MODEL_FILE_MAX_BYTES = 16 << 30
"""Largest allocation (bytes) a pickle may ask for, unless ``max_bytes`` says otherwise."""
ALLOCATION_FACTOR = 8
"""Bytes a load may allocate in all, per byte of the file (memo reuse cannot multiply it).

A CheXlocalize heatmap pickle allocates about 1x its size (the storage copy of its 1.2 MB
``cxr_img`` payload); protocol 2 payloads (``_codecs.encode``) and numpy/torch copies of
them reach about 2x. 8 leaves room for that and for list/tuple pointers (8 bytes per item).
"""
ALLOCATION_FLOOR = 1 << 20
"""Smallest total allocation budget (bytes), so that tiny files are not refused."""

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = 6
_REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 4
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlong = 40


def short_repr(value: Any, limit: int = 80) -> str:
    """A bounded repr of a loaded value for an error message (never builds a full repr).

    Nesting, item counts and string lengths are capped (``reprlib``), so a memo-shared
    structure whose full repr is exponential in the file size costs only a few items.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # a value whose repr fails: its type is enough
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exc_text(exc: BaseException, limit: int = 200) -> str:
    """``str(exc)``, bounded: a ``KeyError``'s text is the repr of a (loaded) key."""
    plain = all(isinstance(a, str | bytes | int) for a in exc.args)
    text = str(exc) if plain and not isinstance(exc, KeyError) else short_repr(exc.args, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    ("_codecs", "encode"),  # protocol 2 writes bytes as _codecs.encode(str, 'latin1')
}
_NUMPY_CORE = (
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
)
_TORCH = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch", "strided"),
}
_TORCH_STORAGES = {  # element size in bytes
    "FloatStorage": 4,
    "DoubleStorage": 8,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "UntypedStorage": 1,
}
_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex
_LENGTH_PREFIX = {  # argument descriptor n -> (prefix bytes, struct format)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, "<B"),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, "<i"),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, "<I"),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, "<Q"),
}
_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    ValueError,
    TypeError,
    RuntimeError,
    MemoryError,
    OverflowError,
    RecursionError,
    LookupError,  # IndexError, KeyError, and an unknown codec (str(b'ab', 'hex'))
    struct.error,
)


class _Context:
    """One load: the file named in errors, its size, the allocation limit, payload access."""

    def __init__(self, source: str, file_size: int, max_bytes: int | None) -> None:
        self.source = source
        self.file_size = file_size
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
        self._seen: dict[int, tuple[Any, Any]] = {}  # id -> (object kept alive, its built value)
        self.records = 0  # records made by this load (nothing to build when 0)
        self.allocated = 0  # bytes allocated from the pickle so far (charge())
        self.budget = min(self.max_bytes, max(ALLOCATION_FACTOR * file_size, ALLOCATION_FLOOR))

    def error(self, problem: str) -> DataFormatError:
        return DataFormatError(self.source, problem)

    def check_size(self, nbytes: int, what: str, *, available: int | None = None) -> int:
        """``nbytes`` if it is within the file's size (or ``available``) and ``max_bytes``."""
        limit = self.file_size if available is None else available
        if nbytes < 0:
            raise self.error(f"{what} has a negative size ({nbytes})")
        if nbytes > self.max_bytes:
            raise self.error(
                f"{what} asks for {nbytes:,} bytes, "
                f"more than the limit of {self.max_bytes:,} bytes (max_bytes)"
            )
        if nbytes > limit:
            raise self.error(
                f"{what} asks for {nbytes:,} bytes, more than the {limit:,} bytes that carry it"
            )
        return nbytes

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` allocated for ``what``; refuse past the load's total budget."""
        self.allocated += max(0, int(nbytes))
        if self.allocated > self.budget:
            raise self.error(
                f"{what} brings the memory this pickle asks for to {self.allocated:,} bytes in "
                f"all, more than the limit of {self.budget:,} bytes (min(max_bytes, "
                f"{ALLOCATION_FACTOR} x the file's {self.file_size:,} bytes))"
            )

    def payload(self, data: Any) -> Any:
        """The real bytes of ``data`` (a reader that seeks over payloads overrides this)."""
        return data

    def finish(self, obj: Any) -> Any:
        """``materialize(obj)``.

        Skipped (no walk) when the load made no record and skipped nothing.
        """
        return self.materialize(obj) if self.records or self.skipped() else obj

    def skipped(self) -> bool:
        """Whether a payload was seeked over (overridden by a skipping reader's context)."""
        return False

    def materialize(self, obj: Any) -> Any:
        """``obj`` with every record built and every payload real (shared values kept shared)."""
        key = id(obj)
        if key in self._seen:
            return self._seen[key][1]
        if isinstance(obj, _Record):
            out = obj.build()
        elif isinstance(obj, bytes | bytearray):
            out = self.payload(obj)
        elif isinstance(obj, dict):
            self._seen[key] = (obj, obj)
            for k in list(obj):
                if isinstance(k, _Record):
                    raise self.error("an array or tensor is used as a dict key; not supported")
                obj[k] = self.materialize(obj[k])
            return obj
        elif isinstance(obj, list):
            self._seen[key] = (obj, obj)
            for i, v in enumerate(obj):
                obj[i] = self.materialize(v)
            return obj
        elif type(obj) is tuple:
            out = tuple(self.materialize(v) for v in obj)
        elif type(obj) in (set, frozenset) and any(isinstance(v, _Record) for v in obj):
            raise self.error("an array or tensor is stored in a set; not supported")
        else:
            return obj
        self._seen[key] = (obj, out)
        return out


def _scan_opcodes(fh: Any, ctx: _Context) -> None:
    """Check the opcode stream of the pickle at ``fh``'s position (see ``_scan_buffer``).

    The file is memory-mapped, so payloads that are skipped are not read from disk.
    """
    start = fh.tell()
    if isinstance(fh, io.BytesIO):
        _scan_buffer(fh.getvalue(), start, ctx)
        return
    try:
        fileno = fh.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fileno = None
    if fileno is None or ctx.file_size == 0:
        _scan_buffer(fh.read(), 0, ctx)
        fh.seek(start)
        return
    with mmap.mmap(fileno, 0, access=mmap.ACCESS_READ) as view:
        # no read-around: the scan touches a few pages, and a page fault would otherwise
        # read the device's whole readahead window (8 MiB on some disks), i.e. the
        # payloads it seeks over
        if hasattr(view, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            view.madvise(mmap.MADV_RANDOM)
        _scan_buffer(view, start, ctx)


def _scan_buffer(data: Any, pos: int, ctx: _Context) -> int:
    """Check a pickle's opcode stream in ``data`` from ``pos``; the offset after its STOP.

    Raises:
        DataFormatError: an unknown opcode, a length beyond the data or ``max_bytes``, a
            memo index no pickler writes, out-of-band buffers, or no STOP.
    """
    end = len(data)
    n_ops = 0
    while True:
        at = pos
        if pos >= end:
            raise ctx.error(f"pickle data ends at offset {pos} without a STOP opcode (truncated)")
        entry = _OP_TABLE[data[pos]]
        if entry is None:
            raise ctx.error(f"not a pickle: unknown opcode {bytes([data[pos]])!r} at offset {pos}")
        name, kind, width, fmt = entry
        pos += 1
        n_ops += 1
        value = None
        if kind == _FIXED:
            if pos + width > end:
                raise ctx.error(f"pickle data truncated in {name} at offset {at}")
            if fmt:
                (value,) = struct.unpack_from(fmt, data, pos)
            pos += width
        elif kind == _COUNTED:
            if pos + width > end:
                raise ctx.error(f"pickle data truncated in {name} at offset {at}")
            (size,) = struct.unpack_from(fmt, data, pos)
            pos += width
            pos += ctx.check_size(size, f"{name} at offset {at}", available=end - pos)
        elif kind == _LINES:
            for _ in range(width):
                newline = data.find(b"\n", pos)
                if newline < 0:
                    raise ctx.error(f"pickle data truncated in {name} at offset {at}")
                if name == "PUT":
                    try:
                        value = int(bytes(data[pos:newline]))
                    except ValueError as exc:
                        raise ctx.error(f"malformed PUT at offset {at}") from exc
                pos = newline + 1
        elif kind == _REFUSED:
            raise ctx.error(
                "pickle refers to out-of-band buffers (protocol 5 with buffer_callback); "
                "only in-band data is supported, re-pickle without buffer_callback"
            )
        if value is None:
            if name == "STOP":
                return pos
        elif name == "FRAME":
            ctx.check_size(value, f"FRAME at offset {at}", available=end - pos)
        elif not 0 <= value < n_ops:  # PUT, BINPUT, LONG_BINPUT
            raise ctx.error(
                f"{name} at offset {at} uses memo index {value}; "
                "a pickler numbers memo entries from 0 in order"
            )


def _op_table() -> list[tuple[str, int, int, str] | None]:
    """Per opcode byte: (name, kind, width or line count, struct format of a checked value)."""
    table: list[tuple[str, int, int, str] | None] = [None] * 256
    checked = {"BINPUT": "<B", "LONG_BINPUT": "<I", "FRAME": "<Q"}
    for op in pickletools.opcodes:
        arg = op.arg
        if op.name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            entry = (op.name, _REFUSED, 0, "")
        elif arg is None:
            entry = (op.name, _FIXED, 0, "")
        elif arg.n in _LENGTH_PREFIX:
            entry = (op.name, _COUNTED, *_LENGTH_PREFIX[arg.n])
        elif arg.n == pickletools.UP_TO_NEWLINE:
            entry = (op.name, _LINES, 2 if op.name in ("GLOBAL", "INST") else 1, "")
        else:
            entry = (op.name, _FIXED, arg.n, checked.get(op.name, ""))
        table[ord(op.code)] = entry
    return table


_FIXED, _COUNTED, _LINES, _REFUSED = range(4)
_OP_TABLE = _op_table()


# ---------------------------------------------------------------------------------------
# Records: values that are built after unpickling, from checked sizes.


class _Record:
    """A value the unpickler recorded instead of building; ``build()`` makes it."""

    shape: tuple[int, ...] | None = None

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(
            f"pickle sets the state of a {type(self).__name__}; not allowed"
        )

    def build(self) -> Any:  # pragma: no cover - every record overrides
        raise NotImplementedError


class _Call(_Record):
    """``func(*args)`` with ``args`` built first (tensors, parameters)."""

    def __init__(self, ctx: _Context, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.ctx, self.func, self.args = ctx, func, args
        ctx.records += 1
        size = (
            args[2] if len(args) > 3 else getattr(args[0], "shape", None) if args else None
        )  # tensor / parameter
        if isinstance(size, tuple | list) and all(isinstance(d, int) for d in size):
            self.shape = tuple(size)

    def build(self) -> Any:
        return self.func(*[self.ctx.materialize(a) for a in self.args])


class _DtypeRecord(_Record):
    """``numpy.dtype(obj, align, copy)`` and its pickled state; numeric dtypes only."""

    def __init__(self, ctx: _Context, obj: Any, *_: Any) -> None:
        self.ctx, self.obj, self.state = ctx, obj, None
        ctx.records += 1

    def __setstate__(self, state: Any) -> None:
        if self.state is not None:
            super().__setstate__(state)
        self.state = state

    def build(self) -> np.dtype:
        if not isinstance(self.obj, str):
            raise self.ctx.error(
                f"numpy dtype {short_repr(self.obj, 40)} is not supported; "
                "expected a numeric dtype code"
            )
        try:
            dtype = np.dtype(self.obj)
        except TypeError as exc:
            raise self.ctx.error(f"unknown numpy dtype {short_repr(self.obj, 40)}") from exc
        state = self.state
        if isinstance(state, tuple) and len(state) >= 2:
            if any(v is not None for v in state[2:5]):
                raise self.ctx.error(
                    "structured or sub-array numpy dtypes are not supported; "
                    "expected a numeric dtype"
                )
            if state[1] in ("<", ">"):
                dtype = dtype.newbyteorder(state[1])
        if (
            dtype.kind not in _NUMERIC_KINDS
            or dtype.fields is not None
            or dtype.subdtype is not None
        ):
            raise self.ctx.error(
                f"numpy dtype '{dtype.str}' is not supported; "
                "expected bool, integer, float or complex"
            )
        return dtype


def _dims(ctx: _Context, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple | list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ctx.error(
            f"numpy array shape {short_repr(shape, 60)} is not a tuple of non-negative ints"
        )
    return tuple(shape)


def _array_from_bytes(ctx: _Context, data: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """A writable copy of ``data`` as an array, after checking its size against the shape."""
    dtype = dtype.build() if isinstance(dtype, _DtypeRecord) else None
    if dtype is None:
        raise ctx.error("numpy array without a numpy dtype")
    dims = _dims(ctx, shape)
    what = f"numpy array {short_repr(dims)} of {dtype.str}"
    nbytes = ctx.check_size(math.prod(dims) * dtype.itemsize, what)
    data = ctx.payload(data)
    if isinstance(data, list):
        raise ctx.error("numpy object arrays are not supported; expected a numeric array")
    if not isinstance(data, bytes | bytearray) or len(data) != nbytes:
        got = len(data) if isinstance(data, bytes | bytearray) else type(data).__name__
        raise ctx.error(f"{what} needs {nbytes} bytes of data, got {got}")
    ctx.charge(nbytes, what)
    flat = np.frombuffer(data, dtype=dtype)
    return flat.reshape(dims, order="F" if order == "F" else "C").copy(order="K")


class _ArrayRecord(_Record):
    """``numpy.core.multiarray._reconstruct(ndarray, ...)`` and its BUILD state."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx, self.state = ctx, None
        ctx.records += 1

    def __setstate__(self, state: Any) -> None:
        if self.state is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError(
                "malformed numpy array state; expected (version, shape, dtype, fortran, data)"
            )
        self.state = state[-4:]
        if isinstance(self.state[0], tuple | list) and all(
            isinstance(d, int) for d in self.state[0]
        ):
            self.shape = tuple(self.state[0])

    def build(self) -> np.ndarray:
        if self.state is None:
            raise self.ctx.error("numpy array without its data (no BUILD state)")
        shape, dtype, fortran, data = self.state
        return _array_from_bytes(self.ctx, data, dtype, shape, "F" if fortran else "C")


class _FromBufferRecord(_Record):
    """``numpy.core.numeric._frombuffer(buf, dtype, shape, order)`` (protocol 5, in-band)."""

    def __init__(self, ctx: _Context, buf: Any, dtype: Any, shape: Any, order: Any) -> None:
        self.ctx, self.args = ctx, (buf, dtype, shape, order)
        ctx.records += 1
        if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
            self.shape = shape

    def build(self) -> np.ndarray:
        buf, dtype, shape, order = self.args
        return _array_from_bytes(self.ctx, buf, dtype, shape, order)


class _ScalarRecord(_Record):
    """``numpy.core.multiarray.scalar(dtype, data)``."""

    def __init__(self, ctx: _Context, dtype: Any, data: Any = None) -> None:
        self.ctx, self.args = ctx, (dtype, data)
        ctx.records += 1

    def build(self) -> Any:
        dtype, data = self.args
        return _array_from_bytes(self.ctx, data, dtype, (), "C")[()]


class _StorageRecord(_Record):
    """``torch.storage._load_from_bytes(data)``: a legacy ``torch.save`` of one storage."""

    def __init__(self, ctx: _Context, data: Any) -> None:
        self.ctx, self.data = ctx, data
        ctx.records += 1

    def build(self) -> Any:
        return _load_storage_from_bytes(self.ctx.payload(self.data), self.ctx)


# ---------------------------------------------------------------------------------------
# Checked constructors handed out by find_class (sealed: a pickle cannot BUILD on them).


class _Checked:
    __slots__ = ("_func", "_name")

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_func", func)

    def __call__(self, *args: Any) -> Any:
        return self._func(*args)

    def __setattr__(self, key: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"pickle modifies '{self._name}'; not allowed")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"pickle sets the state of '{self._name}'; not allowed")

    def __repr__(self) -> str:
        return f"<checked {self._name}>"


_STR_ARGS = (str, bytes, bytearray, int, float, bool, type(None))
_CONTAINERS = (list, tuple, dict, set, frozenset)


def _result_bytes(name: str, args: tuple[Any, ...]) -> int:
    """About how many bytes ``builtins.<name>(*args)`` allocates (for ``_Context.charge``).

    Containers: 8 bytes (a pointer) per item, plus a new object per character of a str
    beyond latin-1 (CPython caches the others); str: 4 bytes per character (UCS-4 at
    worst); bytes: 1 per byte, ``bytes(N)`` N; numbers: the length of their text.
    """
    if not args:
        return 0
    first = args[0]
    if name == "bytes" and isinstance(first, int):
        return first
    try:
        n = len(first)
    except TypeError:
        return 0
    if name in ("list", "tuple", "set", "frozenset", "dict", "OrderedDict"):
        if isinstance(first, str) and first and max(first) > "\xff":
            return 88 * n  # one str object per character
        return 8 * n
    if name == "str" or isinstance(first, str):
        return 4 * n  # UCS-4 text, or text encoded (utf-8: at most 4 bytes a character)
    return n


#: Text encodings a pickle may name in ``bytes(str, encoding)`` / ``str(bytes, encoding)``:
#: each makes at most 4 bytes of a character (``unicode_escape`` makes up to 10, ``utf-32``
#: 4 plus a mark, and codecs such as ``rot13`` or ``zlib`` are not text encodings at all).
_ENCODINGS = frozenset({"utf-8", "utf8", "ascii", "latin1", "latin-1", "iso-8859-1"})


def _plain(ctx: _Context, module: str, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        args = tuple(ctx.payload(a) if isinstance(a, bytes | bytearray) else a for a in args)
        what = f"{module}.{name}() of {type(args[0]).__name__ if args else 'nothing'}"
        if name == "bytes" and args and isinstance(args[0], int):
            what = f"bytes({short_repr(args[0], 30)})"
            ctx.check_size(args[0], what)
        if (
            name in ("bytes", "bytearray", "str")
            and len(args) > 1
            and not (isinstance(args[1], str) and args[1].lower() in _ENCODINGS)
        ):
            raise ctx.error(
                f"{module}.{name}() with encoding {short_repr(args[1], 30)} is not allowed in "
                f"a pickle (only {', '.join(sorted(_ENCODINGS))})"
            )
        ctx.charge(_result_bytes(name, args), what)
        if name == "str" and not all(isinstance(a, _STR_ARGS) for a in args):
            raise ctx.error("str() of a container is not allowed in a pickle")
        if name == "encode":
            if (
                len(args) != 2
                or not isinstance(args[0], str)
                or args[1] not in ("latin1", "latin-1")
            ):
                raise ctx.error(
                    "_codecs.encode is only allowed as encode(str, 'latin1') (protocol 2 bytes)"
                )
            return args[0].encode("latin-1")
        return func(*args)

    return call


def _storage_class(ctx: _Context, name: str, cls: Any) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            what = f"torch.{name}({short_repr(args[0], 30)})"
            ctx.check_size(args[0] * _TORCH_STORAGES[name], what)
            ctx.charge(args[0] * _TORCH_STORAGES[name], what)
        elif args and hasattr(args[0], "__len__"):
            ctx.charge(len(args[0]) * _TORCH_STORAGES[name], f"torch.{name}() of a sequence")
        return cls(*args)

    return call


def _check_view(ctx: _Context, storage: Any, offset: Any, size: Any, stride: Any) -> None:
    """Raise unless the tensor (offset, size, stride) lies inside ``storage`` (no resize)."""
    dims, steps = tuple(size), tuple(stride)
    if not (
        isinstance(offset, int)
        and offset >= 0
        and len(dims) == len(steps)
        and all(isinstance(d, int) and d >= 0 for d in dims + steps)
    ):
        raise ctx.error(
            f"tensor record with offset {short_repr(offset, 20)}, size {short_repr(dims, 40)}, "
            f"stride {short_repr(steps, 40)} is malformed"
        )
    n = (
        storage._size() if hasattr(storage, "_size") else len(storage)
    )  # elements; _size() does not warn
    if 0 in dims:
        return
    view = f"tensor of size {short_repr(dims)} (offset {offset}, stride {short_repr(steps)})"
    last = offset + sum((d - 1) * s for d, s in zip(dims, steps))
    if last >= n:
        raise ctx.error(f"{view} reaches element {last} of a storage of {n} elements")
    # A stride-0 (broadcast) view has more elements than its storage: a few bytes in the
    # file would become any number of elements once copied (``.contiguous()``, numpy).
    # Tensors of real heatmaps never do; a pickled ``expand()`` view does.
    numel = math.prod(dims)
    if numel > n:
        raise ctx.error(
            f"{view} has {numel:,} elements, more than the {n:,} of its storage "
            "(a broadcast view); save the tensor with .contiguous() or .clone()"
        )


def _rebuild(ctx: _Context, func: Callable[..., Any]) -> Callable[..., Any]:
    def call(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> Any:
        _check_view(ctx, storage, offset, size, stride)
        return func(storage, offset, size, stride, *rest)

    return call


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, ctx: _Context, allow_torch: bool, allow_numpy: bool) -> None:
        super().__init__(file)
        self._ctx = ctx
        self._source = ctx.source
        self._allow_torch = allow_torch
        self._allow_numpy = allow_numpy

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 names (__builtin__ ...)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = self._checked(module, name)
        if found is None:
            raise DataFormatError(
                self._source,
                f"refusing to unpickle global '{module}.{name}': only plain values"
                + (", numpy arrays" if self._allow_numpy else "")
                + (" and torch tensors" if self._allow_torch else "")
                + " are allowed",
            )
        return found

    def _checked(self, module: str, name: str) -> Any:
        ctx, key = self._ctx, (module, name)
        if key in _PLAIN:
            return _Checked(
                f"{module}.{name}", _plain(ctx, module, name, super().find_class(module, name))
            )
        if self._allow_numpy:
            if key == ("numpy", "ndarray"):
                return _NDARRAY
            if key == ("numpy", "dtype"):
                return _Checked("numpy.dtype", lambda *a: _DtypeRecord(ctx, *a))
            if module in _NUMPY_CORE and name == "_reconstruct":
                return _Checked(
                    f"{module}.{name}",
                    lambda cls, *_: (
                        _ArrayRecord(ctx)
                        if cls is _NDARRAY
                        else _refuse(ctx, "numpy _reconstruct of a class other than ndarray")
                    ),
                )
            if module in _NUMPY_CORE and name == "_frombuffer":
                return _Checked(f"{module}.{name}", lambda *a: _FromBufferRecord(ctx, *a))
            if module in _NUMPY_CORE and name == "scalar":
                return _Checked(f"{module}.{name}", lambda *a: _ScalarRecord(ctx, *a))
        if self._allow_torch:
            if key == ("torch", "strided"):
                return super().find_class(module, name)
            if key in _TORCH:
                func = super().find_class(module, name)
                if name.startswith("_rebuild_tensor"):
                    func = _rebuild(ctx, func)
                if name.startswith("_rebuild"):
                    return _Checked(f"{module}.{name}", lambda *a, f=func: _Call(ctx, f, a))
                return _Checked(f"{module}.{name}", func)
            if module == "torch" and name in _TORCH_STORAGES:
                return _Checked(
                    f"torch.{name}", _storage_class(ctx, name, super().find_class(module, name))
                )
        return None

    def persistent_load(self, pid: Any) -> Any:
        raise DataFormatError(
            self._source, f"pickle references an external object {short_repr(pid, 60)}; not allowed"
        )


def _refuse(ctx: _Context, problem: str) -> Any:
    raise ctx.error(f"{problem}; not allowed")


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` in a pickle (only as ``_reconstruct``'s argument)."""

    __slots__ = ()

    def __call__(self, *args: Any) -> Any:
        raise pickle.UnpicklingError(
            "pickle calls numpy.ndarray(...) directly; only pickled arrays are allowed"
        )

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("pickle sets the state of numpy.ndarray; not allowed")


_NDARRAY = _NdarrayClass()


def _open_size(fh: Any) -> int:
    try:
        return os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        here = fh.tell()
        end = fh.seek(0, os.SEEK_END)
        fh.seek(here)
        return end


def _unpickle(
    fh: Any, ctx: _Context, make: Callable[[Any], pickle.Unpickler], *, materialize: bool = True
) -> Any:
    """Scan then unpickle one pickle from ``fh`` (at its start).

    Records are built unless told not to.
    """
    _scan_opcodes(fh, ctx)
    obj = make(fh).load()
    return ctx.finish(obj) if materialize else obj


def load_pickle(
    path: str | Path, *, allow_numpy: bool = False, max_bytes: int | None = None
) -> Any:
    """Load a pickle of plain Python values (and optionally numpy arrays) safely.

    Args:
        path: The file.
        allow_numpy: Also allow numeric numpy arrays and scalars (protocols 2 to 5, in-band).
        max_bytes: Largest allocation the file may ask for (default ``DEFAULT_MAX_BYTES``);
            every allocation is also bounded by the file's own size.

    Raises:
        DataFormatError: the file is not a pickle, holds a disallowed global, or asks for
            more memory than its own size or ``max_bytes``.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            ctx = _Context(str(path), _open_size(fh), max_bytes)
            return _unpickle(
                fh,
                ctx,
                lambda f: _RestrictedUnpickler(f, ctx, allow_torch=False, allow_numpy=allow_numpy),
            )
    except DataFormatError:
        raise
    except _READ_ERRORS as exc:
        raise DataFormatError(path, f"not a readable pickle: {_exc_text(exc)}") from exc


def check_torch_zip(
    path: str | Path | io.BytesIO, *, max_bytes: int | None = None, name: str | None = None
) -> None:
    """Check a ``torch.save`` zip archive before ``torch.load`` unpacks it.

    ``torch.save`` writes every entry stored (uncompressed), so the bytes ``torch.load``
    unpacks are the archive's own bytes. A compressed entry could unpack to about 1000x
    its size (a zip bomb) and is refused; the entries' sizes together must fit in the
    file (entries that share bytes are refused too) and in ``max_bytes``.

    Args:
        path: The zip file, or its bytes already read (``io.BytesIO``, e.g. from a remote
            filesystem; rewound afterwards).
        max_bytes: Largest total size of the entries (default ``DEFAULT_MAX_BYTES``).
        name: The file named in errors (default: ``path``).

    Raises:
        DataFormatError: not a readable zip archive, a compressed entry, or entries larger
            than the file or ``max_bytes``.
    """
    if isinstance(path, io.BytesIO):
        source, size = name or "<bytes>", len(path.getbuffer())
    else:
        path = Path(path)
        source, size = name or str(path), path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise DataFormatError(source, f"not a readable torch file (zip): {exc}") from exc
    finally:
        if isinstance(path, io.BytesIO):
            path.seek(0)
    ctx = _Context(source, size, max_bytes)
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            raise ctx.error(
                f"zip entry '{entry.filename}' is compressed ({entry.compress_size:,} bytes "
                f"for {entry.file_size:,}); torch.save stores entries uncompressed, "
                "re-save the file with torch.save"
            )
    ctx.check_size(sum(e.file_size for e in entries), "unpacking the zip entries")


def load_torch_pickle(path: str | Path, *, max_bytes: int | None = None) -> Any:
    """Load a pickle that holds torch tensors (e.g. CheXlocalize heatmaps) safely, on CPU.

    Plain ``pickle.dump`` of a dict with tensors (what CheXlocalize did) records tensors
    through ``torch.Tensor.__reduce_ex__`` -> ``torch._utils._rebuild_tensor_v2`` with
    storages as ``torch.storage._load_from_bytes`` payloads; ``torch.save`` files are zip
    archives that ``torch.load(weights_only=True)`` reads with its own restricted unpickler.
    Numpy arrays are allowed as for ``load_pickle(allow_numpy=True)``.

    Args:
        path: The file.
        max_bytes: Largest allocation the file may ask for (default ``DEFAULT_MAX_BYTES``);
            for a zip file, the largest total size of its entries (``check_torch_zip``).

    Raises:
        DataFormatError: not a pickle, it references anything but tensors, arrays and
            plain values, asks for more memory than its own size or ``max_bytes``, or a
            zip file with compressed entries.
    """
    import torch

    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK":  # torch.save zip format
        check_torch_zip(path, max_bytes=max_bytes)
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise DataFormatError(path, f"torch file holds disallowed objects: {exc}") from exc
        except Exception as exc:
            raise DataFormatError(path, f"not a readable torch file: {exc}") from exc
        refuse_broadcast_tensors(loaded, path)
        return loaded
    try:
        with path.open("rb") as fh:
            ctx = _Context(str(path), _open_size(fh), max_bytes)
            loaded = _unpickle(fh, ctx, lambda f: _TorchPickleUnpickler(f, ctx))
    except DataFormatError:
        raise
    except _READ_ERRORS as exc:
        raise DataFormatError(path, f"not a readable heatmap pickle: {_exc_text(exc)}") from exc
    if type(loaded) is int and loaded == _LEGACY_MAGIC:
        # a legacy torch.save file is several pickles in a row; the first is this number
        raise DataFormatError(
            path,
            "a legacy torch.save file (not a zip archive: torch before 1.6, or "
            "_use_new_zipfile_serialization=False), which is not read; save it again with "
            "torch.save in the default (zip) format, or pickle.dump the dict of tensors",
        )
    return loaded


class _TorchPickleUnpickler(_RestrictedUnpickler):
    """Plain pickles of tensors: tensors pickle their storage via ``torch.storage`` reducers."""

    def __init__(self, file: Any, ctx: _Context) -> None:
        super().__init__(file, ctx, allow_torch=True, allow_numpy=True)

    def find_class(self, module: str, name: str) -> Any:
        # Pickled tensors (without torch.save) rebuild storages from bytes.
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            ctx = self._ctx
            return _Checked(
                "torch.storage._load_from_bytes", lambda data: _StorageRecord(ctx, data)
            )
        return super().find_class(module, name)


class _StorageType:
    """A ``torch.*Storage`` class named in a storage record (element size only)."""

    def __init__(self, name: str) -> None:
        self.name, self.itemsize = name, _TORCH_STORAGES[name]


class _StorageHeaderUnpickler(_RestrictedUnpickler):
    """Reads the pickles of a legacy ``torch.save`` of storages, collecting storage records."""

    def __init__(self, file: Any, ctx: _Context) -> None:
        super().__init__(file, ctx, allow_torch=False, allow_numpy=False)
        self.storages: list[tuple[_StorageType, int]] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(name)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (
            isinstance(pid, tuple)
            and len(pid) >= 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[4], int)
        ):
            raise DataFormatError(
                self._source,
                f"unexpected record {short_repr(pid)} in a tensor storage; "
                "expected ('storage', type, key, location, size)",
            )
        self.storages.append((pid[1], pid[4]))
        return None


def _load_storage_from_bytes(data: bytes, ctx: _Context | None = None) -> Any:
    """A storage from a ``_load_from_bytes`` payload, its claimed size checked first.

    The payload is a legacy ``torch.save``: magic number, protocol, system info, the
    storage record(s) (size in elements), the keys, then each storage's bytes. The claimed
    sizes must fit in the bytes that follow them (and ``max_bytes``) before torch
    allocates anything.
    """
    import torch

    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError(
            f"tensor storage payload must be bytes, got {type(data).__name__}"
        )
    if ctx is None:
        ctx = _Context("<tensor storage>", len(data), None)
    inner = _Context(f"{ctx.source} (tensor storage)", len(data), ctx.max_bytes)
    pos, heads = 0, []
    for _ in range(3):  # magic number, protocol, system info
        start, pos = pos, _scan_buffer(data, pos, inner)
        heads.append((start, pos))
    end = _scan_buffer(data, pos, inner)  # the storage record(s)
    fh = io.BytesIO(data)
    fh.seek(pos)
    header = _StorageHeaderUnpickler(fh, inner)
    header.load()
    if fh.tell() != end or not header.storages:
        raise inner.error("no storage record where a legacy torch.save has one")
    keys_at, pos = end, _scan_buffer(data, end, inner)  # the storage keys
    total = sum(kind.itemsize * n for kind, n in header.storages)
    inner.check_size(
        total, "tensor storage", available=len(data) - pos - 8 * len(header.storages)
    )  # 8: size field
    ctx.charge(total, "tensor storage")
    if (
        len(header.storages) == 1
        and header.storages[0][0].name in _STORAGE_DTYPES
        and _plain_legacy_head(data, heads, (keys_at, pos), inner)
    ):
        return _single_storage(data, pos, *header.storages[0], inner)
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except AssertionError as exc:  # torch asserts on a key list that names a missing record
        raise inner.error(f"not a readable legacy torch.save payload: {_exc_text(exc)}") from exc
    refuse_broadcast_tensors(loaded, inner.source)
    return loaded


def refuse_broadcast_tensors(value: Any, path: str | Path, *, depth: int = 0) -> None:
    """Refuse a loaded tensor with more elements than its storage holds (a broadcast,
    stride-0 view: ``torch.save`` keeps those, and a 1-element storage could then stand for
    a map of any size), in ``value`` and the dicts, lists and tuples it holds."""
    import torch

    if depth > 64:
        return
    if isinstance(value, torch.Tensor):
        held = value.untyped_storage().nbytes() // max(1, value.element_size())
        if value.numel() > held:
            raise DataFormatError(
                path,
                f"a tensor of shape {tuple(value.shape)} has {value.numel():,} elements, more "
                f"than the {held:,} of its storage (a broadcast view); save it with "
                ".contiguous() or .clone()",
            )
    elif isinstance(value, dict):
        for item in value.values():
            refuse_broadcast_tensors(item, path, depth=depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            refuse_broadcast_tensors(item, path, depth=depth + 1)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER (legacy format)
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {  # storage class -> torch dtype name
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}  # an UntypedStorage record goes to torch.load (which refuses it: it has no dtype)


def _plain_legacy_head(
    data: Any, heads: list[tuple[int, int]], keys: tuple[int, int], ctx: _Context
) -> bool:
    """Whether a legacy ``torch.save`` payload is the plain case this module reads itself.

    Its magic number and protocol are torch's, and its key list names one storage; anything
    else goes to ``torch.load`` (which reports what is wrong).
    """

    def small(span: tuple[int, int]) -> Any:
        return _RestrictedUnpickler(
            io.BytesIO(data[span[0] : span[1]]), ctx, allow_torch=False, allow_numpy=False
        ).load()

    magic, protocol = small(heads[0]), small(heads[1])
    names = small(keys)
    return (
        type(magic) is int
        and magic == _LEGACY_MAGIC
        and type(protocol) is int
        and protocol == _LEGACY_PROTOCOL
        and type(names) is list
        and len(names) == 1
        and isinstance(names[0], str)
    )


def _single_storage(data: Any, pos: int, kind: _StorageType, numel: int, ctx: _Context) -> Any:
    """The one storage of a legacy ``torch.save`` payload, from its bytes at ``pos``.

    What ``torch.load`` builds (a typed storage of ``numel`` little-endian elements after
    an int64 element count), without its pure-Python unpickler: a copy of the bytes.
    """
    import torch

    (count,) = struct.unpack_from("<q", data, pos)
    if count != numel:
        raise ctx.error(f"tensor storage holds {count} elements where its record says {numel}")
    start = pos + 8
    raw = np.frombuffer(bytearray(data[start : start + numel * kind.itemsize]), dtype=np.uint8)
    return torch.storage.TypedStorage(
        wrap_storage=torch.from_numpy(raw).untyped_storage(),
        dtype=getattr(torch, _STORAGE_DTYPES[kind.name]),
        _internal=True,
    )
