"""Adaptive chunk compression: round trips, back-off, a decompressor that resists hostile frames."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p_copy.errors import RemoteProtocolError
from p2p_copy.protocol import compression
from p2p_copy.protocol.compression import (
    MAX_SKIP,
    MIN_CHUNK,
    ChunkCompressor,
    ChunkDecompressor,
    CompressionChooser,
)

MAX_OUTPUT = 1 << 20
REAL_COMPRESSOR = zstandard.ZstdCompressor
CHUNK = 256 * 1024


def csv_text(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    rows = []
    total = 0
    while total < size:
        row = (f"{1_700_000_000 + total},station-{rng.randrange(200):03d},"
               f"{rng.uniform(-20, 40):.2f},{rng.randrange(101)},OK\n")
        rows.append(row)
        total += len(row)
    return "".join(rows).encode()[:size]


def zstd_frame(content_size: int | None, blocks: list[bytes]) -> bytes:
    """A hand-made zstd frame: 128 KiB window, content size in 8 bytes or absent."""
    descriptor = 0xC0 if content_size is not None else 0x00
    header = struct.pack("<IBB", 0xFD2FB528, descriptor, 7 << 3)
    if content_size is not None:
        header += struct.pack("<Q", content_size)
    return header + b"".join(blocks)


def rle_blocks(total: int) -> list[bytes]:
    """RLE blocks of 128 KiB each: 4 bytes of frame per 128 KiB of output."""
    count = total // (1 << 17)
    return [(((1 << 17) << 3) | 2 | (i == count - 1)).to_bytes(3, "little") + b"A"
            for i in range(count)]


class CountingCompressor:
    """Stands in for zstandard.ZstdCompressor and counts the chunks it is given."""

    calls = 0

    def __init__(self, **kwargs: object) -> None:
        self._real = REAL_COMPRESSOR(**kwargs)  # type: ignore[arg-type]

    def compress(self, data: bytes) -> bytes:
        CountingCompressor.calls += 1
        return self._real.compress(data)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingCompressor]:
    CountingCompressor.calls = 0
    monkeypatch.setattr(compression.zstandard, "ZstdCompressor", CountingCompressor)
    return CountingCompressor


def round_trip(data: bytes | bytearray | memoryview) -> bytes:
    frame = ChunkCompressor().compress(data)
    if frame is None:
        return bytes(data)
    return ChunkDecompressor(MAX_OUTPUT).decompress(frame)


# Round trips


@pytest.mark.parametrize(
    "data",
    [bytes(CHUNK), csv_text(CHUNK), b"x" * MIN_CHUNK, b"ab" * 5000, bytes(MAX_OUTPUT)],
    ids=["zeros", "csv", "min-chunk", "repeats", "max-output"],
)
def test_compressible_chunks_round_trip_smaller(data):
    """Compressible chunks come back as a smaller frame that decompresses to the same bytes."""
    frame = ChunkCompressor().compress(data)
    assert frame is not None and len(frame) <= 0.9 * len(data)
    assert ChunkDecompressor(MAX_OUTPUT).decompress(frame) == data


@pytest.mark.parametrize("data", [os.urandom(CHUNK), b"", b"x", b"x" * (MIN_CHUNK - 1)],
                         ids=["random", "empty", "one-byte", "below-min-chunk"])
def test_incompressible_or_tiny_chunks_go_raw(data):
    """Random, empty and tiny chunks are not worth a frame: compress() says send them raw."""
    assert ChunkCompressor().compress(data) is None
    assert round_trip(data) == data


def test_memoryview_into_a_reused_buffer_round_trips():
    """The sender's view into its reused buffer (after the kind byte) compresses correctly."""
    text = csv_text(CHUNK)
    buffer = bytearray(1 + CHUNK)
    buffer[1:] = text
    frame = ChunkCompressor().compress(memoryview(buffer)[1:])
    buffer[1:] = bytes(CHUNK)  # the next chunk overwrites the buffer
    assert frame is not None
    assert ChunkDecompressor(MAX_OUTPUT).decompress(memoryview(frame)) == text


def test_frames_declare_their_size_and_carry_no_checksum():
    """Frames carry the content size the receiver needs, and no checksum (AES-GCM covers it)."""
    frame = ChunkCompressor().compress(bytes(CHUNK))
    assert frame is not None
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == CHUNK
    assert not params.has_checksum


def test_stats_count_bytes_and_chunks():
    """Stats add up file bytes, wire bytes and what happened to each chunk."""
    compressor = ChunkCompressor()
    frame = compressor.compress(bytes(CHUNK))
    compressor.compress(os.urandom(4096))  # incompressible: next one is skipped
    compressor.compress(bytes(4096))
    compressor.compress(b"x")
    stats = compressor.stats
    assert frame is not None
    assert (stats.compressed, stats.incompressible, stats.skipped) == (1, 1, 2)
    assert stats.attempts == 2
    assert stats.data_bytes == CHUNK + 4096 + 4096 + 1
    assert stats.wire_bytes == len(frame) + 4096 + 4096 + 1
    assert 0 < stats.ratio < 0.1


