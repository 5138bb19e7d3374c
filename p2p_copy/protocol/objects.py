"""Python objects as one stream of bytes plus a small JSON ``meta``, and back — without pickle.

A kernel sends an object to another kernel as if it were one file: ``encode_object`` gives
the bytes (in chunks, with the total size known up front) and a JSON-able ``meta`` dict for
the manifest; on the other side an ``ObjectDecoder`` built from that ``meta`` is fed the
bytes and ``finish()`` returns the object. Nothing here does I/O.

Kinds (``meta["kind"]``) and the formats of their bytes:

    bytes              the bytes themselves (``meta["type"]``: bytes or bytearray)
    str                UTF-8 text
    json               strict JSON in UTF-8: dict (str keys), list, str, int, float, bool,
                       None; no NaN or infinities, no tuples (they would come back as lists)
    numpy.ndarray      a .npy file (format 1.0, 2.0 or 3.0): header, then the raw data
                       (C order, or Fortran order for F-contiguous arrays); ``meta`` repeats
                       dtype, shape and order so the receiver checks them before allocating
    pandas.DataFrame   an Arrow IPC stream (pyarrow), whose pandas metadata restores the
                       index (RangeIndex, named, MultiIndex) and the dtypes
    arrow.Table        an Arrow IPC stream, schema and its metadata included
    arrow.RecordBatch  the same, read back as one batch

Why no pickle: unpickling runs whatever code the sender chose, so a peer (or anyone who
guessed the code) could take over the receiving kernel. Every format above is data only:
object arrays are refused, numpy is never asked to ``allow_pickle``, the .npy header is
read with ``ast.literal_eval`` (literals only, never ``eval``), Arrow streams must be
uncompressed (a small compressed body could expand to any size) and are fully validated.

The receiver checks ``meta`` before it allocates anything: a shape, dtype or size that
does not add up is a ``RemoteProtocolError``, and more than ``max_bytes`` a ``PolicyError``.
NumPy, pandas and pyarrow are imported only when an object needs them
(the ``objects`` extra: numpy, pandas, pyarrow).
"""

from __future__ import annotations

import ast
import importlib
import io
import json
import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import LocalProtocolError, PolicyError, RemoteProtocolError, UsageError
from .messages import DEFAULT_CHUNK_SIZE, MAX_FILE_SIZE

__all__ = [
    "KINDS",
    "EncodedObject",
    "ObjectDecoder",
    "encode_object",
    "decode_object",
    "object_kind",
]

KINDS: Final = (
    "bytes",
    "str",
    "json",
    "numpy.ndarray",
    "pandas.DataFrame",
    "arrow.Table",
    "arrow.RecordBatch",
)


_SUPPORTED: Final = (
    "bytes, bytearray, memoryview, str, JSON values (dict with str keys, list, int, float, "
    "bool, None), NumPy arrays and scalars (not of object dtype), pandas DataFrames, "
    "pyarrow Tables and RecordBatches"
)
_INSTALL: Final = ("install the optional dependencies of p2p-copy[objects]: "
                   "pip install numpy pandas pyarrow")

# Same limit as numpy 1.x; numpy 2 allows 64 but a peer on numpy 1.x could not build more.
_MAX_NDIM: Final = 32
# A .npy header describes one dtype; numpy itself refuses more than 10000 bytes by default.
# Ours allows very wide structured dtypes while keeping literal_eval's input small.
_MAX_NPY_HEADER: Final = 1 << 20
_MAX_DTYPE_FIELDS: Final = 10_000
_MAX_DTYPE_DEPTH: Final = 16
_NPY_MAGIC: Final = b"\x93NUMPY"
# Bool, signed, unsigned, float, complex, timedelta, datetime, bytes, str, void: all of them
# plain bytes in the array buffer. Not "O" (pointers to Python objects) nor "T" (numpy 2's
# variable-width strings, also pointers).
_PLAIN_KINDS: Final = frozenset("biufcmMSUV")
_SIMPLE_DTYPE = re.compile(r"[<>|=]?[biufcmMSUV][0-9]{1,10}(\[[0-9]{0,10}[A-Za-z]{1,3}\])?")
_JSON_SCALARS: Final = (str, int, float, bool, type(None))


