"""Pipes, texts and objects end to end: through a real relay on loopback, from the API and
from the CLI (``python -m p2p_copy`` processes), including a 200 MB pipe in bounded memory
and hostile object descriptions refused before anything is allocated."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import p2p_copy
from p2p_copy import IntegrityError, PolicyError, RemoteProtocolError, UsageError
from p2p_copy.protocol.digests import BLAKE3
from p2p_copy.relay import Relay

from .conftest import Processes, cli_env, run_cli
from .handmade_peer import handmade_peer, sha256_hex
from .protocol_pair import hex_digest

TIMEOUT = 60.0


def new_code() -> str:
    """A fresh code: no two transfers, here or in a parallel run, share a room."""
    return f"{uuid.uuid4().hex[:12]}-objects"


async def round_trip(url: str, obj: object, **receive_args: Any) -> object:
    """send_object -> receive_object through the relay at ``url``; the received object."""
    code = new_code()
    async with asyncio.timeout(TIMEOUT):
        receiving = asyncio.ensure_future(
            p2p_copy.receive_object(url, code, progress="none", **receive_args))
        try:
            result = await p2p_copy.send_object(url, code, obj, progress="none")
            received = await receiving
        finally:
            receiving.cancel()
    assert result.role == "sender" and len(result.files) == 1
    return received


# --- every kind of object -------------------------------------------------------------------


@pytest.mark.parametrize("obj", [
    b"", b"\x00\xffbytes", bytearray(b"mutable"), "", "ünïcode ✓\nline two",
    {"k": [1, 2.5, None, True, "s"], "nested": {"x": []}}, [], 7, None, 2**70,
], ids=repr)
async def test_plain_values_round_trip(relay: Relay, obj: object) -> None:
    """bytes, bytearray, str and JSON values come back equal and of the same type."""
    got = await round_trip(relay.url, obj)
    assert got == obj and type(got) is type(obj)


ARRAYS = {
    "int-big-endian-3d": np.arange(24, dtype=">i4").reshape(2, 3, 4),
    "fortran-order": np.asfortranarray(np.arange(12, dtype="<f8").reshape(3, 4)),
    "strided-view": np.arange(40, dtype=np.int16).reshape(5, 8)[::2, 1::3],
    "records": np.array([(1.5, b"abc"), (-2.0, b"")], dtype=[("x", "<f8"), ("y", "S3")]),
    "datetime": np.array(["2024-01-01T00:00:00.123456789", "NaT"], dtype="datetime64[ns]"),
    "unicode": np.array(["a", "ünï"], dtype="<U3"),
    "empty": np.zeros((0, 3), dtype=np.complex64),
    "large": np.random.default_rng(1).standard_normal((2048, 1024)),  # 16 MiB
}


@pytest.mark.parametrize("name", list(ARRAYS))
async def test_numpy_arrays_round_trip_exactly(relay: Relay, name: str) -> None:
    """dtype, shape, memory order and every value (NaT included) come back."""
    array = ARRAYS[name]
    got = await round_trip(relay.url, array)
    assert type(got) is np.ndarray
    assert got.dtype == array.dtype and got.shape == array.shape
    assert np.array_equal(got, array, equal_nan=array.dtype.kind in "fcmM")
    if name == "fortran-order":
        assert got.flags.f_contiguous and not got.flags.c_contiguous


async def test_a_numpy_scalar_comes_back_as_a_scalar(relay: Relay) -> None:
    got = await round_trip(relay.url, np.float16(3.5))
    assert type(got) is np.float16 and got == 3.5


def frames() -> dict[str, pd.DataFrame]:
    multi = pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["letter", "number"])
    return {
        "named-index": pd.DataFrame({"x": [1.5, 2.5, np.nan], "s": ["p", None, "r"]},
                                    index=pd.Index([10, 20, 30], name="id")),
        "multi-index": pd.DataFrame({"v": [1, 2]}, index=multi),
        "range-index-step": pd.DataFrame({"v": [1, 2, 3]}, index=pd.RangeIndex(5, 11, 2)),
        "types": pd.DataFrame({
            "cat": pd.Categorical(["lo", "hi", "lo"], categories=["lo", "hi"], ordered=True),
            "when": pd.date_range("2024-03-01", periods=3, freq="h", tz="Europe/Paris"),
            "flag": [True, False, True],
            "small": np.array([1, 2, 3], dtype=np.int8),
            "nullable": pd.array([1, None, 3], dtype="Int64"),
        }),
        "empty": pd.DataFrame({"a": pd.Series([], dtype="float32")}),
    }


@pytest.mark.parametrize("name", list(frames()))
async def test_dataframes_round_trip_exactly(relay: Relay, name: str) -> None:
    """Index (named, multi, range), column dtypes and values come back exactly."""
    frame = frames()[name]
    got = await round_trip(relay.url, frame)
    assert type(got) is pd.DataFrame
    pd.testing.assert_frame_equal(got, frame, check_exact=True)
    assert list(got.dtypes) == list(frame.dtypes)
    pd.testing.assert_index_equal(got.index, frame.index, exact=True)


async def test_arrow_tables_and_batches_keep_their_schema(relay: Relay) -> None:
    """Schema, field and schema metadata, and the values of a Table and a RecordBatch."""
    schema = pa.schema([pa.field("n", pa.int32(), metadata={"unit": "m"}),
                        pa.field("t", pa.list_(pa.string()))], metadata={"source": "test"})
    table = pa.table({"n": [1, None, 3], "t": [["a"], [], None]}, schema=schema)
    got = await round_trip(relay.url, table)
    assert isinstance(got, pa.Table) and got.schema.equals(schema, check_metadata=True)
    assert got.equals(table)
    batch = table.to_batches()[0]
    got_batch = await round_trip(relay.url, batch)
    assert isinstance(got_batch, pa.RecordBatch) and got_batch.equals(batch)
    assert got_batch.schema.equals(schema, check_metadata=True)


async def test_text_round_trips(relay: Relay) -> None:
    """send_text -> receive_text gives the same str back."""
    code = new_code()
    async with asyncio.timeout(TIMEOUT):
        receiving = asyncio.ensure_future(p2p_copy.receive_text(relay.url, code, progress="none"))
        await p2p_copy.send_text(relay.url, code, "héllo\n", progress="none")
        assert await receiving == "héllo\n"


async def test_receive_text_refuses_other_objects_before_any_byte(relay: Relay) -> None:
    """Both sides learn why: the receiver takes only a text."""
    code = new_code()
    async with asyncio.timeout(TIMEOUT):
        receiving = asyncio.ensure_future(p2p_copy.receive_text(relay.url, code, progress="none"))
        with pytest.raises(PolicyError, match="receiver reported.*'numpy.ndarray'"):
            await p2p_copy.send_object(relay.url, code, np.zeros(3), progress="none")
        with pytest.raises(PolicyError, match="takes only 'str'"):
            await receiving


async def test_unsupported_objects_are_refused_before_connecting() -> None:
    """No relay listens here: the UsageError comes first, and it says what is supported."""
    with pytest.raises(UsageError, match="pickle is not used"):
        await p2p_copy.send_object("ws://127.0.0.1:9", "1-never-used", object(),
                                   progress="none")
    with pytest.raises(UsageError, match="object dtype|Python objects"):
        await p2p_copy.send_object("ws://127.0.0.1:9", "1-never-used",
                                   np.array([object()]), progress="none")


async def test_receive_saves_an_object_as_a_file_a_library_reads(
    relay: Relay, tmp_path: Path,
) -> None:
    """A files receiver gets array.npy, a valid .npy file (no pickle needed to load it)."""
    array = np.arange(6, dtype="<u2").reshape(2, 3)
    code = new_code()
    async with asyncio.timeout(TIMEOUT):
        receiving = asyncio.ensure_future(
            p2p_copy.receive(relay.url, code, tmp_path, progress="none"))
        await p2p_copy.send_object(relay.url, code, array, progress="none")
        result = await receiving
    assert [f.path for f in result.files] == ["array.npy"]
    loaded = np.load(tmp_path / "array.npy", allow_pickle=False)
    assert loaded.dtype == array.dtype and np.array_equal(loaded, array)


async def test_a_stream_received_as_an_object_is_bytes(relay: Relay) -> None:
    code = new_code()
    data = os.urandom(300_000)
    async with asyncio.timeout(TIMEOUT):
        receiving = asyncio.ensure_future(
            p2p_copy.receive_object(relay.url, code, progress="none"))
        sent = await p2p_copy.send_stream(relay.url, code, io.BytesIO(data), progress="none")
        assert await receiving == data
    assert sent.bytes == len(data) and sent.files[0].digest == hex_digest(BLAKE3, data)


async def test_receive_stream_writes_what_send_stream_reads(relay: Relay) -> None:
    code = new_code()
    data = os.urandom(1_000_003)
    out = io.BytesIO()
    async with asyncio.timeout(TIMEOUT):
        receiving = asyncio.ensure_future(
            p2p_copy.receive_stream(relay.url, code, out, progress="none"))
        await p2p_copy.send_stream(relay.url, code, io.BytesIO(data), progress="none",
                                   chunk_size=4096)
        result = await receiving
    assert out.getvalue() == data
    assert result.files[0].size == len(data) and result.destination is None


async def test_receive_stream_refuses_more_than_max_bytes(relay: Relay) -> None:
    code = new_code()
    async with asyncio.timeout(TIMEOUT):
        receiving = asyncio.ensure_future(p2p_copy.receive_stream(
            relay.url, code, io.BytesIO(), progress="none", max_bytes=1000))
        with pytest.raises(PolicyError):
            await p2p_copy.send_stream(relay.url, code, io.BytesIO(b"x" * 5000),
                                       progress="none", chunk_size=1024)
        with pytest.raises(PolicyError, match="grew past 1,000 bytes"):
            await receiving


# --- hostile descriptions -------------------------------------------------------------------


async def offer_hostile(url: str, entry: dict[str, Any]) -> tuple[BaseException, dict[str, Any]]:
    """A hand-made sender offers ``entry``; receive_object's error and what the sender heard."""
    code = new_code()
    tracemalloc.start()
    try:
        async with asyncio.timeout(TIMEOUT), handmade_peer(url, code, "sender") as peer:
            receiving = asyncio.ensure_future(p2p_copy.receive_object(url, code,
                                                                      progress="none"))
            await peer.expect("ready")
            await peer.send_manifest([entry])
            told = await peer.expect_error()
            with pytest.raises((PolicyError, RemoteProtocolError)) as info:
                await receiving
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak:,} bytes were allocated for a refused object"
    return info.value, told