def test_decompressor_stats_count_compressed_chunks():
    """The receiver's stats count each frame and the bytes it expanded to."""
    frame = ChunkCompressor().compress(bytes(CHUNK))
    assert frame is not None
    decompressor = ChunkDecompressor(MAX_OUTPUT)
    decompressor.decompress(frame)
    assert (decompressor.stats.compressed, decompressor.stats.data_bytes,
            decompressor.stats.wire_bytes) == (1, CHUNK, len(frame))


def test_bad_settings_are_refused():
    """Nonsense settings fail at construction, not half-way through a transfer."""
    with pytest.raises(ValueError):
        ChunkCompressor(max_ratio=0)
    with pytest.raises(ValueError):
        ChunkCompressor(max_skip=-1)
    with pytest.raises(ValueError):
        ChunkDecompressor(0)


# Back-off


def test_backoff_on_random_data_skips_1_2_4_up_to_max(counting):
    """On random data zstd runs on chunks 0, 2, 5, 10, ...: skips double up to MAX_SKIP."""
    compressor = ChunkCompressor()
    tried = []
    for index in range(400):
        before = counting.calls
        assert compressor.compress(os.urandom(1024)) is None
        if counting.calls > before:
            tried.append(index)
    gaps = [b - a - 1 for a, b in zip(tried, tried[1:], strict=False)]
    assert gaps[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert set(gaps[6:]) == {MAX_SKIP}
    assert compressor.stats.attempts == counting.calls == len(tried)
    assert compressor.stats.skipped == 400 - len(tried)


def test_compressible_data_after_backoff_is_compressed_again(counting):
    """Once a probe succeeds, every following compressible chunk is compressed."""
    compressor = ChunkCompressor(max_skip=4)
    for _ in range(20):
        compressor.compress(os.urandom(1024))
    results = [compressor.compress(bytes(1024)) for _ in range(10)]
    first = next(i for i, r in enumerate(results) if r is not None)
    assert first <= 4
    assert all(r is not None for r in results[first:])


def test_max_skip_zero_tries_every_chunk(counting):
    """max_skip=0 turns the back-off off: zstd sees every chunk."""
    compressor = ChunkCompressor(max_skip=0)
    for _ in range(10):
        compressor.compress(os.urandom(1024))
    assert counting.calls == 10


# Hostile frames


def test_declared_content_size_over_limit_is_refused_without_allocating():
    """A 2 KiB frame that honestly expands to 64 MiB is refused before any output is allocated."""
    bomb = zstd_frame(64 << 20, rle_blocks(64 << 20))
    assert len(bomb) < 4096
    assert zstandard.ZstdDecompressor().decompress(bomb)[:1] == b"A"  # really a 64 MiB bomb
    decompressor = ChunkDecompressor(MAX_OUTPUT)
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError, match="at most 1048576"):
            decompressor.decompress(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_OUTPUT


def test_frame_claiming_a_huge_content_size_is_refused():
    """A header claiming 1 TiB (and carrying nothing) is refused from the header alone."""
    with pytest.raises(RemoteProtocolError, match="at most"):
        ChunkDecompressor(MAX_OUTPUT).decompress(zstd_frame(1 << 40, rle_blocks(1 << 17)))


def test_frame_lying_about_a_small_size_cannot_expand_past_it():
    """A frame declaring 1000 bytes but holding 64 MiB of RLE fails inside a 1000-byte buffer."""
    liar = zstd_frame(1000, rle_blocks(64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError, match="corrupt"):
            ChunkDecompressor(MAX_OUTPUT).decompress(liar)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_OUTPUT


def test_frame_without_content_size_is_refused():
    """A streamed frame with no declared size is refused even if it would fit."""
    streamer = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = streamer.compress(bytes(1000)) + streamer.flush()
    with pytest.raises(RemoteProtocolError, match="does not declare its size"):
        ChunkDecompressor(MAX_OUTPUT).decompress(frame)
    with pytest.raises(RemoteProtocolError, match="does not declare its size"):
        ChunkDecompressor(MAX_OUTPUT).decompress(zstd_frame(None, rle_blocks(64 << 20)))


def test_chunk_one_byte_over_the_limit_is_refused():
    """The limit is exact: max_output bytes pass, one more does not."""
    frame = ChunkCompressor().compress(bytes(MAX_OUTPUT + 1))
    assert frame is not None
    with pytest.raises(RemoteProtocolError, match="1048577 bytes"):
        ChunkDecompressor(MAX_OUTPUT).decompress(frame)
    assert len(ChunkDecompressor(MAX_OUTPUT + 1).decompress(frame)) == MAX_OUTPUT + 1


def test_every_truncation_of_a_frame_is_refused():
    """Cutting a frame anywhere gives RemoteProtocolError, never a short chunk."""
    frame = ChunkCompressor().compress(csv_text(4096))
    assert frame is not None
    decompressor = ChunkDecompressor(MAX_OUTPUT)
    for cut in range(len(frame)):
        with pytest.raises(RemoteProtocolError):
            decompressor.decompress(frame[:cut])


@pytest.mark.parametrize(
    "extra",
    [b"x", b"\x28\xb5\x2f\xfd", None],
    ids=["trailing-byte", "trailing-magic", "second-frame"],
)
def test_bytes_after_the_frame_are_refused(extra):
    """One message holds exactly one frame: trailing bytes or a second frame are refused."""
    frame = ChunkCompressor().compress(bytes(4096))
    assert frame is not None
    with pytest.raises(RemoteProtocolError, match="corrupt"):
        ChunkDecompressor(MAX_OUTPUT).decompress(frame + (frame if extra is None else extra))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 16, b"not a zstd frame at all",
     struct.pack("<II", 0x184D2A50, 4) + b"skip",
     zstd_frame(0, [(1).to_bytes(3, "little")])],
    ids=["empty", "zeros", "text", "skippable-frame", "empty-frame"],
)
def test_non_frames_and_empty_frames_are_refused(data):
    """Garbage, skippable frames and frames of zero bytes are all protocol errors."""
    with pytest.raises(RemoteProtocolError):
        ChunkDecompressor(MAX_OUTPUT).decompress(data)