def _import(name: str) -> Any:
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(f"Sending or receiving this object needs {name}: {_INSTALL}.") from exc


# ---------------------------------------------------------------------------------------
# Encoding


@dataclass(frozen=True)
class EncodedObject:
    """An object ready to send: its ``meta`` for the manifest and its bytes, in chunks."""

    #: JSON-able description: ``kind``, ``size`` and what the kind needs (dtype, shape...).
    meta: dict[str, Any]
    #: Total number of bytes ``chunks()`` yields (always known up front here).
    size: int
    _chunks: Callable[[], Iterator[memoryview]] = field(repr=False)

    def chunks(self) -> Iterator[memoryview]:
        """The bytes, in order; each call starts again from the first byte.

        Chunks are views of the object's own memory where possible, so they are valid
        only as long as the object is not modified.
        """
        return self._chunks()


def encode_object(obj: object, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> EncodedObject:
    """Describe ``obj`` and prepare its bytes; raise UsageError for unsupported objects."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _encode_bytes(obj, chunk_size)
    if type(obj) is str:
        return _encode_plain({"kind": "str", "encoding": "utf-8"}, _utf8(obj), chunk_size)
    module = type(obj).__module__.partition(".")[0]
    if isinstance(obj, (dict, list, tuple, int, float, type(None))) and module != "numpy":
        return _encode_json(obj, chunk_size)
    if module == "numpy":
        np = _import("numpy")
        if type(obj) is np.ndarray:
            return _encode_ndarray(np, obj, chunk_size, scalar=False)
        if isinstance(obj, np.generic):
            return _encode_ndarray(np, np.asarray(obj), chunk_size, scalar=True)
        if isinstance(obj, np.ndarray):
            raise UsageError(
                f"Cannot send a {type(obj).__name__} (a subclass of numpy.ndarray, such as a "
                "masked array or matrix): its extra state would be lost. Convert it with "
                "numpy.asarray() and send what it needs separately."
            )
    elif module == "pandas":
        pd = _import("pandas")
        if type(obj) is pd.DataFrame:
            return _encode_dataframe(obj, chunk_size)
    elif module == "pyarrow":
        pa = _import("pyarrow")
        if isinstance(obj, pa.Table):
            return _encode_arrow("arrow.Table", obj, chunk_size)
        if isinstance(obj, pa.RecordBatch):
            return _encode_arrow("arrow.RecordBatch", pa.Table.from_batches([obj]), chunk_size)
    raise UsageError(
        f"Cannot send an object of type {type(obj).__module__}.{type(obj).__qualname__}. "
        f"Supported: {_SUPPORTED}. Convert it to one of these (pickle is not used, on purpose)."
    )


def _views(buffer: Any, chunk_size: int) -> Iterator[memoryview]:
    """Slices of ``buffer`` of at most ``chunk_size`` bytes, without copying."""
    view = memoryview(buffer).cast("B")
    for start in range(0, len(view), chunk_size):
        yield view[start : start + chunk_size]


def _encode_plain(meta: dict[str, Any], data: bytes, chunk_size: int) -> EncodedObject:
    meta["size"] = len(data)
    return EncodedObject(meta, len(data), lambda: _views(data, chunk_size))


def _encode_bytes(obj: bytes | bytearray | memoryview, chunk_size: int) -> EncodedObject:
    view = memoryview(obj)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    view = view.cast("B")
    kind = "bytearray" if isinstance(obj, bytearray) else "bytes"
    meta: dict[str, Any] = {"kind": "bytes", "type": kind, "size": view.nbytes}
    return EncodedObject(meta, view.nbytes, lambda: _views(view, chunk_size))


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"Cannot send this str: it is not valid Unicode ({exc.reason} at index "
            f"{exc.start}). Send it as bytes instead."
        ) from exc


def _check_json(value: object, path: str) -> None:
    """Refuse what JSON would not give back exactly (tuples, non-str keys, NaN, subclasses)."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise UsageError(
                    f"Cannot send {path}: dict key {key!r} is not a str, and JSON keys are "
                    "always strings. Convert the keys to str."
                )
            _check_json(item, f"{path}[{key!r}]")
    elif kind is list:
        for index, item in enumerate(value):  # type: ignore[arg-type]
            _check_json(item, f"{path}[{index}]")
    elif kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise UsageError(
                f"Cannot send {path} = {value!r}: strict JSON has no NaN or infinity. "
                "Replace it (for example with None) or send a NumPy array."
            )
    elif kind not in _JSON_SCALARS:
        hint = " (convert tuples to lists)" if kind is tuple else ""
        raise UsageError(
            f"Cannot send {path}: a {kind.__qualname__} is not a JSON value{hint}. "
            f"Supported: {_SUPPORTED}."
        )


