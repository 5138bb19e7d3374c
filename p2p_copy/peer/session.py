"""What a send and a receive share: the display and its Cancel, the state kept across
reconnects, the backoff between attempts, telling the peer why we stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

from ..display.progress import Progress
from ..errors import (
    CancelledError,
    ConnectionLostError,
    P2PCopyError,
    PeerGoneError,
    TransferTimeoutError,
)
from ..protocol.digests import DIGESTS_ENV, preferred
from ..protocol.messages import Role
from ..protocol.transfer import Receiver, Sender
from ..results import TransferResult
from ..storage.streams import Sink
from .handshake import Link
from .link import RelayLink, open_link
from .options import Options
from .reconnect import Reconnect

#: How long a receiver's user has to answer whether to take an offer (Progress.offer);
#: then the offer is declined (TransferTimeoutError, the sender is told). The sender's
#: wait for ``accept`` allows for it.
OFFER_TIMEOUT = 300.0

__all__ = [
    "OFFER_TIMEOUT",
    "relay_link",
    "Run",
    "backoff",
    "digests_from_environment",
    "fail_politely",
    "give_up_with_the_drop",
    "optional",
    "shown",
]

def digests_from_environment() -> tuple[str, ...]:
    """The hashes this process may offer and pick: $P2P_COPY_DIGESTS read once per run
    (UsageError if it names one we do not know), so that the machines take it as input."""
    return preferred(os.environ.get(DIGESTS_ENV))


def optional(display: Progress, name: str, *args: object) -> None:
    """Call a Progress method added with resume if ``display`` has it (older ones do not)."""
    method = getattr(display, name, None)
    if method is not None:
        method(*args)


async def backoff(retry: Reconnect, exc: P2PCopyError, display: Progress) -> None:
    """Wait before the next attempt, or re-raise ``exc`` once the budget is spent."""
    delay = retry.next_delay(time.monotonic())
    if delay is None:
        raise exc
    optional(display, "reconnecting", retry.attempt, delay, str(exc))
    await asyncio.sleep(delay)


async def fail_politely(
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


async def shown(display: Progress, work: Awaitable[TransferResult]) -> TransferResult:
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


@dataclass
class Run:
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
    #: The hash algorithms the machine may offer or pick (digests.preferred(), which reads
    #: the environment: once per run, by the driver). None: all this peer has.
    digests: tuple[str, ...] | None = None
    #: Tests only ($P2P_COPY_LANES_NOW, read once per run): lanes to open at once.
    lanes_now: int = 0
    #: The most lanes one attempt carried data on (lane 0 included).
    lanes_used: int = 1

    def pair(self, display: Progress) -> None:
        """The peer was reached; the display hears of it the first time (``paired``)."""
        if not self.paired:
            self.paired = True
            optional(display, "paired")


def give_up_with_the_drop(run: Run, exc: P2PCopyError) -> None:
    """Note the first error of an outage; if the peer never came back, raise that one."""
    if not run.retry.reconnecting:
        run.drop = exc
    elif isinstance(exc, TransferTimeoutError) and run.drop is not None:
        # "No peer joined in time" would hide why we were waiting at all.
        raise run.drop from exc


@contextlib.asynccontextmanager
async def relay_link(server: str, room: str, options: Options,
                     role: Role) -> AsyncIterator[RelayLink]:
    """One attempt's connection to the relay, with the options' CA, pin and token."""
    async with open_link(server, room=room, cafile=options.cafile,
                         fingerprint=options.fingerprint, token=options.relay_token) as ws:
        yield RelayLink(ws, role)