def test_damaged_block_header_is_refused():
    """A frame whose block header says 'reserved' type is refused as corrupt."""
    frame = zstd_frame(1000, [((1000 << 3) | 6 | 1).to_bytes(3, "little") + b"A"])
    with pytest.raises(RemoteProtocolError, match="corrupt"):
        ChunkDecompressor(MAX_OUTPUT).decompress(frame)


_VALID = ChunkCompressor().compress(csv_text(8192)) or b""
_hostile = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=512).map(lambda b: b"\x28\xb5\x2f\xfd" + b),
    st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255),
              st.integers(1, len(_VALID))).map(
        lambda t: (_VALID[: t[0]] + bytes([t[1]]) + _VALID[t[0] + 1 :])[: t[2]]),
)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_hostile)
def test_fuzzed_frames_only_raise_remote_protocol_error(data):
    """Random and mutated frames either decode within the limit or raise RemoteProtocolError."""
    decompressor = ChunkDecompressor(16384)
    try:
        chunk = decompressor.decompress(data)
    except RemoteProtocolError:
        return
    assert 0 < len(chunk) <= 16384


def test_declared_size_reads_only_the_header():
    """declared_size gives the content size before anything is decompressed."""
    frame = ChunkCompressor().compress(csv_text(5000))
    assert frame is not None
    assert ChunkDecompressor(MAX_OUTPUT).declared_size(frame) == 5000
    assert ChunkDecompressor(MAX_OUTPUT).declared_size(memoryview(frame)) == 5000
    with pytest.raises(RemoteProtocolError, match="at most 4999"):
        ChunkDecompressor(4999).declared_size(frame)
    with pytest.raises(RemoteProtocolError, match="does not declare"):
        ChunkDecompressor(MAX_OUTPUT).declared_size(zstd_frame(None, rle_blocks(1 << 17)))


# The chooser, on synthetic clocks

MIB = 1 << 20


def run_chooser(chooser: CompressionChooser, rates: list[tuple[float, float]],
                chunks_per_phase: int) -> list[bool]:
    """Feed 1 MiB chunks; each phase has (raw, compressed) rates in bytes/s. Per-chunk modes."""
    now = 100.0
    chooser.observe(0, now)  # starts the clock
    modes = []
    for raw, compressed in rates:
        for _ in range(chunks_per_phase):
            mode = chooser.compress
            modes.append(mode)
            now += MIB / (compressed if mode else raw)
            chooser.observe(MIB, now)
    return modes


def small_chooser(mode: str = "auto", **kwargs: float) -> CompressionChooser:
    # Windows of 4 chunks, no minimum duration, nothing skipped after a change of mode.
    settings: dict[str, float] = dict(window_bytes=4 * MIB, min_window_seconds=0.0,
                                      probe_every=8, settle_bytes=0)
    settings.update(kwargs)
    return CompressionChooser(mode, **settings)  # type: ignore[arg-type]


def windows_of(modes: list[bool]) -> str:
    """One letter per 4-chunk window: r raw, C compressed."""
    assert all(len(set(modes[i:i + 4])) == 1 for i in range(0, len(modes), 4)), modes
    return "".join("C" if m else "r" for m in modes[::4])