def _encode_json(obj: object, chunk_size: int) -> EncodedObject:
    try:
        _check_json(obj, "the value")
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError as exc:
        raise UsageError("Cannot send this value: it is nested too deeply for JSON.") from exc
    except ValueError as exc:  # an int with more digits than Python converts to text
        raise UsageError(f"Cannot send this value as JSON: {exc}") from exc
    return _encode_plain({"kind": "json"}, _utf8(text), chunk_size)


def _dtype_to_json(np: Any, dtype: Any) -> Any:
    """A JSON form of a plain-data dtype: a str like '<f8', or a dict for records/subarrays."""
    if dtype.hasobject or dtype.kind not in _PLAIN_KINDS:
        raise UsageError(
            f"Cannot send an array of dtype {dtype}: it holds Python objects or pointers, "
            "which only pickle could send. Convert it to fixed types first (numbers, "
            "fixed-width 'U'/'S' strings, datetime64)."
        )
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return {"base": _dtype_to_json(np, base), "shape": list(shape)}
    if dtype.names is not None:
        fields = []
        for name in dtype.names:
            sub, offset, *title = dtype.fields[name]
            if title and not isinstance(title[0], str):
                raise UsageError(f"Cannot send dtype {dtype}: a field title is not a str.")
            fields.append([name, _dtype_to_json(np, sub), offset, *title])
        return {"fields": fields, "itemsize": dtype.itemsize}
    return dtype.str


def _npy_header(np: Any, dtype: Any, shape: tuple[int, ...], fortran_order: bool) -> bytes:
    """A .npy header, written like numpy's writer, version 1.0 unless it does not fit."""
    try:
        descr = np.lib.format.dtype_to_descr(dtype)
    except ValueError as exc:
        raise UsageError(
            f"Cannot send an array of dtype {dtype}: its fields overlap or are out of order, "
            "which the .npy format cannot describe. Repack it first with "
            "numpy.lib.recfunctions.repack_fields()."
        ) from exc
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran_order!r}, 'shape': {shape!r}, }}"
    for version, length_format, encoding in (
        ((1, 0), "<H", "latin1"),
        ((2, 0), "<I", "latin1"),
        ((3, 0), "<I", "utf-8"),
    ):
        try:
            encoded = text.encode(encoding)
        except UnicodeEncodeError:
            continue
        prefix = 6 + 2 + struct.calcsize(length_format)
        # Pad with spaces and end with a newline so the data starts 64-byte aligned.
        padded = encoded + b" " * (-(prefix + len(encoded) + 1) % 64) + b"\n"
        if len(padded) < 1 << (8 * struct.calcsize(length_format)):
            return _NPY_MAGIC + bytes(version) + struct.pack(length_format, len(padded)) + padded
    raise UsageError("Cannot send this array: its dtype description is too large.")


