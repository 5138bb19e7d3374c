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

from .client import RelayLink, open_link
from .codes import GENERATE, generate_code, room_hash_hex
from .destination import Destination
from .errors import (
    CancelledError,
    CodeInUseError,
    ConnectionLostError,
    P2PCopyError,
    PeerGoneError,
    TransferTimeoutError,
    UsageError,
)
from .handshake import HANDSHAKE_TIMEOUT, Link, handshake
from .messages import FileEntry, Ready
from .policy import ReceivePolicy
from .progress import Progress, ProgressKind, make_progress
from .results import FileResult, TransferResult
from .sources import Sources, StreamReader, collect_sources
from .transfer import (
    FileCompleted,
    FileData,
    ManifestReceived,
    Receiver,
    Sender,
    TransferFinished,
)

__all__ = ["send", "receive", "DEFAULT_CHUNK_SIZE"]

#: Bytes of file data per message. 64-256 KiB beat 1 MiB and more on loopback here.
DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 2**20
#: How long the sender waits, after eof, for the receiver to confirm.
DONE_TIMEOUT = 300.0
#: How long the receiver waits for the next message once the sender has spoken.
IDLE_TIMEOUT = 300.0
#: How long the sender waits for the receiver to answer the manifest. A receiver only
#: checks names and free space before answering; p2p-copy 0.1.x receivers never answer.
ACCEPT_TIMEOUT = 60.0
#: How long a sender with a generated code waits for the relay to confirm its room
#: (``waiting``) before showing the code anyway: relays older than 0.2 never confirm.
WAITING_GRACE = 5.0
#: Generated codes tried when their rooms turn out to be taken.
MAX_CODE_ATTEMPTS = 8


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
) -> TransferResult:
    """Send files and folders to the receiver that uses the same ``code`` on ``server``.

    ``code`` None (or ``"auto"``) generates one, shown by the progress display and
    returned in the result. Returns once the receiver has verified every file and given
    it its final name. ``wait_timeout`` bounds the wait for the receiver to join
    (default: the relay's). ``encrypt=False`` speaks the plain protocol: the relay can
    then read everything. ``relay_token`` is a private relay's access token.
    """
    _check_chunk_size(chunk_size)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    options = _Options(server, cafile, wait_timeout, encrypt, relay_token)
    if code is not None and code != GENERATE:
        room_hash_hex(code)  # a malformed code is a usage error before anything starts
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


async def _send(
    options: _Options,
    code: str | None,
    paths: Sequence[str | os.PathLike[str]],
    display: Progress,
    chunk_size: int,
) -> TransferResult:
    sources = await asyncio.to_thread(collect_sources, paths)
    generated = code is None or code == GENERATE
    for attempt in range(MAX_CODE_ATTEMPTS):
        current = generate_code(attempt) if generated else str(code)
        try:
            return await _send_once(options, current, generated, sources, display, chunk_size)
        except CodeInUseError:
            # A generated code is only shown once its room is ours: pick another quietly.
            if not generated or attempt == MAX_CODE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


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
    sources: Sources,
    display: Progress,
    chunk_size: int,
) -> TransferResult:
    room = room_hash_hex(code)
    proto = Sender(room, sources.entries, fresh=generated)
    async with open_link(options.server, room=room, cafile=options.cafile,
                         token=options.relay_token) as ws:
        plain = RelayLink(ws, "sender")
        link: Link = plain
        started = time.monotonic()
        try:
            await plain.send(proto.hello())
            display.waiting()
            await _wait_for_receiver(plain, proto, lambda: display.showing_code(
                options.server, code), generated, options.wait_timeout)
            started = time.monotonic()
            if options.encrypt:
                link = await handshake(plain, code, timeout=HANDSHAKE_TIMEOUT,
                                       waiting_for="the receiver's key exchange")
            for part in proto.manifest():
                await link.send(part)
            proto.receive(await link.recv(
                ACCEPT_TIMEOUT,
                "the receiver to answer the list of files (a receiver running p2p-copy 0.1.x "
                "never answers: ask them to upgrade with pip install -U p2p-copy)",
            ))
            files = [e for e in sources.entries if isinstance(e, FileEntry)]
            display.started(sources.total_bytes, len(files))
            digests = await _stream_with_watch(link, proto, sources.files, files, display,
                                               chunk_size)
        except BaseException as exc:
            await _fail_politely(link, proto, exc)
            raise
    results = tuple(FileResult(f.path, f.size, d) for f, d in zip(files, digests, strict=True))
    for result in results:
        display.file_done(result)
    return TransferResult("sender", results, sources.total_bytes, time.monotonic() - started,
                          code=code)


async def _stream_with_watch(
    link: Link,
    proto: Sender,
    paths: Sequence[Path],
    files: Sequence[FileEntry],
    display: Progress,
    chunk_size: int,
) -> list[str]:
    """Stream all data and eof while listening for the receiver; return the SHA-256s."""
    incoming = asyncio.ensure_future(link.recv())
    pump = asyncio.ensure_future(_stream(link, proto, paths, files, display, chunk_size))
    try:
        await asyncio.wait({incoming, pump}, return_when=asyncio.FIRST_COMPLETED)
        if pump.done() and pump.exception() is None:
            async with asyncio.timeout(DONE_TIMEOUT):
                proto.receive(await incoming)
            return pump.result()
        if not incoming.done() and isinstance(pump.exception(), (PeerGoneError,
                                                                 ConnectionLostError)):
            # The receiver may have said why before it left: prefer its own words.
            await asyncio.wait({incoming}, timeout=2)
        if incoming.done():
            proto.receive(incoming.result())  # raises: the receiver spoke out of turn
        return pump.result()  # raises the pump's error
    except TimeoutError:
        raise TransferTimeoutError(
            f"The receiver did not confirm within {DONE_TIMEOUT:g} s after the last byte."
        ) from None
    finally:
        for task in (incoming, pump):
            task.cancel()
        await asyncio.gather(incoming, pump, return_exceptions=True)


