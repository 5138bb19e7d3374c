"""The sender's driver: the Sender machine (protocol/transfer.py) over a relay link.

It connects, waits for the receiver, runs the key exchange, sends the manifest, answers
the receiver's resume offers, streams the data and waits for ``done``; after a drop it
reconnects with the same code and continues from what the receiver holds. Files are read
by storage/ (inline while that is quick, in a thread otherwise: peer/offload.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..display.progress import Progress
from ..errors import (
    CodeInUseError,
    ConnectionLostError,
    P2PCopyError,
    PeerGoneError,
    TransferTimeoutError,
    UnsafePathError,
    UsageError,
)
from ..protocol.codes import GENERATE, generate_code, normalize_code, room_hash_hex
from ..protocol.compression import ChooserMode, CompressionChooser
from ..protocol.messages import Entry, FileEntry, StreamEntry
from ..protocol.paths import check_entries, display_name
from ..protocol.resume import ChainHasher, Offer, Prefix
from ..protocol.transfer import (
    AcceptReceived,
    Acked,
    ReceiverJoined,
    ResumeAgreed,
    Sender,
    TransferConfirmed,
    data_entries,
)
from ..results import FileResult, TransferResult
from ..storage.sources import SourceChains, Sources, StreamReader, check_names, collect_sources
from ..storage.streams import PipeReader, Reader
from .handshake import HANDSHAKE_TIMEOUT, Link, SealedLink, handshake
from .lanes import LANES_NOW_ENV, SenderLanes, ping_early
from .link import RelayLink
from .offload import Offload
from .options import Options
from .reconnect import Reconnect, retryable
from .session import (
    OFFER_TIMEOUT,
    Run,
    backoff,
    digests_from_environment,
    fail_politely,
    give_up_with_the_drop,
    optional,
    relay_link,
)

__all__ = ["Outgoing", "entry_name", "send_files", "send_outgoing"]

#: How long the sender waits, after eof, for the receiver to confirm.
DONE_TIMEOUT = 300.0
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


@dataclass
class Outgoing:
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
    def files(cls, sources: Sources) -> Outgoing:
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


async def send_files(
    server: str,
    code: str | None,
    paths: Sequence[str | os.PathLike[str]],
    options: Options,
    display: Progress,
) -> TransferResult:
    """Send the files and folders at ``paths`` (see send_outgoing)."""
    # The names are checked while the receiver reads the manifest (_send_once).
    sources = await asyncio.to_thread(collect_sources, paths, check=False)
    return await send_outgoing(server, code, Outgoing.files(sources), options, display)


async def send_outgoing(
    server: str,
    code: str | None,
    outgoing: Outgoing,
    options: Options,
    display: Progress,
) -> TransferResult:
    """Send ``outgoing`` with ``code`` (None or "auto": generated) through ``server``."""
    generated = code is None or code == GENERATE
    if not generated:
        # Shown and returned as both sides use it, so that a peer older than 0.6, which
        # does not normalise, pairs when its user types the code as shown (protocol §4.1).
        code = normalize_code(str(code))
    # The environment is read once, here: the machine takes what it says as an argument.
    run = Run(Reconnect(options.reconnect_budget), started_at=time.monotonic(),
              digests=digests_from_environment())
    run.lanes_now = int(os.environ.get(LANES_NOW_ENV) or 0)
    for attempt in range(MAX_CODE_ATTEMPTS):
        current = generate_code(attempt) if generated else str(code)
        try:
            return await _send_run(server, options, current, generated, outgoing, display,
                                   run)
        except CodeInUseError:
            # A generated code is only shown once its room is ours: pick another quietly.
            if run.paired or not generated or attempt == MAX_CODE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _send_run(
    server: str, options: Options, code: str, generated: bool, outgoing: Outgoing,
    display: Progress, run: Run,
) -> TransferResult:
    """Send, reconnecting with the same code after a drop until done or out of budget."""
    while True:
        try:
            return await _send_once(server, options, code, generated, outgoing, display, run)
        except P2PCopyError as exc:
            give_up_with_the_drop(run, exc)
            if not (run.paired and outgoing.restartable
                    and retryable(exc, run.retry.reconnecting)):
                raise
            await backoff(run.retry, exc, display)


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
            events = proto.receive(await link.recv(grace, "a receiver to join"))
        except TransferTimeoutError:
            if shown:
                raise
            events = []  # a relay too old to confirm rooms: the code is probably ours
        if not shown:
            show()
            shown = True
        if any(isinstance(event, ReceiverJoined) for event in events):
            return


async def _send_once(
    server: str,
    options: Options,
    code: str,
    generated: bool,
    outgoing: Outgoing,
    display: Progress,
    run: Run,
) -> TransferResult:
    room = room_hash_hex(code)
    # Only the first connection of a generated code asks for a fresh room: a reconnect
    # goes back to the room the receiver knows.
    first = not run.paired
    # Lanes need the handshake's key (§6.12): none without encryption.
    proto = Sender(room, outgoing.entries, fresh=generated and first, digests=run.digests,
                   lanes=options.lanes if options.encrypt else 1)
    async with relay_link(server, room, options, "sender") as plain:
        link: Link = plain
        try:
            await plain.send(proto.hello())
            if first:
                display.waiting()
            await _wait_for_receiver(
                plain, proto,
                (lambda: display.showing_code(server, code)) if first else lambda: None,
                generated and first,
                run.retry.wait_timeout(options.wait_timeout, time.monotonic()))
            if first:
                run.started_at = time.monotonic()
            run.pair(display)
            if options.encrypt:
                link = await handshake(plain, code, timeout=HANDSHAKE_TIMEOUT,
                                       waiting_for="the receiver's key exchange")
            pong = await ping_early(link, proto, outgoing.known_bytes)
            for part in proto.manifest():
                await link.send(part)
            checking = outgoing.check_meanwhile()
            try:
                reply = await link.recv(
                    ACCEPT_TIMEOUT,
                    "the receiver to answer the list of files (a receiver running p2p-copy "
                    "0.1.x never answers: ask them to upgrade)",
                )
            finally:
                if checking is not None:
                    # A name we cannot send is the cause, whatever the receiver answered.
                    await checking
            # WAIT_ACCEPT admits only an accept, and then WAIT_RESUME only a resume: the
            # one event each can bring.
            [accepted] = proto.receive(reply)
            assert isinstance(accepted, AcceptReceived)
            digest = accepted.digest
            #: The agreed prefixes: file number -> our hasher, which holds them.
            starts: dict[int, ChainHasher] = {}
            if accepted.held:
                # We show our digests; the receiver compares and says which prefixes match.
                chains = await asyncio.to_thread(outgoing.prefixes, accepted.held, digest)
                await link.send(proto.prefix_digests(
                    [Offer(f, c.position, c.hexdigest()) for f, c in chains.items()]))
                [agreed] = proto.receive(await link.recv(
                    RESUME_TIMEOUT, "the receiver to compare the parts it already holds"))
                assert isinstance(agreed, ResumeAgreed)
                starts = {file: chains[file] for file in agreed.starts}
            elif accepted.offers is not None:
                # A receiver before ``held`` showed its digests: we compare.
                starts = await asyncio.to_thread(outgoing.check_offers, accepted.offers,
                                                 digest)
                await link.send(proto.resume([o for o in accepted.offers if o.file in starts]))
            run.retry.connected()
            files = data_entries(outgoing.entries)
            if not run.started:
                run.started = True
                display.started(outgoing.known_bytes, len(files))
            resumed = sum(chain.position for chain in starts.values())
            if resumed or run.retry.attempt:
                optional(display, "resumed", resumed)

            def results(digests: list[str]) -> tuple[FileResult, ...]:
                # A stream's size is what was sent after the files before it.
                stream_size = proto.bytes_sent - (outgoing.known_bytes - resumed)
                return tuple(
                    FileResult(f.path, f.size if isinstance(f, FileEntry) else stream_size, d,
                               digest)
                    for f, d in zip(files, digests, strict=True)
                )

            lanes = None
            if proto.lanes > 1 and isinstance(link, SealedLink):
                lanes = SenderLanes(proto, link, server, options, force=run.lanes_now,
                                    pong=pong)
            try:
                done = await _stream_with_watch(
                    link, proto, lambda: outgoing.reader(starts, digest), display,
                    options, results, lanes)
            finally:
                if lanes is not None:
                    run.lanes_used = max(run.lanes_used, lanes.used)
                    await lanes.close()
        except BaseException as exc:
            await fail_politely(link, proto, exc)
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
    options: Options,
    outcome: Callable[[list[str]], _T],
    lanes: SenderLanes | None = None,
) -> _T:
    """Stream all data and eof while listening for the receiver; return ``outcome`` of the
    digests once the receiver confirmed (made while it still writes: 10,000 files' results
    take ~10 ms, which would otherwise follow its ``done``). A send that waits
    ``options.idle_timeout`` for a receiver that reads nothing (or, with a window, acks
    nothing) ends it."""
    acked = asyncio.Event()
    listener = asyncio.ensure_future(_listen(link, proto, acked))
    watched = _WatchedLink(link)
    pump = asyncio.ensure_future(_stream(watched, proto, open_reader, display,
                                         options.chunk_size, options.compress, acked, lanes))
    stall = asyncio.ensure_future(watched.stalled(options.idle_timeout))
    try:
        await asyncio.wait({listener, pump, stall}, return_when=asyncio.FIRST_COMPLETED)
        if stall.done():
            stall.result()  # raises: the receiver stopped reading
        if listener.done() and listener.exception() is None:
            await pump  # ``done`` overtook the pump on its way out of eof's send
        if pump.done() and pump.exception() is None:
            result = outcome(pump.result())
            async with asyncio.timeout(DONE_TIMEOUT):
                await listener  # returns at ``done``; WAIT_DONE admits only it (and acks)
            return result
        if not listener.done() and isinstance(pump.exception(), (PeerGoneError,
                                                                 ConnectionLostError)):
            # The receiver may have said why before it left: prefer its own words.
            await asyncio.wait({listener}, timeout=2)
        if listener.done():
            listener.result()  # raises: the receiver spoke out of turn, or said why it stops
        pump.result()  # raises the pump's error
        raise AssertionError("unreachable: the pump ended first, with an error")
    except TimeoutError:
        raise TransferTimeoutError(
            f"The receiver did not confirm within {DONE_TIMEOUT:g} s after the last byte."
        ) from None
    finally:
        for task in (listener, pump, stall):
            task.cancel()
        await asyncio.gather(listener, pump, stall, return_exceptions=True)


async def _listen(link: Link, proto: Sender, acked: asyncio.Event) -> None:
    """Take what the receiver says while the data flows, until its ``done``: an ``ack``
    sets ``acked`` (the window moved); anything out of turn, or its error, raises."""
    while True:
        for event in proto.receive(await link.recv()):
            if isinstance(event, Acked):
                acked.set()
            elif isinstance(event, TransferConfirmed):
                return


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

    async def window(self, proto: Sender, acked: asyncio.Event, *, all_acked: bool = False,
                     ) -> None:
        """Wait until the receiver's window lets the next data message go (with
        ``all_acked``: until it acknowledged every byte, as eof waits for with lanes).

        Counted as a send that waits: a receiver that never acks is, for the watchdog, a
        receiver that reads nothing.
        """
        self.sending = True
        while not (proto.all_acked if all_acked else proto.window_open):
            acked.clear()
            await acked.wait()
        self.sending = False

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
    acked: asyncio.Event,
    lanes: SenderLanes | None = None,
) -> list[str]:
    if lanes is not None:
        await lanes.start()
    reader = open_reader()
    start = proto.data_start
    buffer = bytearray(start + chunk_size)
    # Files and memory are read inline while that is quick; a pipe (stdin) may block for
    # as long as its writer pauses: always a thread.
    offload = Offload(threaded=isinstance(reader, PipeReader))
    chooser = CompressionChooser(compress)
    chooser.observe(0, time.monotonic())
    digests: list[str] = []
    try:
        while True:
            if lanes is not None and not lanes.alone:
                # Queued for whichever lane is free, and kept until acknowledged: a buffer
                # per message.
                buffer = bytearray(start + chunk_size)
            length, finished = await offload(reader.read_into, buffer, start)
            if length:
                if not proto.window_open:
                    await link.window(proto, acked)
                offset = proto.bytes_sent
                # Compressing (~1 ms a chunk) stays on the loop: it is CPU, not waiting.
                data = proto.frame_data(buffer, length, compress=chooser.compress)
                if lanes is None or lanes.alone:
                    # Lane 0 alone (always, on a LAN): sent at once, as without lanes; its
                    # loss ends the connection, so nothing is kept to send again.
                    await link.send(data)
                else:
                    await lanes.put(offset, offset + length, data)
                chooser.observe(length, time.monotonic())
                display.advance(length)
            if finished:
                digests.extend(finished)
                for message in proto.checksums(finished):
                    await link.send(message)
            if reader.exhausted:
                break
        if lanes is not None and not proto.all_acked:
            # Data on other lanes may still be on its way: eof only behind all of it.
            await link.window(proto, acked, all_acked=True)
        await link.send(proto.eof())
        display.verifying()
    finally:
        reader.close()
    return digests


def entry_name(name: str) -> str:
    """``name`` for a stream or object entry, or a UsageError if a receiver would refuse it."""
    try:
        check_entries([StreamEntry(name)])
    except UnsafePathError as exc:
        raise UsageError(f"Cannot send under the name {display_name(name)!r}: {exc}") from None
    return name