def _encode_ndarray(np: Any, array: Any, chunk_size: int, *, scalar: bool) -> EncodedObject:
    dtype_json = _dtype_to_json(np, array.dtype)
    if array.flags.c_contiguous:
        fortran_order = False
    elif array.flags.f_contiguous:
        fortran_order = True
    else:
        array = np.ascontiguousarray(array)  # the one copy a strided view needs
        fortran_order = False
    # The dtype rebuilt from its JSON form: what the receiver will compare the header with,
    # without metadata (which .npy cannot hold, and numpy would warn about).
    plain_dtype = _json_to_dtype(np, dtype_json)
    header = _npy_header(np, plain_dtype, array.shape, fortran_order)
    size = len(header) + array.nbytes
    meta: dict[str, Any] = {
        "kind": "numpy.ndarray",
        "size": size,
        "dtype": dtype_json,
        "shape": list(array.shape),
        "fortran_order": fortran_order,
    }
    if scalar:
        meta["scalar"] = True

    def chunks() -> Iterator[memoryview]:
        yield from _views(header, chunk_size)
        if array.nbytes:
            yield from _views(_raw_bytes(array, fortran_order), chunk_size)

    return EncodedObject(meta, size, chunks)


def _raw_bytes(array: Any, fortran_order: bool) -> Any:
    """A flat uint8 view of a contiguous array's memory (works for datetime64 and records)."""
    flat = (array.T if fortran_order else array).reshape(-1)
    return flat.view("u1")


def _encode_dataframe(df: Any, chunk_size: int) -> EncodedObject:
    pa = _import("pyarrow")
    try:
        # preserve_index=None keeps a RangeIndex as metadata and other indexes as columns.
        table = pa.Table.from_pandas(df, preserve_index=None)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise UsageError(
            f"Cannot send this DataFrame: Arrow cannot represent it ({exc}). Columns of "
            "arbitrary Python objects need converting to plain types first."
        ) from exc
    encoded = _encode_arrow("pandas.DataFrame", table, chunk_size)
    # What the receiver rebuilds has the DataFrame's shape, not the table's (index columns).
    encoded.meta.update(num_rows=len(df), num_columns=len(df.columns))
    return encoded


def _encode_arrow(kind: str, table: Any, chunk_size: int) -> EncodedObject:
    pa = _import("pyarrow")
    options = pa.ipc.IpcWriteOptions(compression=None)
    batches = table.to_batches()
    if not batches:
        # An empty table still sends one empty batch: it carries the dictionaries
        # (a DataFrame's categories) that the schema alone does not.
        batches = [pa.record_batch([c.combine_chunks() for c in table.columns], table.schema)]
    counter = pa.MockOutputStream()
    with pa.ipc.new_stream(counter, table.schema, options=options) as writer:
        for batch in batches:
            writer.write_batch(batch)
    size = counter.size()
    meta: dict[str, Any] = {
        "kind": kind,
        "size": size,
        "num_rows": table.num_rows,
        "num_columns": table.num_columns,
    }

    def chunks() -> Iterator[memoryview]:
        sink = _Collector()
        with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema, options=options) as w:
            yield from sink.drain(chunk_size)
            for batch in batches:
                w.write_batch(batch)
                yield from sink.drain(chunk_size)
        yield from sink.drain(chunk_size)

    return EncodedObject(meta, size, chunks)


