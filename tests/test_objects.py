"""Object codecs: exact round trips, any chunk split, and refusal of hostile descriptions."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import tracemalloc
from typing import Any

import pytest

from p2p_copy.errors import LocalProtocolError, PolicyError, RemoteProtocolError, UsageError
from p2p_copy.protocol.objects import EncodedObject, ObjectDecoder, decode_object, encode_object

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")


def body_of(encoded: EncodedObject) -> bytes:
    return b"".join(bytes(chunk) for chunk in encoded.chunks())


def feed_randomly(meta: dict[str, Any], body: bytes, seed: int, **kwargs: Any) -> object:
    """Decode ``body`` fed in random splits, empty pieces included."""
    rng = random.Random(seed)
    decoder = ObjectDecoder(json.loads(json.dumps(meta)), **kwargs)
    position = 0
    while position < len(body):
        step = rng.choice([0, 1, 2, 3, 7, 64, 1000, rng.randrange(1, len(body) + 1)])
        decoder.feed(memoryview(body)[position : position + step])
        position += step
    return decoder.finish()


def round_trip(obj: object, *, chunk_size: int = 97) -> object:
    """Encode, check meta is JSON and the size is right, decode in several random splits."""
    encoded = encode_object(obj, chunk_size=chunk_size)
    assert json.loads(json.dumps(encoded.meta, allow_nan=False)) == encoded.meta
    body = body_of(encoded)
    assert len(body) == encoded.size == encoded.meta["size"]
    assert all(len(chunk) <= chunk_size for chunk in encoded.chunks())
    results = [feed_randomly(encoded.meta, body, seed) for seed in range(3)]
    results.append(decode_object(encoded.meta, body))
    return results[0]


def assert_same_array(sent: Any, received: Any) -> None:
    assert type(received) is np.ndarray
    assert received.dtype == sent.dtype
    assert received.shape == sent.shape
    assert received.tobytes() == sent.tobytes()
    assert np.array_equal(received, sent, equal_nan=sent.dtype.kind in "fc")


# --- bytes, str, JSON ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [b"", b"\x00", b"hello", bytes(range(256)) * 50, bytearray(b""), bytearray(b"ab")]
)
def test_bytes_round_trip(value):
    """bytes and bytearray come back equal and of the same type."""
    result = round_trip(value)
    assert type(result) is type(value)
    assert result == value


def test_memoryview_is_sent_as_bytes():
    """A memoryview, even strided or multi-dimensional, arrives as the bytes it shows."""
    data = bytes(range(100))
    assert round_trip(memoryview(data)[::3]) == data[::3]
    array = np.arange(12, dtype="<i4").reshape(3, 4)
    assert round_trip(memoryview(array)) == array.tobytes()


def test_bytes_chunks_are_views():
    """Chunks of a bytes object share its memory rather than copying it."""
    data = bytearray(b"x" * 1000)
    first = next(encode_object(data, chunk_size=100).chunks())
    data[0:1] = b"y"
    assert bytes(first[:1]) == b"y"


@pytest.mark.parametrize(
    "text", ["", "plain", "héllo wörld", "日本語", "emoji 🎉\U0010ffff", "\x00"]
)
def test_str_round_trip(text):
    """Text, including non-ASCII and empty, comes back identical."""
    result = round_trip(text, chunk_size=1)
    assert type(result) is str
    assert result == text


def test_str_with_lone_surrogate_is_refused():
    """A str that is not valid Unicode cannot be sent as UTF-8."""
    with pytest.raises(UsageError, match="not valid Unicode"):
        encode_object("a\ud800b")


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**70),
        1.5,
        -0.0,
        1e308,
        [],
        {},
        [1, "two", 3.0, None, [True, {"x": []}]],
        {"nested": {"é": [1, 2, {"": None}]}, "n": 10**20},
    ],
)
def test_json_round_trip(value):
    """JSON values come back equal, with the same types (int stays int, float stays float)."""
    result = round_trip(value, chunk_size=3)
    assert result == value
    assert json.dumps(result) == json.dumps(value)
    if isinstance(value, float):
        assert type(result) is float and str(result) == str(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "NaN"),
        ([1, float("inf")], "NaN or infinity"),
        ((1, 2), "tuples to lists"),
        ({1: "a"}, "not a str"),
        ({"a": {2, 3}}, "set"),
        ([np.float64(1.0)], "float64"),
        (object(), "Supported"),
    ],
)
def test_json_refuses_what_would_not_come_back(value, message):
    """Values JSON would alter or cannot hold are refused with a UsageError naming the cause."""
    with pytest.raises(UsageError, match=message):
        encode_object(value)


def test_json_nested_too_deeply_is_refused():
    """A value nested beyond the recursion limit is a UsageError, not a crash."""
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(UsageError, match="nested too deeply"):
        encode_object(value)


@pytest.mark.parametrize(
    "body", [b"NaN", b"[Infinity]", b'{"a":1,"a":2}', b"[1,", b"\xff", b"[" * 100_000]
)
def test_json_decoder_refuses_non_strict_json(body):
    """A JSON body with NaN, duplicate keys, bad UTF-8 or broken syntax is refused."""
    with pytest.raises(RemoteProtocolError):
        decode_object({"kind": "json", "size": len(body)}, body)


def test_invalid_utf8_text_is_refused():
    """A str body that is not UTF-8 is refused."""
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        decode_object({"kind": "str", "encoding": "utf-8", "size": 2}, b"\xc3\x28")


def test_unsupported_type_names_the_supported_ones():
    """An unsupported object is a UsageError listing what can be sent."""
    with pytest.raises(UsageError, match="Supported: bytes.*NumPy arrays.*pandas DataFrames"):
        encode_object({1, 2})


# --- NumPy -----------------------------------------------------------------------------

DTYPES = [
    "?",
    "i1",
    "<i2",
    ">i4",
    "<i8",
    "u1",
    ">u2",
    "<u4",
    "u8",
    "<f2",
    ">f4",
    "<f8",
    ">f8",
    "<c8",
    ">c16",
    "<M8[ns]",
    ">M8[D]",
    "<m8[us]",
    "<U7",
    ">U1",
    "S5",
    "V3",
    [("a", "<i4"), ("b", ">f8", (2, 3)), ("c", "S3"), ("d", [("x", "u1"), ("y", "<M8[s]")])],
    np.dtype([("a", "u1"), ("b", "<i8")], align=True),
    np.dtype({"names": ["p", "q"], "formats": ["<i2", "<i2"], "offsets": [0, 4], "itemsize": 9}),
    np.dtype("<f8", metadata={"unit": "m"}),
    np.dtype([(("title of a", "a"), "<i4"), ("é", "<f4")]),
]


def sample(dtype: Any, shape: tuple[int, ...]) -> Any:
    """An array whose bytes are all set (random), valid for any plain dtype."""
    dtype = np.dtype(dtype)
    raw = np.random.default_rng(5).integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize)
    array = np.frombuffer(raw.astype("u1").tobytes(), dtype=dtype).reshape(shape).copy()
    if dtype.kind == "U":  # random bytes are not valid code points
        array = np.full(shape, "xé🎉"[: dtype.itemsize // 4], dtype=dtype)
    if dtype.kind == "?":
        array = (raw[: array.size] % 2 == 0).reshape(shape)
    return array


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (2, 0, 3), (2, 3, 1, 2)], ids=str)
def test_array_round_trip(dtype, shape):
    """Arrays of every plain dtype and shape come back with identical dtype, shape and bytes."""
    array = sample(dtype, shape)
    assert_same_array(array, round_trip(array, chunk_size=5))


@pytest.mark.parametrize("dtype", ["<f8", ">i2", "<U3", [("a", "<i4"), ("b", "S2")]], ids=str)
def test_fortran_and_strided_arrays_round_trip(dtype):
    """F-ordered arrays stay F-ordered; strided views arrive equal (copied once to send)."""
    base = sample(dtype, (6, 8))
    fortran = np.asfortranarray(base)
    result = round_trip(fortran)
    assert_same_array(fortran, result)
    assert result.flags.f_contiguous and not result.flags.c_contiguous
    for view in (base[::2, 1::3], base.T[::-1], base[:, 3]):
        assert_same_array(np.ascontiguousarray(view), round_trip(view))


def test_body_is_a_npy_file():
    """The bytes are a .npy file that numpy.load reads without allow_pickle."""
    for array in (
        sample(">f4", (3, 2)),
        np.asfortranarray(sample("<i8", (3, 2))),
        sample([("ünïcode", "<i4")], (4,)),
        sample("<M8[ns]", ()),
    ):
        loaded = np.load(io.BytesIO(body_of(encode_object(array))), allow_pickle=False)
        assert_same_array(array, loaded)


def test_array_chunks_share_the_array_memory():
    """A C-contiguous array is sent from its own buffer, not a copy."""
    array = np.arange(100_000, dtype="<f8")
    chunks = list(encode_object(array, chunk_size=4096).chunks())
    assert np.shares_memory(np.frombuffer(chunks[1], dtype="u1"), array)


@pytest.mark.parametrize("scalar", [np.float32(2.5), np.int64(-3), np.bool_(True), np.str_("hé")])
def test_numpy_scalar_round_trip(scalar):
    """A NumPy scalar comes back as a scalar of the same type and value."""
    result = round_trip(scalar)
    assert type(result) is type(scalar)
    assert result == scalar


@pytest.mark.parametrize(
    "array",
    [
        np.array([1, "a", None], dtype=object),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "O")]),
        *([np.array(["x", "y"], dtype=np.dtypes.StringDType())] if np.__version__ >= "2" else []),
    ],
    ids=["object", "record-with-object", "StringDType"][: 3 if np.__version__ >= "2" else 2],
)
def test_object_arrays_are_refused(array):
    """Arrays holding Python objects or pointers are refused: only pickle could send them."""
    with pytest.raises(UsageError, match="only pickle could send"):
        encode_object(array)


def test_out_of_order_fields_are_refused():
    """A record dtype with out-of-order fields, which .npy cannot describe, is refused."""
    dtype = np.dtype({"names": ["p", "q"], "formats": ["<i2", "<i2"], "offsets": [4, 0]})
    with pytest.raises(UsageError, match="repack_fields"):
        encode_object(np.zeros(3, dtype))


def test_ndarray_subclasses_are_refused():
    """A masked array is refused rather than silently losing its mask."""
    with pytest.raises(UsageError, match="numpy.asarray"):
        encode_object(np.ma.masked_array([1, 2], mask=[0, 1]))


@pytest.mark.slow
def test_large_array_peak_memory_stays_below_twice_its_size():
    """A 200 MB array round-trips with one receiving buffer: peak well below 2x extra."""
    array = np.arange(25_000_000, dtype="<f8")  # 200 MB
    tracemalloc.start()
    try:
        encoded = encode_object(array)
        decoder = ObjectDecoder(encoded.meta, max_bytes=encoded.size)
        for chunk in encoded.chunks():
            decoder.feed(chunk)
        result = decoder.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.3 * array.nbytes
    assert result.nbytes == array.nbytes
    assert np.array_equal(result, array)


# --- pandas ----------------------------------------------------------------------------


def frames() -> list[Any]:
    n = 6
    base = pd.DataFrame(
        {
            "int": np.arange(n, dtype="i8"),
            "float": np.linspace(0, 1, n),
            "bool": [True, False] * 3,
            "str": ["a", "é", None, "日本", "", "z"],
            "cat": pd.Categorical(["x", "y", "x", None, "y", "x"]),
            "ordered": pd.Categorical(list("abcabc"), categories=list("cba"), ordered=True),
            "when": pd.date_range("2024-01-01", periods=n, freq="h"),
            "when_tz": pd.date_range("2024-03-30", periods=n, freq="12h", tz="Europe/Paris"),
            "delta": pd.to_timedelta(np.arange(n), unit="s"),
            "nullable": pd.array([1, None, 3, None, 5, 6], dtype="Int64"),
            "nullable_bool": pd.array([True, None, False, True, None, False], dtype="boolean"),
            "u8": np.arange(n, dtype="u1"),
        }
    )
    named = base.set_index(pd.Index(list("pqrstu"), name="key"))
    multi = base.set_index(["str", "int"])
    columns = pd.DataFrame(
        np.arange(12).reshape(3, 4),
        columns=pd.MultiIndex.from_product([["a", "b"], ["x", "y"]], names=["l1", "l2"]),
    )
    return [
        base,
        base.set_index(pd.RangeIndex(10, 22, 2, name="r")),
        named,
        multi,
        columns,
        pd.DataFrame({0: [1.5], 1: ["x"]}),
        pd.DataFrame(),
        base.iloc[:0],
    ]


@pytest.mark.parametrize("index", range(len(frames())))
def test_dataframe_round_trip(index):
    """DataFrames come back equal: index (range, named, multi), dtypes, categories, tz, nulls."""
    df = frames()[index]
    result = round_trip(df, chunk_size=333)
    pd.testing.assert_frame_equal(result, df, check_exact=True)
    if isinstance(df.index, pd.RangeIndex):
        assert isinstance(result.index, pd.RangeIndex)


def test_dataframe_of_python_objects_is_refused():
    """A column of arbitrary Python objects is refused, not pickled."""
    df = pd.DataFrame({"a": [object(), object()]})
    with pytest.raises(UsageError, match="Arrow cannot represent"):
        encode_object(df)


# --- Arrow -----------------------------------------------------------------------------


def test_arrow_table_round_trip():
    """An Arrow table comes back equal, schema and field metadata included, across chunks."""
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False, metadata={"unit": "count"}),
            pa.field("name", pa.string()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("point", pa.struct([("x", pa.float32()), ("y", pa.float32())])),
            pa.field("kind", pa.dictionary(pa.int8(), pa.string())),
            pa.field("blob", pa.large_binary()),
        ],
        metadata={"source": "test", "é": "ü"},
    )
    part = {
        "id": [1, 2, 3],
        "name": ["a", None, "c"],
        "tags": [["x"], [], None],
        "point": [{"x": 1.0, "y": 2.0}, None, {"x": 0.5, "y": -1.0}],
        "kind": ["p", "q", "p"],
        "blob": [b"\x00", b"", None],
    }
    table = pa.concat_tables([pa.Table.from_pydict(part, schema=schema)] * 3)
    result = round_trip(table, chunk_size=50)
    assert result.schema.equals(table.schema, check_metadata=True)
    assert result.equals(table, check_metadata=True)
    empty = round_trip(schema.empty_table())
    assert empty.num_rows == 0 and empty.schema.equals(schema, check_metadata=True)


def test_arrow_record_batch_round_trip():
    """A RecordBatch comes back as a RecordBatch, even an empty one."""
    batch = pa.record_batch({"a": [1, 2], "b": ["x", "y"]}, metadata={"k": "v"})
    result = round_trip(batch)
    assert isinstance(result, pa.RecordBatch)
    assert result.equals(batch, check_metadata=True)
    empty = round_trip(batch.slice(0, 0))
    assert isinstance(empty, pa.RecordBatch) and empty.num_rows == 0
    assert empty.schema.equals(batch.schema, check_metadata=True)


def arrow_stream(table: Any, **options: Any) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def arrow_meta(body: bytes, rows: int = 3, kind: str = "arrow.Table") -> dict[str, Any]:
    return {"kind": kind, "size": len(body), "num_rows": rows, "num_columns": 1}


def test_compressed_arrow_stream_is_refused():
    """A compressed body (a possible decompression bomb) is refused before it is expanded."""
    table = pa.table({"a": pa.array(["x" * 100] * 3)})
    body = arrow_stream(table, compression="zstd")
    with pytest.raises(RemoteProtocolError, match="compressed"):
        decode_object(arrow_meta(body), body)
    plain = arrow_stream(table)
    assert decode_object(arrow_meta(plain), plain).equals(table)


def test_arrow_stream_with_trailing_or_corrupt_bytes_is_refused():
    """Bytes after the end of the stream, or a corrupted stream, are refused."""
    body = arrow_stream(pa.table({"a": [1, 2, 3]}))
    with pytest.raises(RemoteProtocolError, match="follow the end"):
        decode_object(arrow_meta(body + b"junk"), body + b"junk")
    for corrupt in (b"\xff" * 64, body[:-20] + b"\x00" * 20, b"not arrow at all"):
        with pytest.raises(RemoteProtocolError):
            decode_object(arrow_meta(corrupt), corrupt)


def test_arrow_shape_must_match_the_description():
    """A table whose rows differ from what meta announced is refused."""
    body = arrow_stream(pa.table({"a": [1, 2, 3]}))
    with pytest.raises(RemoteProtocolError, match="rows"):
        decode_object(arrow_meta(body, rows=4), body)


def test_invalid_arrow_data_is_refused_by_full_validation():
    """String offsets pointing outside the data are caught by full validation."""
    body = arrow_stream(pa.table({"s": ["abc", "defgh"]}))
    offsets = np.array([0, 3, 8], dtype="<i4").tobytes()
    assert body.count(offsets) == 1
    body = body.replace(offsets, np.array([0, 3, 1000], dtype="<i4").tobytes())
    with pytest.raises(RemoteProtocolError, match="does not read"):
        decode_object(arrow_meta(body, rows=2), body)


# --- hostile descriptions and bodies ---------------------------------------------------

ARRAY = {
    "kind": "numpy.ndarray",
    "size": 1000,
    "dtype": "<f8",
    "shape": [10],
    "fortran_order": False,
}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("not a dict", "not a JSON object"),
        ({"kind": "pickle", "size": 1}, "unknown kind"),
        ({"kind": "bytes", "size": 1}, "described by"),
        ({"kind": "bytes", "size": 1, "type": "bytes", "extra": 1}, "described by"),
        ({"kind": "bytes", "size": -1, "type": "bytes"}, "'size'"),
        ({"kind": "bytes", "size": 2**60, "type": "bytes"}, "'size'"),
        ({"kind": "bytes", "size": True, "type": "bytes"}, "'size'"),
        ({"kind": "bytes", "size": 1.0, "type": "bytes"}, "'size'"),
        ({"kind": "bytes", "size": 1, "type": "list"}, "type"),
        ({"kind": "str", "size": 1, "encoding": "latin1"}, "encoding"),
        ({"kind": "arrow.Table", "size": 1, "num_rows": -1, "num_columns": 1}, "num_rows"),
        ({**ARRAY, "dtype": "O"}, "not a plain"),
        ({**ARRAY, "dtype": "|O"}, "not a plain"),
        ({**ARRAY, "dtype": "T"}, "not a plain"),
        ({**ARRAY, "dtype": "numpy.core.multiarray._reconstruct"}, "not a plain"),
        ({**ARRAY, "dtype": ["<f8"]}, "unknown dtype"),
        ({**ARRAY, "dtype": {"fields": [["a", "O", 0]], "itemsize": 8}}, "not a plain"),
        ({**ARRAY, "dtype": {"fields": [["a", "<f8", 4]], "itemsize": 8}}, "runs past"),
        ({**ARRAY, "dtype": {"fields": [["a", "<f8", -1]], "itemsize": 8}}, "outside"),
        ({**ARRAY, "dtype": {"fields": [["a", "<f8"]], "itemsize": 8}}, "record field"),
        ({**ARRAY, "dtype": {"fields": [[1, "<f8", 0]], "itemsize": 8}}, "names"),
        (
            {**ARRAY, "dtype": {"fields": [["a", "<i4", 0], ["a", "<i4", 4]], "itemsize": 8}},
            "rejects",
        ),
        ({**ARRAY, "dtype": {"base": "<f8", "shape": [-1]}}, "subarray dimension"),
        ({**ARRAY, "dtype": {"base": "<f8", "shape": [2]}}, "subarray"),
        ({**ARRAY, "dtype": {"base": "<f8", "shape": [2**40, 2**40]}}, "too large"),
        ({**ARRAY, "shape": [-1]}, "non-negative"),
        ({**ARRAY, "shape": [1.5]}, "non-negative"),
        ({**ARRAY, "shape": [2**31] * 3}, "too many elements"),
        ({**ARRAY, "shape": [1] * 33}, "dimensions"),
        ({**ARRAY, "shape": "10"}, "list"),
        ({**ARRAY, "shape": [1000]}, "needs 8000 bytes"),
        ({**ARRAY, "dtype": "<U99999999"}, "needs"),
        ({**ARRAY, "fortran_order": 0}, "fortran_order"),
        ({**ARRAY, "scalar": True}, "scalar"),
    ],
)
def test_hostile_meta_is_refused_before_allocating(meta, message):
    """A description that is malformed, asks for objects, or does not add up is refused."""
    with pytest.raises(RemoteProtocolError, match=message):
        ObjectDecoder(meta)


def test_deeply_nested_dtype_is_refused():
    """A dtype nested many levels deep is refused without recursing without bound."""
    dtype: Any = "<i4"
    for _ in range(1000):
        dtype = {"fields": [["a", dtype, 0]], "itemsize": 4}
    with pytest.raises(RemoteProtocolError, match="nested too deeply"):
        ObjectDecoder({**ARRAY, "dtype": dtype, "shape": [1], "size": 200})


def test_max_bytes_is_a_policy_error():
    """An object larger than max_bytes is refused up front, whatever its kind."""
    for obj in (b"x" * 100, np.zeros(100), "y" * 100, pa.table({"a": list(range(100))})):
        encoded = encode_object(obj)
        with pytest.raises(PolicyError, match="limit"):
            ObjectDecoder(encoded.meta, max_bytes=encoded.size - 1)
        ObjectDecoder(encoded.meta, max_bytes=encoded.size)


@pytest.mark.parametrize("obj", [b"abc", "héllo", [1, 2], np.arange(5), pa.table({"a": [1]})])
def test_truncated_and_overlong_bodies_are_refused(obj):
    """A body shorter than announced fails at finish; a longer one at the extra byte."""
    encoded = encode_object(obj)
    body = body_of(encoded)
    short = ObjectDecoder(encoded.meta)
    short.feed(body[:-1])
    with pytest.raises(RemoteProtocolError, match="arrived"):
        short.finish()
    long = ObjectDecoder(encoded.meta)
    long.feed(body)
    with pytest.raises(RemoteProtocolError, match="more than"):
        long.feed(b"\x00")


def test_decoder_misuse_is_a_local_error():
    """Feeding after finish, or finishing twice, is our own bug."""
    decoder = ObjectDecoder({"kind": "bytes", "type": "bytes", "size": 0})
    assert decoder.finish() == b""
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"")
    with pytest.raises(LocalProtocolError):
        decoder.finish()


def npy(header: str, version: int = 1, data: bytes = b"\0" * 80) -> bytes:
    raw = header.encode("latin1")
    length = len(raw).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + length + raw + data


def header(descr: str = "'<f8'", order: str = "False", shape: str = "(10,)", more: str = "") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, {more}}}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"PK\x03\x04" + b"\x00" * 200, "does not start"),
        (npy(header(), data=b""), "take"),
        (npy(header(shape="(9,)")), "shape"),
        (npy(header(descr="'<i8'")), "int64"),
        (npy(header(descr="'|O'")), "object"),
        (npy(header(order="True")), "order"),
        (npy("__import__('os').system('true')"), "does not parse"),
        (npy(header(more="'x': 1")), "exactly"),
        (npy(header(descr="'xyz'")), "dtype"),
        (npy(header(more="'\xff': 1"), version=3), "does not parse"),
        (b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little"), "longer than"),
    ],
)
def test_hostile_npy_body_is_refused(body, message):
    """A .npy header that is not one, or disagrees with meta, is refused; nothing is evaluated."""
    meta = {**ARRAY, "shape": [10], "size": len(body) if len(body) > 80 else 1000}
    with pytest.raises(RemoteProtocolError, match=message):
        feed_randomly(meta, body, seed=1)


def test_npy_header_from_another_writer_is_accepted():
    """Any well-formed .npy header that agrees with meta is read (versions 2 and 3, no padding)."""
    data = np.arange(10, dtype="<f8").tobytes()
    for version in (1, 2, 3):
        body = npy(header(), version=version, data=data)
        result = feed_randomly({**ARRAY, "size": len(body)}, body, seed=version)
        assert_same_array(np.arange(10, dtype="<f8"), result)


def test_missing_optional_dependency_says_what_to_install(monkeypatch):
    """Without pyarrow, sending or receiving a table says to install p2p-copy[objects]."""
    table = pa.table({"a": [1]})
    encoded = encode_object(table)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(UsageError, match=r"p2p-copy\[objects\]"):
        encode_object(table)
    with pytest.raises(UsageError, match=r"p2p-copy\[objects\]"):
        ObjectDecoder(encoded.meta)


def test_importing_the_module_does_not_import_numpy():
    """import p2p_copy.protocol.objects stays light: numpy, pandas and pyarrow load on first use."""
    code = (
        "import sys, p2p_copy.protocol.objects\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype", ["|S0", "<U0", "|V0"])
def test_zero_byte_elements_with_a_huge_shape_are_refused(dtype: str) -> None:
    """S0/U0/V0 elements take no bytes in the size check but at least one when allocated."""
    meta = {"kind": "numpy.ndarray", "size": 128, "dtype": dtype, "shape": [2**28],
            "fortran_order": False}
    with pytest.raises(RemoteProtocolError, match="zero bytes"):
        ObjectDecoder(meta, max_bytes=1000)