def test_chooser_on_a_fast_link_runs_raw_probing_less_and_less_often():
    """Loopback: raw 400 MB/s beats compressing at 250 MB/s; losing probes back off."""
    chooser = small_chooser()
    windows = windows_of(run_chooser(chooser, [(400e6, 250e6)], 4 * 120))
    # Raw first, then the compressed probe; then probes after 8, 16, 32, 32, ... windows.
    assert windows[:2] == "rC"
    assert windows[2:] == ("r" * 7 + "C" + "r" * 15 + "C" + "r" * 31 + "C" + "r" * 31 + "C"
                           + "r" * 31)[: len(windows) - 2]
    assert chooser.probes == 4
    assert chooser.raw_windows + chooser.compressed_windows == chooser.windows == 120
    assert chooser.raw_rate == pytest.approx(400e6)
    assert chooser.compressed_rate == pytest.approx(250e6)


def test_chooser_on_a_slow_link_compresses_with_raw_probes():
    """A 10 MB/s link: compressed data moves at 35 MB/s, so compression wins."""
    chooser = small_chooser()
    windows = windows_of(run_chooser(chooser, [(10e6, 35e6)], 4 * 50))
    assert windows[:2] == "rC"
    assert windows[2:26] == "C" * 6 + "r" + "C" * 15 + "rC"
    assert windows.count("r") == 1 + chooser.probes


def test_chooser_follows_a_change_of_link():
    """Fast, then slow (the link got busy), then fast again: the mode follows each time."""
    chooser = small_chooser()
    phases = [(400e6, 250e6), (10e6, 35e6), (400e6, 250e6)]
    windows = windows_of(run_chooser(chooser, phases, 4 * 40))
    fast1, slow, fast2 = windows[:40], windows[40:80], windows[80:]
    assert fast1[2:].count("C") <= 3
    # A slower raw window makes the stale, better compressed rate win at once.
    assert slow[1:] == "C" * 39 or slow[2:].count("r") <= 3
    # A faster link is found at the next raw probe at the latest (at most 32 windows).
    assert "r" in fast2[:32] and fast2[fast2.index("r") :].count("C") <= 2


def test_chooser_wants_a_margin_before_it_compresses():
    """Compressing only 5 % faster is not worth the CPU: raw stays."""
    chooser = small_chooser()
    windows = windows_of(run_chooser(chooser, [(100e6, 105e6)], 4 * 30))
    assert windows[:2] == "rC" and windows[2:].count("C") <= 2
    chooser = small_chooser(margin=1.0)
    windows = windows_of(run_chooser(chooser, [(100e6, 105e6)], 4 * 30))
    assert windows[2:].count("r") <= 2


def test_chooser_does_not_measure_the_data_after_a_switch():
    """What the other mode left in the buffers must not count for the new one."""
    chooser = small_chooser(settle_bytes=2 * MIB)
    modes = run_chooser(chooser, [(400e6, 250e6)], 4 * 4)
    # Window 1 raw (4 chunks), then 2 settle chunks + 4 measured compressed, then 2 + 4 raw.
    assert modes[:14] == [False] * 4 + [True] * 6 + [False] * 4
    assert chooser.compressed_rate == pytest.approx(250e6)


def test_chooser_windows_need_bytes_and_time():
    """A window ends only after window_bytes and min_window_seconds both passed."""
    chooser = CompressionChooser(window_bytes=2 * MIB, min_window_seconds=1.0)
    chooser.observe(MIB, 0.0)  # the first call only starts the clock: its bytes do not count
    chooser.observe(MIB, 0.1)
    chooser.observe(MIB, 0.2)
    assert chooser.windows == 0  # 2 MiB, but 0.2 s
    chooser.observe(MIB, 1.0)
    assert chooser.windows == 1 and chooser.raw_rate == pytest.approx(3 * MIB / 1.0)
    assert chooser.compress  # the second window measures compression


@pytest.mark.parametrize("mode", ["always", "never"])
def test_fixed_modes_never_change(mode: str):
    chooser = small_chooser(mode)
    modes = run_chooser(chooser, [(400e6, 250e6), (10e6, 35e6)], 4 * 30)
    assert set(modes) == {mode == "always"}
    assert chooser.windows == 60 and chooser.probes == 0


@pytest.mark.parametrize("kwargs", [
    {"mode": "sometimes"}, {"window_bytes": 0}, {"min_window_seconds": -1.0},
    {"min_window_seconds": float("nan")}, {"probe_every": 1}, {"margin": 0.9},
    {"margin": float("nan")}, {"settle_bytes": -1},
])
def test_bad_chooser_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        CompressionChooser(**kwargs)