def array_entry(shape: list[int], size: int) -> dict[str, Any]:
    meta = {"kind": "numpy.ndarray", "size": size, "dtype": "<f8", "shape": shape,
            "fortran_order": False}
    return {"path": "array.npy", "size": size, "mode": 0o644, "meta": meta}


async def test_a_huge_shape_with_a_huge_size_is_refused_before_allocation(relay: Relay) -> None:
    """8 TiB announced: refused by the memory limit at the manifest, before accept."""
    error, told = await offer_hostile(relay.url, array_entry([2**40], 2**43 + 128))
    assert isinstance(error, PolicyError) and told["code"] == "policy"
    assert "numpy.ndarray of 8,796,093,022,336 bytes" in str(error)


async def test_a_huge_shape_in_a_small_body_is_refused_as_malformed(relay: Relay) -> None:
    """The shape claims more than the announced bytes: a protocol error, nothing allocated."""
    error, told = await offer_hostile(relay.url, array_entry([2**20, 2**20], 1000))
    assert isinstance(error, RemoteProtocolError) and told["code"] == "protocol"
    assert "malformed" in str(error) and "announced" in str(error)


async def test_a_pickled_or_object_dtype_is_refused(relay: Relay) -> None:
    error, _ = await offer_hostile(relay.url, {
        "path": "a.npy", "size": 200, "meta": {"kind": "numpy.ndarray", "size": 200,
                                               "dtype": "|O", "shape": [2],
                                               "fortran_order": False}})
    assert isinstance(error, RemoteProtocolError)


