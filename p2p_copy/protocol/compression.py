"""Adaptive zstd compression of data chunks, without I/O.

The sender offers each chunk to ``ChunkCompressor.compress``; it gets back one zstd frame
to send as ``DATA_ZSTD``, or ``None`` when sending the chunk raw pays better. Chunks that
do not shrink make the compressor stop trying for 1, 2, 4, ... up to ``max_skip`` chunks
before it probes again, so that already-compressed files (video, archives, random data)
cost almost nothing. Compression happens before encryption, on the sender's side only.

``ChunkDecompressor`` is the receiver's half and treats its input as hostile: a frame
must declare its content size, which must be at most ``max_output`` (the chunk size
limit), so one chunk never allocates more than that however small its frame is.
Every failure is a ``RemoteProtocolError``.

``CompressionChooser`` decides, by measuring, whether trying compression pays at all on
this link and machine.

Both wrap one reusable zstandard context; zstandard releases the GIL while it works, so
the asyncio layer may call them from a worker thread (one call at a time per object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import zstandard

from ..errors import RemoteProtocolError

__all__ = [
    "DEFAULT_LEVEL",
    "MAX_RATIO",
    "MAX_SKIP",
    "MIN_CHUNK",
    "BytesLike",
    "CompressionStats",
    "ChunkCompressor",
    "ChunkDecompressor",
    "COMPRESS_MODES",
    "ChooserMode",
    "CompressionChooser",
]

BytesLike = bytes | bytearray | memoryview

#: zstd level, measured with benchmarks/compression_probe.py on CSV: level 2 is no better
#: (ratio 0.272 vs 0.277), 3 is 30% slower for the same ratio, and the "fast" negative
#: levels gain at most 15% speed for 25-60% more bytes on the wire.
DEFAULT_LEVEL: Final = 1
#: Send compressed only if the frame is at most this fraction of the chunk: smaller savings
#: are not worth the receiver's decompression time.
MAX_RATIO: Final = 0.9
#: Longest run of chunks sent raw without trying, once compression keeps failing.
MAX_SKIP: Final = 64
#: Chunks shorter than this are sent raw untried: a frame's header alone is 6-18 bytes.
MIN_CHUNK: Final = 64


@dataclass
class CompressionStats:
    """What compression did so far: for progress displays and benchmarks.

    ``data_bytes`` are file bytes, ``wire_bytes`` the payloads that carried them (a raw
    chunk counts the same on both sides). A decompressor only counts compressed chunks.
    """

    data_bytes: int = 0
    wire_bytes: int = 0
    #: Chunks carried as a zstd frame.
    compressed: int = 0
    #: Chunks that were compressed but sent raw because they did not shrink enough.
    incompressible: int = 0
    #: Chunks sent raw untried: during a back-off, or too short.
    skipped: int = 0

    @property
    def ratio(self) -> float:
        """Wire bytes per data byte: 1.0 means no gain, 0.25 means 4x smaller."""
        return self.wire_bytes / self.data_bytes if self.data_bytes else 1.0

    @property
    def attempts(self) -> int:
        """How many chunks were actually run through zstd."""
        return self.compressed + self.incompressible


class ChunkCompressor:
    """Compress chunks one by one, backing off exponentially while they do not shrink."""

    def __init__(
        self,
        level: int = DEFAULT_LEVEL,
        *,
        max_ratio: float = MAX_RATIO,
        max_skip: int = MAX_SKIP,
    ) -> None:
        if not 0.0 < max_ratio <= 1.0:
            raise ValueError("max_ratio must be in (0, 1]")
        if max_skip < 0:
            raise ValueError("max_skip must be >= 0")
        # No checksum: the file's digest and AES-GCM already catch any damage. The content
        # size is required by ChunkDecompressor to bound its allocation.
        self._zstd = zstandard.ZstdCompressor(
            level=level, write_checksum=False, write_content_size=True, threads=0
        )
        self._max_ratio = max_ratio
        self._max_skip = max_skip
        self._backoff = 0  # length of the next skip if the next attempt fails
        self._skip_left = 0
        self.stats = CompressionStats()

    def compress(self, data: BytesLike) -> bytes | None:
        """One zstd frame holding ``data``, or ``None``: send ``data`` raw."""
        size = memoryview(data).nbytes
        stats = self.stats
        stats.data_bytes += size
        if self._skip_left or size < MIN_CHUNK:
            self._skip_left = max(0, self._skip_left - 1)
            stats.skipped += 1
            stats.wire_bytes += size
            return None
        frame = self._zstd.compress(data)
        if len(frame) <= size * self._max_ratio:
            self._backoff = 0
            stats.compressed += 1
            stats.wire_bytes += len(frame)
            return frame
        self._backoff = min(max(1, 2 * self._backoff), self._max_skip)
        self._skip_left = self._backoff
        stats.incompressible += 1
        stats.wire_bytes += size
        return None


class ChunkDecompressor:
    """Decompress frames from an untrusted peer, never past ``max_output`` bytes each."""

    def __init__(self, max_output: int) -> None:
        if max_output < 1:
            raise ValueError("max_output must be >= 1")
        self.max_output = max_output
        # Frames that fit the output buffer are decoded straight into it; the window
        # limit only bounds memory should zstd ever need a window buffer of its own.
        self._zstd = zstandard.ZstdDecompressor(
            max_window_size=max(1 << 10, 1 << (max_output - 1).bit_length())
        )
        self.stats = CompressionStats()

    def declared_size(self, data: BytesLike) -> int:
        """The content size the frame ``data`` declares, 1..max_output; else raises.

        Reads only the frame header, so a caller can check the size against its own
        limits before ``decompress`` allocates anything.
        """
        try:
            size = zstandard.frame_content_size(data)
        except zstandard.ZstdError:
            raise RemoteProtocolError(
                "The sender sent a compressed chunk that is not a zstd frame."
            ) from None
        if size < 0 or size == zstandard.CONTENTSIZE_UNKNOWN:  # -1 in zstandard 0.25
            raise RemoteProtocolError(
                "The sender sent a compressed chunk that does not declare its size."
            )
        if size > self.max_output:
            raise RemoteProtocolError(
                f"The sender sent a compressed chunk of {size} bytes; "
                f"at most {self.max_output} are allowed."
            )
        if size == 0:
            # Also what zstd reports for skippable frames, which carry no data.
            raise RemoteProtocolError("The sender sent an empty compressed chunk.")
        return int(size)

    def decompress(self, data: BytesLike) -> bytes:
        """The chunk held by the zstd frame ``data``; raises ``RemoteProtocolError``."""
        size = self.declared_size(data)
        try:
            # With the size declared, zstd allocates exactly that and fails if the frame
            # would write more or less; a second frame or trailing bytes are refused.
            chunk = self._zstd.decompress(
                data, max_output_size=self.max_output, allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise RemoteProtocolError(
                f"The sender sent a corrupt compressed chunk ({exc})."
            ) from None
        if len(chunk) != size:  # zstd checks this itself; cheap insurance
            raise RemoteProtocolError("The sender sent a compressed chunk of the wrong size.")
        stats = self.stats
        stats.compressed += 1
        stats.data_bytes += size
        stats.wire_bytes += memoryview(data).nbytes
        return chunk


ChooserMode = Literal["auto", "always", "never"]
#: The modes, for argument checking and --compress.
COMPRESS_MODES: Final[tuple[ChooserMode, ...]] = ("auto", "always", "never")


class CompressionChooser:
    """Whether to offer the next chunk to the compressor: what moves data faster, measured.

    Compressing is not free. On loopback or a fast LAN zstd level 1 (~360 MB/s per core
    here) costs more CPU than it saves, since the whole encrypted pipeline moves ~400 MB/s
    raw; on slower links it multiplies throughput by 1/ratio. Which case holds depends on
    the link, the data and what else the CPU does, so measuring both beats guessing.

    The caller reads ``compress`` before framing each chunk and calls ``observe`` once the
    chunk is sent. Time runs from one ``observe`` to the next (the first call only starts
    the clock), so each interval holds one chunk in one mode, everything around it
    (reading, hashing, encrypting, waiting for the link) included. Chunks add up to
    windows of at least ``window_bytes`` and ``min_window_seconds``; a window's data rate
    is its plaintext bytes per second.

    ``"auto"``: the first window runs raw, the second compressed; from then on each
    window runs in the mode whose last measured rate is higher, except that now and then
    one window runs in the other mode, to re-measure it as CPU contention and link speed
    change. Three things keep the measurement honest on a noisy machine:

    - Compression must be ``margin`` times faster to be chosen: it costs CPU that the rest
      of the machine (on loopback: the relay and the receiver) could use, so raw wins
      when in doubt.
    - After a change of mode the first ``settle_bytes`` are not measured: megabytes of
      the other mode's data still sit in socket buffers between here and the receiver.
    - A probe that loses doubles the interval to the next one (``probe_every`` windows at
      first, at most 4 times that); a switch resets it.

    ``"always"`` and ``"never"`` do not change, but still measure.
    """

    def __init__(
        self,
        mode: ChooserMode = "auto",
        *,
        window_bytes: int = 8 * 2**20,
        min_window_seconds: float = 0.2,
        probe_every: int = 8,
        margin: float = 1.1,
        settle_bytes: int | None = None,
    ) -> None:
        if mode not in COMPRESS_MODES:
            raise ValueError("mode must be 'auto', 'always' or 'never'")
        if window_bytes < 1:
            raise ValueError("window_bytes must be >= 1")
        if not min_window_seconds >= 0.0:  # NaN too
            raise ValueError("min_window_seconds must be >= 0")
        if probe_every < 2:
            raise ValueError("probe_every must be >= 2")
        if not margin >= 1.0:  # NaN too
            raise ValueError("margin must be >= 1")
        if settle_bytes is not None and settle_bytes < 0:
            raise ValueError("settle_bytes must be >= 0")
        self.mode: ChooserMode = mode
        self.window_bytes = window_bytes
        self.min_window_seconds = min_window_seconds
        self.probe_every = probe_every
        self.margin = margin
        self.settle_bytes = window_bytes // 2 if settle_bytes is None else settle_bytes
        self._compress = mode == "always"
        self._settle = 0  # bytes still to skip after a change of mode
        self._interval = probe_every  # windows from a probe or switch to the next probe
        self._probing = False  # the window under way re-measures the other mode
        self._clock: float | None = None
        self._bytes = 0  # of the window under way
        self._seconds = 0.0
        self._streak = 0  # windows in the best mode since the last probe or switch
        #: Windows completed in each mode.
        self.raw_windows = 0
        self.compressed_windows = 0
        #: Windows run in the mode that was not the best, to re-measure it.
        self.probes = 0
        #: Data rate (plaintext bytes per second) of the last window in each mode.
        self.raw_rate: float | None = None
        self.compressed_rate: float | None = None

    @property
    def compress(self) -> bool:
        """Whether to offer the next chunk to the compressor."""
        return self._compress

    @property
    def windows(self) -> int:
        """Windows completed so far, in either mode."""
        return self.raw_windows + self.compressed_windows

    def observe(self, data_bytes: int, now: float) -> None:
        """A chunk of ``data_bytes`` plaintext bytes was sent; ``now`` is a monotonic time."""
        if data_bytes < 0:
            raise ValueError("data_bytes must be >= 0")
        previous, self._clock = self._clock, now
        if previous is None:
            return
        if self._settle > 0:
            self._settle -= data_bytes
            return
        self._bytes += data_bytes
        self._seconds += max(0.0, now - previous)
        if self._bytes < self.window_bytes or self._seconds < self.min_window_seconds:
            return
        rate = self._bytes / self._seconds if self._seconds > 0 else float("inf")
        self._bytes, self._seconds = 0, 0.0
        if self._compress:
            self.compressed_windows += 1
            self.compressed_rate = rate
        else:
            self.raw_windows += 1
            self.raw_rate = rate
        if self.mode == "auto":
            self._choose()

    def _choose(self) -> None:
        ran = self._compress
        if self.raw_rate is None or self.compressed_rate is None:
            self._switch(not ran)  # the other mode was never measured: measure it
            return
        best = self.compressed_rate > self.raw_rate * self.margin
        probing, self._probing = self._probing, False
        if best != ran:
            # A probe that lost: measure less often. The best mode fell behind: start over.
            self._interval = (min(2 * self._interval, 4 * self.probe_every) if probing
                              else self.probe_every)
            self._switch(best)
            return
        if probing:  # a probe that won: the other mode's rate was stale
            self._interval = self.probe_every
        self._streak += 1
        if self._streak >= self._interval - 1:
            self.probes += 1
            self._probing = True
            self._switch(not best)

    def _switch(self, compress: bool) -> None:
        self._streak = 0
        if compress != self._compress:
            self._compress = compress
            self._settle = self.settle_bytes