class _Collector:
    """A write-only file for pyarrow: keeps what it is given (Arrow buffers, uncopied)."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[Any] = []

    def write(self, data: Any) -> int:
        self.parts.append(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self, chunk_size: int) -> Iterator[memoryview]:
        parts, self.parts = self.parts, []
        for part in parts:
            yield from _views(part, chunk_size)


# ---------------------------------------------------------------------------------------
# Decoding


def _bad(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"The sender's object is malformed: {what}. Nothing was kept.")


def _meta_int(meta: dict[str, Any], key: str, high: int) -> int:
    value = meta.get(key)
    if type(value) is not int or not 0 <= value <= high:
        raise _bad(f"{key!r} must be an integer from 0 to {high}, not {value!r}")
    return value


def _json_to_dtype(np: Any, value: Any, depth: int = 0) -> Any:
    """The dtype a peer described, checked: plain data only, bounded, no pickle or eval."""
    if depth > _MAX_DTYPE_DEPTH:
        raise _bad("the dtype is nested too deeply")
    try:
        if type(value) is str:
            if not _SIMPLE_DTYPE.fullmatch(value):
                raise _bad(f"dtype {value!r} is not a plain numeric, string or datetime type")
            dtype = np.dtype(value)
        elif type(value) is dict and set(value) == {"base", "shape"}:
            shape = value["shape"]
            if type(shape) is not list or len(shape) > _MAX_NDIM:
                raise _bad("a subarray shape must be a short list")
            for dim in shape:
                if type(dim) is not int or not 0 <= dim <= MAX_FILE_SIZE:
                    raise _bad(f"a subarray dimension must be a non-negative integer: {dim!r}")
            base = _json_to_dtype(np, value["base"], depth + 1)
            if base.itemsize * math.prod(shape) > MAX_FILE_SIZE:
                raise _bad("a subarray dtype is too large")
            dtype = np.dtype((base, tuple(shape)))
        elif type(value) is dict and set(value) == {"fields", "itemsize"}:
            fields, itemsize = value["fields"], value["itemsize"]
            if type(itemsize) is not int or not 0 <= itemsize <= MAX_FILE_SIZE:
                raise _bad(f"a record itemsize must be a non-negative integer: {itemsize!r}")
            if type(fields) is not list or len(fields) > _MAX_DTYPE_FIELDS:
                raise _bad(f"record fields must be a list of at most {_MAX_DTYPE_FIELDS}")
            spec: dict[str, list[Any]] = {"names": [], "formats": [], "offsets": [], "titles": []}
            for item in fields:
                if type(item) is not list or len(item) not in (3, 4):
                    raise _bad("a record field must be [name, dtype, offset(, title)]")
                name, sub, offset, *title = item
                if type(name) is not str or (title and type(title[0]) is not str):
                    raise _bad("record field names and titles must be strings")
                if type(offset) is not int or not 0 <= offset <= itemsize:
                    raise _bad(f"record field offset {offset!r} is outside the record")
                sub_dtype = _json_to_dtype(np, sub, depth + 1)
                if offset + sub_dtype.itemsize > itemsize:
                    raise _bad(f"record field {name!r} runs past the end of the record")
                spec["names"].append(name)
                spec["formats"].append(sub_dtype)
                spec["offsets"].append(offset)
                spec["titles"].append(title[0] if title else None)
            dtype = np.dtype({**spec, "itemsize": itemsize})
        else:
            raise _bad(f"unknown dtype description {value!r:.200}")
    except (TypeError, ValueError, OverflowError) as exc:
        raise _bad(f"numpy rejects the dtype ({exc})") from exc
    if dtype.hasobject or dtype.kind not in _PLAIN_KINDS:
        raise _bad(f"dtype {dtype} would hold Python objects")
    return dtype


@dataclass(frozen=True)
class _ArraySpec:
    dtype: Any
    shape: tuple[int, ...]
    fortran_order: bool
    nbytes: int
    scalar: bool


def _array_spec(np: Any, meta: dict[str, Any], size: int) -> _ArraySpec:
    dtype = _json_to_dtype(np, meta["dtype"])
    if dtype.subdtype is not None:
        raise _bad("an array's own dtype cannot be a subarray (numpy folds it into the shape)")
    shape = meta["shape"]
    if type(shape) is not list or len(shape) > _MAX_NDIM:
        raise _bad(f"the shape must be a list of at most {_MAX_NDIM} dimensions")
    for dim in shape:
        if type(dim) is not int or not 0 <= dim <= MAX_FILE_SIZE:
            raise _bad(f"the dimension {dim!r} is not a non-negative integer")
    count = math.prod(shape)
    if count > MAX_FILE_SIZE:
        raise _bad(f"the shape {shape} has too many elements")
    fortran_order = meta["fortran_order"]
    scalar = meta.get("scalar", False)
    if type(fortran_order) is not bool or type(scalar) is not bool:
        raise _bad("'fortran_order' and 'scalar' must be true or false")
    if scalar and shape:
        raise _bad("a scalar must have the shape []")
    if dtype.itemsize == 0 and count:
        # S0/U0/V0 or an empty record: numpy still allocates at least one byte per element,
        # so a huge shape of zero-size elements would pass the size check.
        raise _bad("elements of zero bytes (S0, U0, V0, empty records) are not accepted")
    nbytes = count * dtype.itemsize
    if nbytes > size:
        raise _bad(f"the array needs {nbytes} bytes but only {size} are announced")
    return _ArraySpec(dtype, tuple(shape), fortran_order, nbytes, scalar)


_KEYS: Final = {
    "bytes": ({"kind", "size", "type"}, set()),
    "str": ({"kind", "size", "encoding"}, set()),
    "json": ({"kind", "size"}, set()),
    "numpy.ndarray": ({"kind", "size", "dtype", "shape", "fortran_order"}, {"scalar"}),
    "pandas.DataFrame": ({"kind", "size", "num_rows", "num_columns"}, set()),
    "arrow.Table": ({"kind", "size", "num_rows", "num_columns"}, set()),
    "arrow.RecordBatch": ({"kind", "size", "num_rows", "num_columns"}, set()),
}


def object_kind(meta: dict[str, Any]) -> str:
    """The kind a peer's description names; RemoteProtocolError unless it is one of KINDS."""
    kind = meta.get("kind")
    # Checked for type first: a list or an object is no kind, and cannot be looked up.
    if type(kind) is not str or kind not in _KEYS:
        raise _bad(f"unknown kind {kind!r:.100} (this p2p-copy knows {', '.join(KINDS)})")
    return kind


