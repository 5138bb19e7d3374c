"""``await send(...)`` and ``await receive(...)``: the state machines driven over asyncio.

This layer only moves things between the protocol objects (transfer.py), the relay
connection (client.py), the disk (sources.py, destination.py, always in worker threads so
the event loop, e.g. a Jupyter kernel's, never blocks) and the progress display.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from ..display.progress import Progress, ProgressKind, make_progress
from ..errors import (
    CancelledError,
    CodeInUseError,
    ConnectionLostError,
    P2PCopyError,
    PeerGoneError,
    PolicyError,
    RemoteProtocolError,
    TransferTimeoutError,
    UnsafePathError,
    UsageError,
)
from ..protocol.codes import GENERATE, generate_code, room_hash_hex
from ..protocol.compression import COMPRESS_MODES, ChooserMode, CompressionChooser
from ..protocol.messages import Entry, FileEntry, Ready, StreamEntry
from ..protocol.objects import encode_object
from ..protocol.paths import check_entries, display_name
from ..protocol.policy import ReceivePolicy, check_offer, summarize_offer
from ..protocol.resume import ChainHasher, Offer, Prefix
from ..protocol.transfer import (
    FileCompleted,
    FileData,
    ManifestReceived,
    Receiver,
    ReceiverState,
    ResumeAgreed,
    Sender,
    SenderState,
    data_entries,
)
from ..results import FileResult, TransferResult
from ..storage.destination import Destination
from ..storage.sources import SourceChains, Sources, StreamReader, check_names, collect_sources
from ..storage.streams import (
    MEMORY_LIMIT,
    ChunkReader,
    ObjectSink,
    PipeReader,
    PipeSink,
    Reader,
    Sink,
    default_name,
)
from .handshake import HANDSHAKE_TIMEOUT, Link, handshake
from .link import RelayLink, open_link
from .offload import Offload, in_thread
from .reconnect import (
    DEFAULT_RECONNECT_TIMEOUT,
    IDLE_TIMEOUT,
    Reconnect,
    keeps_partial,
    reconnect_budget,
    retryable,
)

__all__ = [
    "send",
    "receive",
    "send_stream",
    "receive_stream",
    "send_object",
    "receive_object",
    "send_text",
    "receive_text",
    "receive_any",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_RECONNECT_TIMEOUT",
]

#: Bytes of file data per message. 64-256 KiB beat 1 MiB and more on loopback here.
DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 2**20
#: How long the sender waits, after eof, for the receiver to confirm.
DONE_TIMEOUT = 300.0
#: How long a receiver's user has to answer whether to take an offer (Progress.offer);
#: then the offer is declined (TransferTimeoutError, the sender is told).
OFFER_TIMEOUT = 300.0
#: How long the sender waits for the receiver to answer the manifest: its user's answer,
#: then prepare()'s look at the disk (destination.HASH_BUDGET, 20 s), with room to spare.
#: p2p-copy 0.1.x receivers never answer.
ACCEPT_TIMEOUT = OFFER_TIMEOUT + 60.0
#: How long the sender waits for ``resume`` after ``prefix_digests``: the receiver only
#: compares digests it computed before its ``accept``.
RESUME_TIMEOUT = 60.0
#: How long a sender with a generated code waits for the relay to confirm its room
#: (``waiting``) before showing the code anyway: relays older than 0.2 never confirm.
WAITING_GRACE = 5.0
#: Generated codes tried when their rooms turn out to be taken.
MAX_CODE_ATTEMPTS = 8

_T = TypeVar("_T")


def _optional(display: Progress, name: str, *args: object) -> None:
    """Call a Progress method added with resume if ``display`` has it (older ones do not)."""
    method = getattr(display, name, None)
    if method is not None:
        method(*args)


async def _backoff(retry: Reconnect, exc: P2PCopyError, display: Progress) -> None:
    """Wait before the next attempt, or re-raise ``exc`` once the budget is spent."""
    delay = retry.next_delay()
    if delay is None:
        raise exc
    _optional(display, "reconnecting", retry.attempt, delay, str(exc))
    await asyncio.sleep(delay)


async def _fail_politely(
    link: Link, proto: Sender | Receiver, exc: BaseException
) -> None:
    """Tell the peer why we stop, unless it already knows (it reported it, or the link died)."""
    if isinstance(exc, asyncio.CancelledError):
        # The cancellation itself propagates unchanged, so that asyncio.timeout(),
        # TaskGroup and the caller's own cancel() keep working around send/receive.
        error = CancelledError(f"The {link.role} cancelled the transfer.")
        await link.tell_peer(proto.error(error))
    elif isinstance(exc, P2PCopyError) and not exc.from_peer and not isinstance(
        exc, (PeerGoneError, ConnectionLostError)
    ):
        await link.tell_peer(proto.error(exc))


def _check_chunk_size(chunk_size: int) -> None:
    if not 1024 <= chunk_size <= MAX_CHUNK_SIZE:
        raise UsageError(f"chunk_size must be from 1 KiB to {MAX_CHUNK_SIZE} bytes.")


async def send(
    server: str,
    code: str | None,
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    cafile: str | None = None,
    progress: ProgressKind | Progress | None = None,
    wait_timeout: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt: bool = True,
    relay_token: str | None = None,
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    compress: ChooserMode = "auto",
) -> TransferResult:
    """Send files and folders to the receiver that uses the same ``code`` on ``server``.

    ``code`` None (or ``"auto"``) generates one, shown by the progress display and
    returned in the result. Returns once the receiver has verified every file and given
    it its final name. ``wait_timeout`` bounds the wait for the receiver to join
    (default: the relay's). ``encrypt=False`` speaks the plain protocol: the relay can
    then read everything. ``relay_token`` is a private relay's access token.

    When the connection drops, both sides reconnect with the same code for up to
    ``reconnect_timeout`` seconds (0: never) and continue each file from the prefix the
    receiver already holds; so does running the same send and receive again later.

    ``compress``: ``"auto"`` compresses data (zstd) while that moves it faster than
    sending it raw, measured as it goes (it pays on links slower than ~250 MB/s, not on
    loopback); ``"always"`` or ``"never"``. Chunks that do not shrink are sent raw anyway.

    ``idle_timeout``: a receiver that reads nothing for this many seconds (the relay and
    the network hold all they can) makes the send fail with TransferTimeoutError.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    options = _sender_options(server, code, chunk_size, cafile, wait_timeout, encrypt,
                              relay_token, reconnect_timeout, compress, idle_timeout)
    display = make_progress(progress, "send")
    return await _shown(display, _send(options, code, paths, display, chunk_size))


async def _shown(display: Progress, work: Awaitable[TransferResult]) -> TransferResult:
    """Await ``work``, which ``display`` may cancel, telling ``display`` how it ended."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    running = cancelled = False

    def cancel() -> None:
        nonlocal cancelled
        # A late click must not cancel whatever the task goes on to do after the transfer.
        if running and task is not None:
            cancelled = True
            task.cancel()

    def cancel_from_any_thread() -> None:
        # A widget's button may call this from another thread, or after the loop closed.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(cancel)

    display.bind_cancel(cancel_from_any_thread)
    running = True
    try:
        result = await work
    except asyncio.CancelledError as exc:
        if not cancelled or task is None:
            display.failed(exc)
            raise
        # The display's Cancel asked for this: it ends the transfer, not the caller's task.
        task.uncancel()
        error = CancelledError("The transfer was cancelled.")
        display.failed(error)
        raise error from None
    except BaseException as exc:
        display.failed(exc)
        raise
    finally:
        running = False
    display.finished(result)
    return result


@dataclass(frozen=True)
class _Options:
    """How to reach the relay and what to ask of it: the same for both sides."""

    server: str
    cafile: str | None
    wait_timeout: float | None
    encrypt: bool
    relay_token: str | None
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT
    #: Sender only: when to compress data chunks (CompressionChooser).
    compress: ChooserMode = "auto"
    #: Sender only: seconds a send may wait for a receiver that reads nothing.
    idle_timeout: float = IDLE_TIMEOUT


@dataclass
class _Outgoing:
    """What a sender sends: the manifest entries and, once accepted, their data stream."""

    entries: tuple[Entry, ...]
    #: Called once the receiver accepted, so that a pipe is not read before then, with
    #: the hash it picked (digests.py); files named in the first argument continue from
    #: their hasher's position.
    open_reader: Callable[[dict[int, ChainHasher], str], Reader]
    #: Hashes the first ``offset`` bytes of file number ``file`` (blocking) with the
    #: picked hash: a hasher holding them, or None if the source has fewer.
    prefix: Callable[[int, int, str], ChainHasher | None] | None = None
    #: False for a pipe: once read, it cannot be sent again on a new connection.
    once: bool = False
    opened: bool = False
    #: Checks the names (blocking; UsageError), once, while the receiver reads them.
    check: Callable[[], None] | None = None

    @classmethod
    def files(cls, sources: Sources) -> _Outgoing:
        sizes = [e.size for e in sources.entries if isinstance(e, FileEntry)]
        chains = SourceChains(sources.files, sizes, sources.identities)
        return cls(sources.entries,
                   lambda starts, digest: StreamReader(sources.files, sizes, starts, chains,
                                                       digest, sources.identities),
                   chains.prefix, check=lambda: check_names(sources.entries))

    def check_meanwhile(self) -> asyncio.Future[None] | None:
        """Start the name check in a thread, the first time only (None once it passed)."""
        check, self.check = self.check, None
        return asyncio.ensure_future(asyncio.to_thread(check)) if check else None

    def reader(self, starts: dict[int, ChainHasher], digest: str) -> Reader:
        self.opened = True
        return self.open_reader(starts, digest)

    @property
    def restartable(self) -> bool:
        return not (self.once and self.opened)

    def prefixes(self, held: Sequence[Prefix], digest: str) -> dict[int, ChainHasher]:
        """Our sources' hashes of the prefixes the receiver holds, those we could read
        (blocking: rereads what it must)."""
        chains: dict[int, ChainHasher] = {}
        if self.prefix is not None:
            for file, offset in held:
                chain = self.prefix(file, offset, digest)
                if chain is not None:
                    chains[file] = chain
        return chains

    def check_offers(self, offers: Sequence[Offer], digest: str) -> dict[int, ChainHasher]:
        """The offers of a receiver before ``held`` whose prefixes match our sources."""
        chains = self.prefixes([o.prefix for o in offers], digest)
        return {o.file: chains[o.file] for o in offers
                if o.file in chains and chains[o.file].hexdigest() == o.digest}

    @property
    def known_bytes(self) -> int:
        return sum(e.size for e in self.entries if isinstance(e, FileEntry))


async def _send(
    options: _Options,
    code: str | None,
    paths: Sequence[str | os.PathLike[str]],
    display: Progress,
    chunk_size: int,
) -> TransferResult:
    # The names are checked while the receiver reads the manifest (_send_once).
    sources = await asyncio.to_thread(collect_sources, paths, check=False)
    return await _send_outgoing(options, code, _Outgoing.files(sources), display, chunk_size)


@dataclass
class _Run:
    """What one send or receive keeps across its reconnects."""

    retry: Reconnect
    #: The peer was reached once: from now on a drop is worth a reconnect.
    paired: bool = False
    #: ``display.started`` was called.
    started: bool = False
    started_at: float = 0.0
    #: File bytes this run put on the wire (sender) over all attempts.
    wire_bytes: int = 0
    sink: Sink | None = None
    #: The error that started the current outage.
    drop: P2PCopyError | None = None


def _give_up_with_the_drop(run: _Run, exc: P2PCopyError) -> None:
    """Note the first error of an outage; if the peer never came back, raise that one."""
    if not run.retry.reconnecting:
        run.drop = exc
    elif isinstance(exc, TransferTimeoutError) and run.drop is not None:
        # "No peer joined in time" would hide why we were waiting at all.
        raise run.drop from exc


async def _send_outgoing(
    options: _Options,
    code: str | None,
    outgoing: _Outgoing,
    display: Progress,
    chunk_size: int,
) -> TransferResult:
    generated = code is None or code == GENERATE
    run = _Run(Reconnect(options.reconnect_timeout), started_at=time.monotonic())
    for attempt in range(MAX_CODE_ATTEMPTS):
        current = generate_code(attempt) if generated else str(code)
        try:
            return await _send_run(options, current, generated, outgoing, display, chunk_size,
                                   run)
        except CodeInUseError:
            # A generated code is only shown once its room is ours: pick another quietly.
            if run.paired or not generated or attempt == MAX_CODE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _send_run(
    options: _Options, code: str, generated: bool, outgoing: _Outgoing, display: Progress,
    chunk_size: int, run: _Run,
) -> TransferResult:
    """Send, reconnecting with the same code after a drop until done or out of budget."""
    while True:
        try:
            return await _send_once(options, code, generated, outgoing, display, chunk_size,
                                    run)
        except P2PCopyError as exc:
            _give_up_with_the_drop(run, exc)
            if not (run.paired and outgoing.restartable
                    and retryable(exc, run.retry.reconnecting)):
                raise
            await _backoff(run.retry, exc, display)


async def _wait_for_receiver(
    link: RelayLink, proto: Sender, show: Callable[[], None], generated: bool,
    wait_timeout: float | None,
) -> None:
    """Wait for ``ready``; show the code once the relay confirmed the room is ours."""
    shown = False
    if not generated:
        show()
        shown = True
    while True:
        grace = wait_timeout if shown else min(WAITING_GRACE, wait_timeout or WAITING_GRACE)
        try:
            reply = proto.receive(await link.recv(grace, "a receiver to join"))
        except TransferTimeoutError:
            if shown:
                raise
            reply = None  # a relay too old to confirm rooms: the code is probably ours
        if not shown:
            show()
            shown = True
        if isinstance(reply, Ready):
            return


async def _send_once(
    options: _Options,
    code: str,
    generated: bool,
    outgoing: _Outgoing,
    display: Progress,
    chunk_size: int,
    run: _Run,
) -> TransferResult:
    room = room_hash_hex(code)
    # Only the first connection of a generated code asks for a fresh room: a reconnect
    # goes back to the room the receiver knows.
    first = not run.paired
    proto = Sender(room, outgoing.entries, fresh=generated and first)
    async with open_link(options.server, room=room, cafile=options.cafile,
                         token=options.relay_token) as ws:
        plain = RelayLink(ws, "sender")
        link: Link = plain
        try:
            await plain.send(proto.hello())
            if first:
                display.waiting()
            await _wait_for_receiver(
                plain, proto,
                (lambda: display.showing_code(options.server, code)) if first else lambda: None,
                generated and first, run.retry.wait_timeout(options.wait_timeout))
            if first:
                run.started_at = time.monotonic()
            run.paired = True
            if options.encrypt:
                link = await handshake(plain, code, timeout=HANDSHAKE_TIMEOUT,
                                       waiting_for="the receiver's key exchange")
            for part in proto.manifest():
                await link.send(part)
            checking = outgoing.check_meanwhile()
            try:
                reply = await link.recv(
                    ACCEPT_TIMEOUT,
                    "the receiver to answer the list of files (a receiver running p2p-copy "
                    "0.1.x never answers: ask them to upgrade with pip install -U p2p-copy)",
                )
            finally:
                if checking is not None:
                    # A name we cannot send is the cause, whatever the receiver answered.
                    await checking
            proto.receive(reply)
            starts: dict[int, ChainHasher] = {}
            if proto.state is SenderState.PROVING:
                # We show our digests; the receiver compares and says which prefixes match.
                chains = await asyncio.to_thread(outgoing.prefixes, proto.held, proto.digest)
                await link.send(proto.prefix_digests(
                    [Offer(f, c.position, c.hexdigest()) for f, c in chains.items()]))
                proto.receive(await link.recv(
                    RESUME_TIMEOUT, "the receiver to compare the parts it already holds"))
                starts = {file: chains[file] for file in proto.starts}
            elif proto.state is SenderState.VERIFYING:
                # A receiver before ``held`` showed its digests: we compare.
                starts = await asyncio.to_thread(outgoing.check_offers, proto.offers,
                                                 proto.digest)
                await link.send(proto.resume([o for o in proto.offers if o.file in starts]))
            run.retry.connected()
            files = data_entries(outgoing.entries)
            if not run.started:
                run.started = True
                display.started(outgoing.known_bytes, len(files))
            resumed = sum(proto.starts.values())
            if resumed or run.retry.attempt:
                _optional(display, "resumed", resumed)

            def results(digests: list[str]) -> tuple[FileResult, ...]:
                # A stream's size is what was sent after the files before it.
                stream_size = proto.bytes_sent - (outgoing.known_bytes
                                                  - sum(proto.starts.values()))
                return tuple(
                    FileResult(f.path, f.size if isinstance(f, FileEntry) else stream_size, d,
                               proto.digest)
                    for f, d in zip(files, digests, strict=True)
                )

            done = await _stream_with_watch(
                link, proto, lambda: outgoing.reader(starts, proto.digest), display,
                chunk_size, options, results)
        except BaseException as exc:
            await _fail_politely(link, proto, exc)
            raise
        finally:
            run.wire_bytes += proto.bytes_sent
    for result in done:
        display.file_done(result)
    return TransferResult("sender", done, run.wire_bytes,
                          time.monotonic() - run.started_at, code=code)


async def _stream_with_watch(
    link: Link,
    proto: Sender,
    open_reader: Callable[[], Reader],
    display: Progress,
    chunk_size: int,
    options: _Options,
    outcome: Callable[[list[str]], _T],
) -> _T:
    """Stream all data and eof while listening for the receiver; return ``outcome`` of the
    digests once the receiver confirmed (made while it still writes: 10,000 files' results
    take ~10 ms, which would otherwise follow its ``done``). A send that waits
    ``options.idle_timeout`` for a receiver that reads nothing ends it."""
    incoming = asyncio.ensure_future(link.recv())
    watched = _WatchedLink(link)
    pump = asyncio.ensure_future(_stream(watched, proto, open_reader, display, chunk_size,
                                         options.compress))
    stall = asyncio.ensure_future(watched.stalled(options.idle_timeout))
    try:
        await asyncio.wait({incoming, pump, stall}, return_when=asyncio.FIRST_COMPLETED)
        if stall.done():
            stall.result()  # raises: the receiver stopped reading
        if pump.done() and pump.exception() is None:
            result = outcome(pump.result())
            async with asyncio.timeout(DONE_TIMEOUT):
                proto.receive(await incoming)
            return result
        if not incoming.done() and isinstance(pump.exception(), (PeerGoneError,
                                                                 ConnectionLostError)):
            # The receiver may have said why before it left: prefer its own words.
            await asyncio.wait({incoming}, timeout=2)
        if incoming.done():
            proto.receive(incoming.result())  # raises: the receiver spoke out of turn
        pump.result()  # raises the pump's error
        raise AssertionError("unreachable: the pump ended first, with an error")
    except TimeoutError:
        raise TransferTimeoutError(
            f"The receiver did not confirm within {DONE_TIMEOUT:g} s after the last byte."
        ) from None
    finally:
        for task in (incoming, pump, stall):
            task.cancel()
        await asyncio.gather(incoming, pump, stall, return_exceptions=True)


class _WatchedLink:
    """The sender's link, counting sends so that a watchdog can tell a stuck one.

    A receiver that stops reading (or a relay that holds its messages) leaves the send
    waiting for buffer space forever; the receiver's own side has IDLE_TIMEOUT for the
    opposite case. The watchdog samples instead of timing each send, which keeps the
    per-chunk cost at two attribute writes.
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self.sent = 0
        self.sending = False

    async def send(self, message: str | bytes | memoryview) -> None:
        self.sending = True
        await self.link.send(message)
        self.sending = False
        self.sent += 1

    async def stalled(self, idle_timeout: float) -> None:
        """Return never; raise TransferTimeoutError once one send waited ``idle_timeout``."""
        loop = asyncio.get_running_loop()
        seen, since = -1, loop.time()
        while True:
            await asyncio.sleep(idle_timeout / 8)
            now = loop.time()
            if not self.sending or self.sent != seen:
                seen, since = self.sent, now
            elif now - since >= idle_timeout:
                raise TransferTimeoutError(
                    f"The receiver has not read anything for {idle_timeout:g} s, so p2p-copy "
                    "gave up. Check that it is still running (a paused terminal or a full "
                    "disk can stall it), then run both sides again; what arrived is resumed."
                )


async def _stream(
    link: _WatchedLink,
    proto: Sender,
    open_reader: Callable[[], Reader],
    display: Progress,
    chunk_size: int,
    compress: ChooserMode,
) -> list[str]:
    reader = open_reader()
    buffer = bytearray(1 + chunk_size)
    # Files and memory are read inline while that is quick; a pipe (stdin) may block for
    # as long as its writer pauses: always a thread.
    offload = Offload(threaded=isinstance(reader, PipeReader))
    chooser = CompressionChooser(compress)
    chooser.observe(0, time.monotonic())
    digests: list[str] = []
    try:
        while True:
            length, finished = await offload(reader.read_into, buffer)
            if length:
                # Compressing (~1 ms a chunk) stays on the loop: it is CPU, not waiting.
                await link.send(proto.frame_data(buffer, length, compress=chooser.compress))
                chooser.observe(length, time.monotonic())
                display.advance(length)
            if finished:
                digests.extend(finished)
                for message in proto.checksums(finished):
                    await link.send(message)
            if reader.exhausted:
                break
        await link.send(proto.eof())
        display.verifying()
    finally:
        reader.close()
    return digests


async def receive(
    server: str,
    code: str,
    dest: str | os.PathLike[str] = ".",
    *,
    overwrite: bool = False,
    cafile: str | None = None,
    progress: ProgressKind | Progress | None = None,
    wait_timeout: float | None = None,
    encrypt: bool = True,
    relay_token: str | None = None,
    policy: ReceivePolicy | None = None,
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
) -> TransferResult:
    """Receive what the sender with the same ``code`` sends, into the folder ``dest``.

    ``dest`` is created if it does not exist. Files appear under their final names only
    once verified (whole-file BLAKE3, or SHA-256 with a peer that lacks it). Existing
    files are kept unless ``overwrite`` is true; one with the size and time the sender
    announces is checked against the sender's and, if equal, kept and not sent again.
    ``policy`` limits what is accepted (files, bytes, depth); an offer over it is refused
    before any byte. ``encrypt``, ``relay_token`` and ``reconnect_timeout`` as for send().

    When the connection drops (and reconnecting does not help), a side cancels or times
    out, partial files stay as hidden ``.NAME.p2p-copy-part`` files with a
    ``.p2p-copy-resume`` sidecar, so that running the same receive again continues them;
    a definitive error (integrity, unsafe path, policy, wrong code, tampering) removes them.
    """
    options = _receiver_options(server, code, cafile, wait_timeout, encrypt, relay_token,
                                reconnect_timeout)
    display = make_progress(progress, "receive")
    root = Path(dest)
    made: set[Path] = set()  # folders made by any attempt: finish() gives them their modes

    def sink(entries: Sequence[Entry], digest: str) -> Sink:
        return Destination(root, entries, overwrite=overwrite, algorithm=digest,
                           made_folders=made)

    return await _shown(display, _receive(options, code, sink, policy, display))


def _receiver_options(
    server: str, code: str, cafile: str | None, wait_timeout: float | None, encrypt: bool,
    relay_token: str | None, reconnect_timeout: float | None,
) -> _Options:
    if code is None or code == GENERATE:
        raise UsageError("The receiver needs the code the sender shows.")
    room_hash_hex(code)  # a malformed code is a usage error before anything starts
    return _Options(server, cafile, wait_timeout, encrypt, relay_token,
                    reconnect_budget(reconnect_timeout))


async def _receive(
    options: _Options,
    code: str,
    make_sink: Callable[[Sequence[Entry], str], Sink],
    policy: ReceivePolicy | None,
    display: Progress,
) -> TransferResult:
    """Receive into the sink that ``make_sink(entries, digest)`` picks for the manifest (it
    may refuse it); ``digest`` is the hash the receiver picked (digests.py).

    After a drop, reconnect with the same code and start over from the manifest: the new
    sink finds on disk what the last one kept (Sink.suspend) and offers it.
    """
    run = _Run(Reconnect(options.reconnect_timeout), started_at=time.monotonic())
    while True:
        try:
            return await _receive_once(options, code, make_sink, policy, display, run)
        except P2PCopyError as exc:
            _give_up_with_the_drop(run, exc)
            restartable = run.sink is None or run.sink.restartable
            if not (run.paired and restartable and retryable(exc, run.retry.reconnecting)):
                raise
            await _backoff(run.retry, exc, display)


async def _receive_once(
    options: _Options,
    code: str,
    make_sink: Callable[[Sequence[Entry], str], Sink],
    policy: ReceivePolicy | None,
    display: Progress,
    run: _Run,
) -> TransferResult:
    room = room_hash_hex(code)
    proto = Receiver(room, policy=policy)
    destination: Sink | None = None
    offload = Offload(threaded=True)
    first = not run.paired
    async with open_link(options.server, room=room, cafile=options.cafile,
                         token=options.relay_token) as ws:
        plain = RelayLink(ws, "receiver")
        link: Link = plain
        try:
            await plain.send(proto.hello())
            if first:
                display.waiting()
            timeout = run.retry.wait_timeout(options.wait_timeout)
            waiting_for = "a sender to join"
            if options.encrypt:
                link = await handshake(plain, code, timeout=timeout, waiting_for=waiting_for)
                run.paired = True
                timeout, waiting_for = IDLE_TIMEOUT, "the sender to send more"
            finished = False
            while not finished:
                message = await link.recv(timeout, waiting_for)
                events = proto.receive(message)
                if proto.sender_spoke:
                    run.paired = True
                    # Once paired, a sender that stays connected but sends nothing is stuck.
                    timeout, waiting_for = IDLE_TIMEOUT, "the sender to send more"
                batch: list[FileData | FileCompleted] = []
                for event in events:
                    if isinstance(event, (FileData, FileCompleted)):
                        batch.append(event)
                        continue
                    assert not batch  # the other events never follow data in one message
                    if isinstance(event, ManifestReceived):
                        if first:
                            run.started_at = time.monotonic()
                        sink = make_sink(event.entries, proto.digest)
                        # Before any byte reaches the disk; once per offer, not per attempt.
                        if isinstance(sink, Destination) and not (
                                isinstance(run.sink, Destination)
                                and run.sink.entries == event.entries):
                            await _consent(display, event.entries, policy, link, proto)
                        destination = run.sink = sink
                        # Files and objects are written inline while that is quick; a
                        # pipe (stdout) may block as long as its reader pauses: a thread.
                        offload = Offload(threaded=isinstance(destination, PipeSink))
                        await in_thread(destination.prepare)
                        await link.send(proto.accept(destination.offers()))
                        if not run.started:
                            run.started = True
                            display.started(event.total_bytes, len(event.data))
                        if not proto.starts and run.retry.attempt:
                            _optional(display, "resumed", 0)
                        run.retry.connected()
                    elif isinstance(event, ResumeAgreed):
                        assert destination is not None
                        await in_thread(destination.resume, event.starts, event.differs)
                        if proto.state is ReceiverState.ANSWER_RESUME:
                            await link.send(proto.resume())
                        _optional(display, "resumed", sum(event.starts.values()))
                    else:
                        assert destination is not None
                        display.verifying()
                        await in_thread(destination.finish)
                        await link.send(proto.done())
                        finished = True
                if batch:
                    assert destination is not None
                    await _write(destination, batch, display, offload)
        except BaseException as exc:
            if destination is not None:
                if keeps_partial(exc):
                    # Kept for the next attempt, in this run or a later one.
                    await in_thread(destination.suspend)
                else:
                    await in_thread(destination.abort)
            await _fail_politely(link, proto, exc)
            raise
    assert destination is not None
    return TransferResult(
        "receiver",
        tuple(destination.results),
        sum(r.size for r in destination.results),
        time.monotonic() - run.started_at,
        destination=destination.root if isinstance(destination, Destination) else None,
        code=code,
    )


async def _consent(display: Progress, entries: Sequence[Entry], policy: ReceivePolicy | None,
                   link: Link, proto: Receiver) -> None:
    """Show the offer; take the person's answer if the display asks one, else the policy's."""
    summary = summarize_offer(entries)
    offer = getattr(display, "offer", None)  # displays from before 0.6 cannot ask
    question = offer(summary) if offer is not None else None
    if question is None:
        check_offer(summary, policy or ReceivePolicy())
    elif not await _answer(question, link, proto):
        raise CancelledError("The receiver declined the offer; nothing was written.")


async def _answer(question: Awaitable[bool], link: Link, proto: Receiver) -> bool:
    """The person's answer, unless the sender, who waits for ``accept``, gives up first."""
    asking = asyncio.ensure_future(question)
    incoming = asyncio.ensure_future(link.recv())
    try:
        done, _ = await asyncio.wait({asking, incoming}, timeout=OFFER_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if asking in done:
            return bool(asking.result())
        if incoming in done:
            proto.receive(incoming.result())  # nothing but the sender's error may come now
            raise RemoteProtocolError("The sender spoke before its offer was answered.")
        raise TransferTimeoutError(
            f"Nobody answered within {OFFER_TIMEOUT:g} s whether to take the offer, so it "
            "was declined; nothing was written. Run both sides again to retry."
        )
    finally:
        for task in (asking, incoming):
            task.cancel()
        await asyncio.gather(asking, incoming, return_exceptions=True)


async def _write(
    destination: Sink, batch: Sequence[FileData | FileCompleted], display: Progress,
    offload: Offload,
) -> None:
    completed = await offload(destination.apply, batch)
    display.advance(sum(len(e.data) for e in batch if isinstance(e, FileData)))
    for result in completed:
        display.file_done(result)



# --- pipes, text and objects ------------------------------------------------------------


def _sender_options(
    server: str, code: str | None, chunk_size: int, cafile: str | None,
    wait_timeout: float | None, encrypt: bool, relay_token: str | None,
    reconnect_timeout: float | None, compress: ChooserMode = "auto",
    idle_timeout: float = IDLE_TIMEOUT,
) -> _Options:
    """The options of a send, checked before anything starts."""
    _check_chunk_size(chunk_size)
    if compress not in COMPRESS_MODES:
        raise UsageError(f"compress must be one of {', '.join(COMPRESS_MODES)}, "
                         f"not {compress!r}.")
    if code is not None and code != GENERATE:
        room_hash_hex(code)  # a malformed code is a usage error before anything starts
    if not idle_timeout > 0:  # NaN too
        raise UsageError("idle_timeout must be a positive number of seconds.")
    return _Options(server, cafile, wait_timeout, encrypt, relay_token,
                    reconnect_budget(reconnect_timeout), compress, idle_timeout)


def _entry_name(name: str) -> str:
    try:
        check_entries([StreamEntry(name)])
    except UnsafePathError as exc:
        raise UsageError(f"Cannot send under the name {display_name(name)!r}: {exc}") from None
    return name


async def send_stream(
    server: str,
    code: str | None,
    source: BinaryIO,
    *,
    name: str = "stdin",
    cafile: str | None = None,
    progress: ProgressKind | Progress | None = None,
    wait_timeout: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt: bool = True,
    relay_token: str | None = None,
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    compress: ChooserMode = "auto",
) -> TransferResult:
    """Send what can be read from the binary file ``source`` (a pipe) until its end.

    The length need not be known: the receiver learns it, and the digest, at the end.
    ``source`` is read in chunks from a worker thread, never whole, and only once the
    receiver has accepted. A receiver that saves files gets it as ``name``. Other
    arguments as for send().
    """
    options = _sender_options(server, code, chunk_size, cafile, wait_timeout, encrypt,
                              relay_token, reconnect_timeout, compress, idle_timeout)
    # A pipe is read once: after a drop mid-stream there is nothing to send again.
    outgoing = _Outgoing((StreamEntry(_entry_name(name)),),
                         lambda _, digest: PipeReader(source, digest),
                         once=True)
    display = make_progress(progress, "send")
    return await _shown(display, _send_outgoing(options, code, outgoing, display, chunk_size))


async def receive_stream(
    server: str,
    code: str,
    out: BinaryIO,
    *,
    cafile: str | None = None,
    progress: ProgressKind | Progress | None = None,
    wait_timeout: float | None = None,
    encrypt: bool = True,
    relay_token: str | None = None,
    max_bytes: int | None = None,
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
) -> TransferResult:
    """Write the single file, stream or object the sender sends to the binary file ``out``.

    Nothing touches the disk. Bytes are written as they arrive; the digest is checked at
    the end, and a mismatch raises IntegrityError *after* the bytes were written: a pipe
    cannot be unwritten, so treat the output as valid only if this returns. More than one
    file, or more than ``max_bytes``, is refused (PolicyError).
    """
    options = _receiver_options(server, code, cafile, wait_timeout, encrypt, relay_token,
                               reconnect_timeout)
    display = make_progress(progress, "receive")
    policy = ReceivePolicy(max_bytes=max_bytes)
    return await _shown(
        display, _receive(options, code, lambda entries, digest: PipeSink(entries, out, digest),
                          policy, display))


async def send_object(
    server: str,
    code: str | None,
    obj: object,
    *,
    name: str | None = None,
    cafile: str | None = None,
    progress: ProgressKind | Progress | None = None,
    wait_timeout: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt: bool = True,
    relay_token: str | None = None,
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
) -> TransferResult:
    """Send a Python object to the receiver's receive_object(), without pickle.

    Supported: bytes, str, JSON values, NumPy arrays, pandas DataFrames, pyarrow Tables and
    RecordBatches (objects.py says how each travels); anything else is a UsageError before
    anything starts. Large arrays and tables are streamed from their own memory, so do not
    modify ``obj`` until this returns. A receiver that saves files gets the bytes as
    ``name`` (default by kind: array.npy, dataframe.arrows, ...). Other arguments as for
    send().
    """
    options = _sender_options(server, code, chunk_size, cafile, wait_timeout, encrypt,
                              relay_token, reconnect_timeout, idle_timeout=idle_timeout)
    encoded = await asyncio.to_thread(encode_object, obj, chunk_size=chunk_size)
    path = _entry_name(name if name is not None else default_name(encoded.meta["kind"]))
    entry = FileEntry(path, encoded.size, meta=encoded.meta)
    # An object starts over from its first byte after a drop (each chunks() call does).
    outgoing = _Outgoing((entry,), lambda _, digest: ChunkReader(encoded.chunks(),
                                                                 encoded.size, digest))
    display = make_progress(progress, "send")
    return await _shown(display, _send_outgoing(options, code, outgoing, display, chunk_size))


async def receive_object(
    server: str,
    code: str,
    *,
    max_bytes: int | None = MEMORY_LIMIT,
    cafile: str | None = None,
    progress: ProgressKind | Progress | None = None,
    wait_timeout: float | None = None,
    encrypt: bool = True,
    relay_token: str | None = None,
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
) -> object:
    """Receive the object the sender's send_object() sends; nothing touches the disk.

    The object is rebuilt from data-only formats (never pickle), after its description was
    checked and before it is returned, its digest. A plain file or stream arrives as
    ``bytes``. ``max_bytes`` caps the bytes held: 32 MiB by default (streams.MEMORY_LIMIT),
    None for as much as this machine's memory. A bigger offer is refused before anything
    is allocated, a stream once it grows past it (PolicyError).
    """
    return await _receive_one(server, code, None, max_bytes, cafile, progress, wait_timeout,
                              encrypt, relay_token, reconnect_timeout,
                              "pass a larger max_bytes to receive_object()")


async def send_text(
    server: str,
    code: str | None,
    text: str,
    *,
    name: str = "text.txt",
    cafile: str | None = None,
    progress: ProgressKind | Progress | None = None,
    wait_timeout: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encrypt: bool = True,
    relay_token: str | None = None,
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
) -> TransferResult:
    """Send ``text``: receive_text() returns it, ``p2p-copy receive`` prints it."""
    if not isinstance(text, str):
        raise UsageError(f"send_text() sends a str, not a {type(text).__name__}.")
    return await send_object(server, code, text, name=name, cafile=cafile, progress=progress,
                             wait_timeout=wait_timeout, chunk_size=chunk_size, encrypt=encrypt,
                             relay_token=relay_token, reconnect_timeout=reconnect_timeout,
                             idle_timeout=idle_timeout)


async def receive_text(
    server: str,
    code: str,
    *,
    max_bytes: int | None = MEMORY_LIMIT,
    cafile: str | None = None,
    progress: ProgressKind | Progress | None = None,
    wait_timeout: float | None = None,
    encrypt: bool = True,
    relay_token: str | None = None,
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
) -> str:
    """Receive the text the sender's send_text() (or ``p2p-copy send --text``) sends.

    Anything but a text, or a text of more than ``max_bytes`` of UTF-8 (as for
    receive_object()), is refused before any byte moves (PolicyError).
    """
    text = await _receive_one(server, code, "str", max_bytes, cafile, progress,
                              wait_timeout, encrypt, relay_token, reconnect_timeout,
                              "pass a larger max_bytes to receive_text()")
    assert isinstance(text, str)
    return text


async def _receive_one(
    server: str, code: str, kind: str | None, max_bytes: int | None,
    cafile: str | None, progress: ProgressKind | Progress | None,
    wait_timeout: float | None, encrypt: bool, relay_token: str | None,
    reconnect_timeout: float | None, raise_with: str,
) -> object:
    options = _receiver_options(server, code, cafile, wait_timeout, encrypt, relay_token,
                               reconnect_timeout)
    display = make_progress(progress, "receive")
    sinks: list[ObjectSink] = []

    def sink(entries: Sequence[Entry], digest: str) -> Sink:
        sinks.append(_object_sink(entries, max_bytes, kind, digest, raise_with))
        return sinks[-1]

    # The sink caps a stream itself, with a message about objects rather than files.
    await _shown(display, _receive(options, code, sink, None, display))
    return sinks[-1].value


def _object_sink(entries: Sequence[Entry], limit: int | None, kind: str | None,
                 digest: str, raise_with: str) -> ObjectSink:
    sink = ObjectSink(entries, limit, digest, raise_with=raise_with)
    if kind is not None and sink.kind != kind:
        raise PolicyError(
            f"The sender offers an object of kind {sink.kind!r}; this receiver takes only "
            f"{kind!r}. Use p2p_copy.receive_object() for any object, or p2p_copy.receive() "
            "for files."
        )
    return sink


async def receive_any(
    server: str,
    code: str,
    dest: str | os.PathLike[str] = ".",
    *,
    out: BinaryIO | None = None,
    overwrite: bool = False,
    cafile: str | None = None,
    progress: ProgressKind | Progress | None = None,
    wait_timeout: float | None = None,
    encrypt: bool = True,
    relay_token: str | None = None,
    policy: ReceivePolicy | None = None,
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    max_text_bytes: int | None = MEMORY_LIMIT,
) -> tuple[TransferResult, str | None]:
    """The CLI's receive: to ``out`` if given, else a text is returned, else files to ``dest``.

    What the sender offers decides between a text and files, once its manifest arrived.
    A text is held in memory: more than ``max_text_bytes`` of it (as receive_text()'s
    ``max_bytes``) is refused before any byte moves (PolicyError).
    """
    options = _receiver_options(server, code, cafile, wait_timeout, encrypt, relay_token,
                               reconnect_timeout)
    display = make_progress(progress, "receive")
    texts: list[ObjectSink] = []
    made: set[Path] = set()  # folders made by any attempt: finish() gives them their modes

    def sink(entries: Sequence[Entry], digest: str) -> Sink:
        if out is not None:
            return PipeSink(entries, out, digest)
        if len(entries) == 1 and isinstance(entries[0], FileEntry) and entries[0].meta \
                and entries[0].meta.get("kind") == "str":
            texts.append(_object_sink(
                entries, max_text_bytes, "str", digest,
                "raise the limit: --max-text on the command line, "
                "receive_any(max_text_bytes=...) in Python"))
            return texts[-1]
        return Destination(Path(dest), entries, overwrite=overwrite, algorithm=digest,
                           made_folders=made)

    result = await _shown(display, _receive(options, code, sink, policy, display))
    text = texts[-1].value if texts else None
    assert text is None or isinstance(text, str)
    return result, text