async def test_a_wrong_checksum_fails_receive_object(relay: Relay) -> None:
    """The body is complete and parses, but its SHA-256 differs: no object is returned."""
    code = new_code()
    body = b"hello"
    async with asyncio.timeout(TIMEOUT), handmade_peer(relay.url, code, "sender") as peer:
        receiving = asyncio.ensure_future(p2p_copy.receive_object(relay.url, code,
                                                                  progress="none"))
        await peer.start_sending([{"path": "o", "size": 5, "meta": {
            "kind": "bytes", "type": "bytes", "size": 5}}])
        await peer.send_data(body)
        await peer.send_checksums(0, [sha256_hex(b"jello")])
        with pytest.raises(IntegrityError):
            await receiving
        assert (await peer.expect_error())["code"] == "integrity"


# --- blocking twins -------------------------------------------------------------------------


@pytest.mark.parametrize(("blocking", "coroutine"), [
    (p2p_copy.send_object_blocking, p2p_copy.send_object),
    (p2p_copy.receive_object_blocking, p2p_copy.receive_object),
])
def test_blocking_twins_take_the_same_parameters(
    blocking: Callable[..., object], coroutine: Callable[..., object],
) -> None:
    assert inspect.signature(blocking).parameters == inspect.signature(coroutine).parameters


