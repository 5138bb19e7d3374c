"""The receiver's driver: the Receiver machine (protocol/transfer.py) over a relay link.

It connects, runs the key exchange, hands the manifest to a sink (storage/: the folder,
a pipe, memory) after the person or the policy agreed to the offer, answers with what
the sink already holds, writes data as it arrives and says ``done`` once every digest
matched; after a drop it reconnects with the same code and starts over from the
manifest, continuing what the last attempt kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from ..display.progress import Progress
from ..errors import (
    CancelledError,
    ConnectionLostError,
    Hint,
    P2PCopyError,
    PeerGoneError,
    PolicyError,
    RemoteProtocolError,
    TransferTimeoutError,
)
from ..protocol.codes import room_hash_hex
from ..protocol.messages import Entry
from ..protocol.policy import ReceivePolicy, check_offer, summarize_offer
from ..protocol.transfer import (
    FileCompleted,
    FileData,
    LaneOpened,
    ManifestReceived,
    Receiver,
    ResumeAgreed,
    Send,
    SenderJoined,
    TransferFinished,
)
from ..results import TransferResult
from ..storage.destination import Destination
from ..storage.streams import ObjectSink, PipeSink, Sink
from .handshake import Link, SealedLink, handshake
from .lanes import ReceiverLanes
from .offload import Offload, in_thread
from .options import Options
from .reconnect import Reconnect, keeps_partial, retryable
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

__all__ = ["MakeSink", "object_sink", "receive_into"]

#: Picks the sink for a manifest's entries and the digest the receiver chose (it may refuse).
MakeSink = Callable[[Sequence[Entry], str], Sink]


async def receive_into(
    server: str,
    code: str,
    make_sink: MakeSink,
    options: Options,
    display: Progress,
) -> TransferResult:
    """Receive into the sink that ``make_sink(entries, digest)`` picks for the manifest (it
    may refuse it); ``digest`` is the hash the receiver picked (digests.py).

    After a drop, reconnect with the same code and start over from the manifest: the new
    sink finds on disk what the last one kept (Sink.suspend) and offers it.
    """
    room_hash_hex(code)  # a malformed code is a usage error before anything starts
    # The environment is read once, here: the machine takes what it says as an argument.
    run = Run(Reconnect(options.reconnect_budget), started_at=time.monotonic(),
              digests=digests_from_environment())
    while True:
        try:
            return await _receive_once(server, code, make_sink, options, display, run)
        except P2PCopyError as exc:
            give_up_with_the_drop(run, exc)
            restartable = run.sink is None or run.sink.restartable
            if not (run.paired and restartable and retryable(exc, run.retry.reconnecting)):
                raise
            await backoff(run.retry, exc, display)


async def _receive_once(
    server: str,
    code: str,
    make_sink: MakeSink,
    options: Options,
    display: Progress,
    run: Run,
) -> TransferResult:
    room = room_hash_hex(code)
    policy = options.policy
    # Lanes need the handshake's key (§6.12): none without encryption.
    proto = Receiver(room, policy=policy, digests=run.digests,
                     lanes=options.lanes if options.encrypt else 1)
    destination: Sink | None = None
    lanes: ReceiverLanes | None = None
    offload = Offload(threaded=True)
    first = not run.paired
    async with relay_link(server, room, options, "receiver") as plain:
        link: Link = plain
        try:
            await plain.send(proto.hello())
            if first:
                display.waiting()
            timeout = run.retry.wait_timeout(options.wait_timeout, time.monotonic())
            waiting_for = "a sender to join"
            if options.encrypt:
                link = await handshake(plain, code, timeout=timeout, waiting_for=waiting_for)
                run.pair(display)
                timeout, waiting_for = options.idle_timeout, "the sender to send more"
            finished = False
            source: Link | ReceiverLanes = link
            while not finished:
                message = await source.recv(timeout, waiting_for)
                batch: list[FileData | FileCompleted] = []
                for event in proto.receive(message):
                    if isinstance(event, (FileData, FileCompleted)):
                        batch.append(event)
                        continue
                    assert not batch  # the other events never follow data in one message
                    if isinstance(event, SenderJoined):
                        run.pair(display)
                        # Once paired, a sender that stays connected but sends nothing is
                        # stuck.
                        timeout, waiting_for = options.idle_timeout, "the sender to send more"
                    elif isinstance(event, ManifestReceived):
                        if first:
                            run.started_at = time.monotonic()
                        sink = make_sink(event.entries, event.digest)
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
                        if run.retry.attempt:
                            optional(display, "resumed", 0)
                        run.retry.connected()
                    elif isinstance(event, ResumeAgreed):
                        assert destination is not None
                        await in_thread(destination.resume, event.starts, event.differs)
                        optional(display, "resumed", sum(event.starts.values()))
                    elif isinstance(event, LaneOpened):
                        assert isinstance(link, SealedLink)  # lanes need the key
                        if lanes is None:
                            # From now on lane 0 and the lanes the sender opens, as one
                            # (until the first, lane 0 is read directly: on a LAN, always).
                            source = lanes = ReceiverLanes(link, server, options)
                        lanes.join(event.lane)
                    elif isinstance(event, Send):
                        # The machine's own reply (the ``resume`` after prefix_digests),
                        # after the destination has taken the agreement.
                        await link.send(event.message)
                    else:
                        assert isinstance(event, TransferFinished)
                        assert destination is not None
                        display.verifying()
                        await in_thread(destination.finish)
                        await link.send(proto.done())
                        finished = True
                if batch:
                    assert destination is not None
                    await _write(destination, batch, display, offload)
                    if proto.ack_due:
                        await link.send(proto.ack())
        except BaseException as exc:
            if destination is not None:
                if keeps_partial(exc):
                    # Kept for the next attempt, in this run or a later one.
                    await in_thread(destination.suspend)
                else:
                    await in_thread(destination.abort)
            await fail_politely(link, proto, exc)
            raise
        finally:
            if lanes is not None:
                await lanes.close()
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
            try:
                message = incoming.result()
            except (ConnectionLostError, PeerGoneError):
                # Not a drop to reconnect after: the next attempt may offer something else,
                # and an answer being typed for this offer must not take that one.
                raise CancelledError(
                    "The connection ended while you were asked whether to take the offer, "
                    "so it was declined; nothing was written. Run both sides again."
                ) from None
            proto.receive(message)  # nothing but the sender's error may come now
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


def object_sink(entries: Sequence[Entry], limit: int | None, kind: str | None,
                digest: str, raise_with: Hint) -> ObjectSink:
    """A sink that holds the one object offered, refused unless it is of ``kind`` (None:
    any) and at most ``limit`` bytes; ``raise_with`` says how to raise the limit."""
    sink = ObjectSink(entries, limit, digest, raise_with=raise_with)
    if kind is not None and sink.kind != kind:
        raise PolicyError(
            f"The sender offers an object of kind {sink.kind!r}; this receiver takes only "
            f"{kind!r}. Use p2p_copy.receive_object() for any object, or p2p_copy.receive() "
            "for files."
        )
    return sink