class ObjectDecoder:
    """Rebuilds an object from its ``meta`` and its bytes, fed in any split.

    The constructor checks ``meta`` and refuses (RemoteProtocolError, PolicyError) before
    anything is allocated; ``feed`` refuses bytes beyond the announced size; ``finish``
    refuses a body that is short or does not parse. ``max_bytes`` caps the size of the
    body, which is what is held in memory (a DataFrame of strings may grow once rebuilt).
    """

    def __init__(self, meta: object, *, max_bytes: int | None = None) -> None:
        if type(meta) is not dict:
            raise _bad("the description is not a JSON object")
        kind = object_kind(meta)
        required, optional = _KEYS[kind]
        if not required <= meta.keys() <= required | optional:
            raise _bad(f"a {kind} is described by {sorted(required)}, not {sorted(meta)}")
        self.kind: str = kind
        self.meta: dict[str, Any] = meta
        #: Bytes the body has, as announced; ``received`` counts those fed so far.
        self.size: int = _meta_int(meta, "size", MAX_FILE_SIZE)
        self.received = 0
        self._finished = False
        if max_bytes is not None and self.size > max_bytes:
            raise PolicyError(
                f"The sender offers a {kind} of {self.size} bytes, more than the limit of "
                f"{max_bytes} bytes set here. Ask for something smaller or raise the limit."
            )
        if kind == "bytes" and meta["type"] not in ("bytes", "bytearray"):
            raise _bad(f"bytes of type {meta['type']!r:.100}")
        if kind == "str" and meta["encoding"] != "utf-8":
            raise _bad(f"text encoding {meta['encoding']!r:.100} (only utf-8 is used)")
        if kind.startswith(("pandas.", "arrow.")):
            _meta_int(meta, "num_rows", MAX_FILE_SIZE)
            _meta_int(meta, "num_columns", MAX_FILE_SIZE)
            if kind.startswith("pandas."):
                _import("pandas")
            _import("pyarrow")
        self._buffer = io.BytesIO()
        self._array: Any = None
        self._array_view: Any = None
        self._array_received = 0
        self._spec: _ArraySpec | None = None
        if kind == "numpy.ndarray":
            self._np = _import("numpy")
            self._spec = _array_spec(self._np, meta, self.size)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the body."""
        if self._finished:
            raise LocalProtocolError("ObjectDecoder.feed() after finish()")
        view = memoryview(data).cast("B")
        if self.received + len(view) > self.size:
            raise _bad(f"more than the {self.size} bytes announced arrived")
        self.received += len(view)
        if self._spec is None:
            self._buffer.write(view)
            return
        # Buffer the .npy header only (a few bytes at a time until its length is known),
        # so that the data goes straight into the array, whatever the split.
        while self._array is None and (wanted := self._header_wanted(self._spec)) and view:
            self._buffer.write(view[:wanted])
            view = view[wanted:]
        if view:
            self._write_array(view)

    def _header_wanted(self, spec: _ArraySpec) -> int:
        """How many more header bytes to buffer; allocates the array once all are here."""
        head = self._buffer.getbuffer()
        try:
            if len(head) < 8:
                return 8 - len(head)
            if bytes(head[:6]) != _NPY_MAGIC or head[6] not in (1, 2, 3) or head[7] != 0:
                raise _bad("the array does not start with a .npy header (version 1, 2 or 3)")
            length_format = "<H" if head[6] == 1 else "<I"
            start = 8 + struct.calcsize(length_format)
            if len(head) < start:
                return start - len(head)
            header_length = int(struct.unpack_from(length_format, head, 8)[0])
            if header_length > _MAX_NPY_HEADER:
                raise _bad(f"the .npy header is longer than {_MAX_NPY_HEADER} bytes")
            end = start + header_length
            if end + spec.nbytes != self.size:
                raise _bad(
                    f"the .npy header and data take {end + spec.nbytes} bytes, "
                    f"but {self.size} are announced"
                )
            if len(head) < end:
                return end - len(head)
            self._check_npy_header(bytes(head[start:end]), head[6], spec)
        finally:
            head.release()
        self._buffer = io.BytesIO()
        order = "F" if spec.fortran_order else "C"
        self._array = self._np.empty(spec.shape, spec.dtype, order=order)
        self._array_view = _raw_bytes(self._array, spec.fortran_order) if spec.nbytes else None
        return 0

    def _write_array(self, view: memoryview) -> None:
        start = self._array_received
        self._array_view[start : start + len(view)] = self._np.frombuffer(view, "u1")
        self._array_received += len(view)

    def _check_npy_header(self, raw: bytes, version: int, spec: _ArraySpec) -> None:
        try:
            text = raw.decode("utf-8" if version == 3 else "latin1")
            # literal_eval builds literals only; it never runs code.
            header = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as exc:
            raise _bad(f"the .npy header does not parse ({exc})") from exc
        if type(header) is not dict or set(header) != {"descr", "fortran_order", "shape"}:
            raise _bad("the .npy header must hold exactly descr, fortran_order and shape")
        if header["shape"] != spec.shape or header["fortran_order"] is not spec.fortran_order:
            raise _bad("the .npy header's shape or order differs from the description")
        try:
            dtype = self._np.lib.format.descr_to_dtype(header["descr"])
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise _bad(f"the .npy header's dtype does not parse ({exc})") from exc
        if dtype != spec.dtype:
            raise _bad(f"the .npy header's dtype {dtype} differs from {spec.dtype}")

    def finish(self) -> object:
        """The object, once every announced byte has been fed."""
        if self._finished:
            raise LocalProtocolError("ObjectDecoder.finish() called twice")
        self._finished = True
        if self.received != self.size:
            raise _bad(f"only {self.received} of the {self.size} bytes announced arrived")
        if self._spec is not None:
            if self._array is None:
                raise _bad("the .npy header is incomplete")
            array = self._array
            self._array = self._array_view = None
            return array[()] if self._spec.scalar else array
        data = self._buffer.getvalue()  # no copy: BytesIO hands over its buffer
        self._buffer = io.BytesIO()
        if self.kind == "bytes":
            return bytearray(data) if self.meta["type"] == "bytearray" else data
        if self.kind == "str":
            return _from_utf8(data)
        if self.kind == "json":
            return _from_json(data)
        return self._finish_arrow(data)

    def _finish_arrow(self, data: bytes) -> object:
        pa = _import("pyarrow")
        buffer = pa.py_buffer(data)
        _check_arrow_messages(pa, buffer)
        try:
            table = pa.ipc.open_stream(buffer).read_all()
            table.validate(full=True)
        except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
            raise _bad(f"the Arrow stream does not read ({exc})") from exc
        if self.kind == "arrow.Table":
            result: Any = table
        elif self.kind == "arrow.RecordBatch":
            batches = table.combine_chunks().to_batches()
            result = batches[0] if batches else pa.RecordBatch.from_pylist([], table.schema)
        else:
            try:
                result = table.to_pandas()
            except Exception as exc:  # pandas metadata can fail in many ways; all are the peer's
                raise _bad(f"pandas cannot rebuild the DataFrame ({exc})") from exc
        rows = len(result) if self.kind == "pandas.DataFrame" else result.num_rows
        columns = len(result.columns) if self.kind == "pandas.DataFrame" else result.num_columns
        if (rows, columns) != (self.meta["num_rows"], self.meta["num_columns"]):
            raise _bad(f"the data has {rows} rows and {columns} columns, not as described")
        return result


def decode_object(
    meta: object, data: bytes | bytearray | memoryview, *, max_bytes: int | None = None
) -> object:
    """The object from its ``meta`` and its whole body at once."""
    decoder = ObjectDecoder(meta, max_bytes=max_bytes)
    decoder.feed(data)
    return decoder.finish()


def _from_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"the text is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("an object has the same key twice")
    return result


def _from_json(data: bytes) -> object:
    try:
        return json.loads(
            _from_utf8(data), parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
        )
    except (ValueError, RecursionError) as exc:
        raise _bad(f"the JSON value does not parse ({exc})") from exc


# Arrow IPC messages carry flatbuffer metadata (Message.fbs). Only two facts are read
# here: the message type, and whether a record batch's body is compressed. A compressed
# body would make Arrow allocate whatever uncompressed size the sender claims.
_ARROW_SCHEMA, _ARROW_DICTIONARY, _ARROW_RECORD_BATCH = 1, 2, 3


def _fb_field(buf: bytes, table: int, index: int) -> int | None:
    """Where field ``index`` of the flatbuffer table at ``table`` is, or None if absent."""
    vtable = table - _fb_unpack(buf, "<i", table)
    vtable_size = _fb_unpack(buf, "<H", vtable)
    entry = 4 + 2 * index
    if entry + 2 > vtable_size:
        return None
    offset = _fb_unpack(buf, "<H", vtable + entry)
    return table + offset if offset else None


def _fb_unpack(buf: bytes, fmt: str, position: int) -> int:
    if not 0 <= position <= len(buf) - struct.calcsize(fmt):
        raise _bad("an Arrow message header points outside itself")
    value: int = struct.unpack_from(fmt, buf, position)[0]
    return value


def _fb_table(buf: bytes, table: int, index: int) -> int | None:
    position = _fb_field(buf, table, index)
    return None if position is None else position + _fb_unpack(buf, "<I", position)


def _check_arrow_messages(pa: Any, buffer: Any) -> None:
    """Refuse an Arrow stream with compressed bodies, non-table messages or trailing bytes."""
    source = pa.BufferReader(buffer)
    try:
        for message in pa.ipc.MessageReader.open_stream(source):
            meta = message.metadata.to_pybytes()
            root = _fb_unpack(meta, "<I", 0)
            kind_at = _fb_field(meta, root, 1)
            kind = 0 if kind_at is None else _fb_unpack(meta, "<B", kind_at)
            if kind not in (_ARROW_SCHEMA, _ARROW_DICTIONARY, _ARROW_RECORD_BATCH):
                raise _bad(f"an Arrow message of type {kind} is not part of a table")
            batch = _fb_table(meta, root, 2)
            if kind == _ARROW_DICTIONARY and batch is not None:
                batch = _fb_table(meta, batch, 1)
            if kind != _ARROW_SCHEMA and batch is not None and _fb_field(meta, batch, 3):
                raise _bad("the Arrow stream is compressed; p2p-copy sends it uncompressed")
    except (pa.ArrowException, OSError) as exc:
        raise _bad(f"the Arrow stream does not read ({exc})") from exc
    if source.tell() != buffer.size:
        raise _bad("bytes follow the end of the Arrow stream")