def test_blocking_twins_move_an_object(processes: Processes) -> None:
    _, url = processes.start_relay()
    code = new_code()
    array = np.arange(10.0)
    box: list[object] = []
    thread = threading.Thread(target=lambda: box.append(
        p2p_copy.receive_object_blocking(url, code, progress="none", wait_timeout=TIMEOUT)))
    thread.start()
    try:
        p2p_copy.send_object_blocking(url, code, array, progress="none", wait_timeout=TIMEOUT)
    finally:
        thread.join(TIMEOUT)
    assert np.array_equal(box[0], array)  # type: ignore[arg-type]


# --- the CLI --------------------------------------------------------------------------------


def test_cli_text_is_printed_by_the_receiver(processes: Processes) -> None:
    _, url = processes.start_relay()
    code = new_code()
    receiver = processes.start("receive", url, code)
    sent = run_cli("send", url, code, "--text", "ünï\ttext")
    out, err = receiver.communicate(timeout=TIMEOUT)
    assert sent.returncode == 0, sent.stderr
    assert receiver.returncode == 0, err
    assert out == "ünï\ttext"  # into a pipe: exactly what was sent


def test_cli_stdin_without_stdout_is_saved_under_its_name(
    processes: Processes, tmp_path: Path,
) -> None:
    _, url = processes.start_relay()
    code = new_code()
    receiver = processes.start("receive", url, code, "--out", str(tmp_path))
    sent = run_cli("send", url, code, "-", "--name", "backup.tar", input="piped text")
    receiver.communicate(timeout=TIMEOUT)
    assert sent.returncode == 0 and receiver.returncode == 0, sent.stderr
    assert (tmp_path / "backup.tar").read_text() == "piped text"


def test_cli_stdout_refuses_more_than_one_file(processes: Processes, tmp_path: Path) -> None:
    """Exit 19 (policy) on both sides, and nothing written to standard output."""
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    _, url = processes.start_relay()
    code = new_code()
    receiver = processes.start("receive", url, code, "--stdout")
    sent = run_cli("send", url, code, str(tmp_path / "a"), str(tmp_path / "b"))
    out, err = receiver.communicate(timeout=TIMEOUT)
    assert receiver.returncode == 19 and sent.returncode == 19, (err, sent.stderr)
    assert out == "" and "exactly one" in err