async def _stream(
    link: Link,
    proto: Sender,
    paths: Sequence[Path],
    files: Sequence[FileEntry],
    display: Progress,
    chunk_size: int,
) -> list[str]:
    reader = StreamReader(paths, [f.size for f in files])
    # Two buffers: a worker thread fills one while the other is on its way out.
    buffers = [bytearray(1 + chunk_size), bytearray(1 + chunk_size)]
    digests: list[str] = []
    try:
        filling = asyncio.ensure_future(asyncio.to_thread(reader.read_into, buffers[0]))
        turn = 0
        while True:
            length, finished = await filling
            buffer = buffers[turn]
            turn ^= 1
            more = not reader.exhausted
            if more:
                filling = asyncio.ensure_future(asyncio.to_thread(reader.read_into, buffers[turn]))
            if length:
                await link.send(proto.frame_data(buffer, length))
                display.advance(length)
            if finished:
                digests.extend(finished)
                for message in proto.checksums(finished):
                    await link.send(message)
            if not more:
                break
        await link.send(proto.eof())
        display.verifying()
    finally:
        # Cancelling does not stop a worker thread: let the read finish before the reader
        # closes its file under it.
        await asyncio.wait({filling})
        if not filling.cancelled():
            filling.exception()  # retrieved; the error that brought us here is reported
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
) -> TransferResult:
    """Receive what the sender with the same ``code`` sends, into the folder ``dest``.

    ``dest`` is created if it does not exist. Files appear under their final names only
    once verified; on any error nothing partial is left behind. Existing files are kept
    unless ``overwrite`` is true. ``policy`` limits what is accepted (files, bytes,
    depth); an offer over it is refused before any byte. ``encrypt`` and
    ``relay_token`` as for send().
    """
    if code is None or code == GENERATE:
        raise UsageError("The receiver needs the code the sender shows.")
    room_hash_hex(code)
    options = _Options(server, cafile, wait_timeout, encrypt, relay_token)
    display = make_progress(progress, "receive")
    return await _shown(
        display, _receive(options, code, Path(dest), overwrite, policy, display))


async def _receive(
    options: _Options,
    code: str,
    root: Path,
    overwrite: bool,
    policy: ReceivePolicy | None,
    display: Progress,
) -> TransferResult:
    room = room_hash_hex(code)
    proto = Receiver(room, policy=policy)
    destination: Destination | None = None
    async with open_link(options.server, room=room, cafile=options.cafile,
                         token=options.relay_token) as ws:
        plain = RelayLink(ws, "receiver")
        link: Link = plain
        started = time.monotonic()
        try:
            await plain.send(proto.hello())
            display.waiting()
            timeout, waiting_for = options.wait_timeout, "a sender to join"
            if options.encrypt:
                link = await handshake(plain, code, timeout=timeout, waiting_for=waiting_for)
                timeout, waiting_for = IDLE_TIMEOUT, "the sender to send more"
            while True:
                message = await link.recv(timeout, waiting_for)
                # Once paired, a sender that stays connected but sends nothing is stuck.
                timeout, waiting_for = IDLE_TIMEOUT, "the sender to send more"
                events = proto.receive(message)
                if not events:
                    continue
                first = events[0]
                if isinstance(first, ManifestReceived):
                    started = time.monotonic()
                    destination = Destination(root, first.entries, overwrite=overwrite)
                    await asyncio.to_thread(destination.prepare)
                    await link.send(proto.accept())
                    display.started(first.total_bytes, len(first.files))
                elif isinstance(first, TransferFinished):
                    assert destination is not None
                    display.verifying()
                    await asyncio.to_thread(destination.finish)
                    await link.send(proto.done())
                    break
                else:
                    assert destination is not None
                    await _write(destination, events, display)
        except BaseException as exc:
            if destination is not None:
                destination.abort()
            await _fail_politely(link, proto, exc)
            raise
    assert destination is not None
    return TransferResult(
        "receiver",
        tuple(destination.results),
        sum(r.size for r in destination.results),
        time.monotonic() - started,
        destination=root,
        code=code,
    )


async def _write(
    destination: Destination, events: Sequence[object], display: Progress
) -> None:
    batch = [e for e in events if isinstance(e, (FileData, FileCompleted))]
    work = asyncio.ensure_future(asyncio.to_thread(destination.apply, batch))
    try:
        completed = await asyncio.shield(work)
    finally:
        if not work.done():
            # Cancelling does not stop the worker thread: let it finish before abort()
            # runs, or files it opens afterwards would be left behind.
            await asyncio.wait({work})
            work.exception()  # the cancellation is what gets reported
    display.advance(sum(len(e.data) for e in batch if isinstance(e, FileData)))
    for result in completed:
        display.file_done(result)