@pytest.mark.parametrize("args", [
    ["--text", "t", "file"], ["-", "file"], ["--name", "n", "file"], [],
])
def test_cli_send_argument_mistakes_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    """Files with --text or with '-', a --name for files, or nothing at all: exit 2."""
    (tmp_path / "file").write_text("x")
    done = run_cli("send", "ws://127.0.0.1:9", "1-never-used", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "p2p-copy: " in done.stderr and "Traceback" not in done.stderr


async def test_cli_stdout_exits_9_when_the_checksum_fails(relay: Relay) -> None:
    """The bytes already went out (they cannot be unwritten); the exit code says 'damaged'."""
    code = new_code()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2p_copy", "receive", relay.url, code, "--stdout",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        async with asyncio.timeout(TIMEOUT), handmade_peer(relay.url, code, "sender") as peer:
            await peer.start_sending([{"path": "pipe", "kind": "stream"}])
            await peer.send_data(b"damaged bytes")
            await peer.send_checksums(0, [sha256_hex(b"other bytes")])
            await peer.expect_error()
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 9, err
    assert out == b"damaged bytes" and b"cannot be taken back" in err


def _peak_rss(pid: int) -> int | None:
    """VmHWM (peak resident set) of ``pid`` in bytes, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


PIPE_BYTES = 200 * 2**20
RSS_LIMIT = 150 * 2**20


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc for RSS")
def test_cli_pipes_200_mb_identically_in_bounded_memory(
    processes: Processes, tmp_path: Path,
) -> None:
    """send - | receive --stdout: the same 200 MB out, neither process above 150 MB RSS."""
    _, url = processes.start_relay()
    code = new_code()
    env = cli_env()
    command = [sys.executable, "-m", "p2p_copy"]
    logs = {name: (tmp_path / f"{name}.err").open("w+b") for name in ("sender", "receiver")}
    receiver = subprocess.Popen([*command, "receive", url, code, "--stdout"], env=env,
                                stdout=subprocess.PIPE, stderr=logs["receiver"])
    sender = subprocess.Popen([*command, "send", url, code, "-"], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=logs["sender"])
    sent_hash, received_hash = hashlib.sha256(), hashlib.sha256()
    received = [0]
    peaks = {"sender": 0, "receiver": 0}
    stop = threading.Event()

    def feed() -> None:
        assert sender.stdin is not None
        try:
            with sender.stdin:
                for _ in range(PIPE_BYTES // 2**20):
                    block = os.urandom(2**20)
                    sent_hash.update(block)
                    sender.stdin.write(block)
        except BrokenPipeError:
            pass  # the sender died: its exit code tells why

    def drain() -> None:
        assert receiver.stdout is not None
        while block := receiver.stdout.read(2**20):
            received_hash.update(block)
            received[0] += len(block)

    def watch() -> None:
        while not stop.is_set():
            for name, proc in (("sender", sender), ("receiver", receiver)):
                peak = _peak_rss(proc.pid)
                if peak is not None:
                    peaks[name] = max(peaks[name], peak)
            time.sleep(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, drain, watch)]
    try:
        for thread in threads:
            thread.start()
        sender.wait(timeout=240)
        receiver.wait(timeout=60)
        threads[1].join(60)
    finally:
        stop.set()
        for proc in (sender, receiver):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for thread in threads:
            thread.join(10)
        if receiver.stdout is not None:
            receiver.stdout.close()
        errors = {}
        for name, log in logs.items():
            log.seek(0)
            errors[name] = log.read().decode(errors="replace")
            log.close()
    assert sender.returncode == 0, errors
    assert receiver.returncode == 0, errors
    assert received[0] == PIPE_BYTES
    assert received_hash.digest() == sent_hash.digest()
    assert 0 < peaks["sender"] < RSS_LIMIT, peaks
    assert 0 < peaks["receiver"] < RSS_LIMIT, peaks
    print(f"peak RSS: {peaks}")
