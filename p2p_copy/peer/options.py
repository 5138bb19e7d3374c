"""One options object for every entry point: how a transfer reaches the relay and behaves.

Every send and receive, awaited, blocking or in the background, takes the same
``options=Options(...)`` and the same keywords (``cafile=...``), which override the
object's fields. Which fields an entry point uses is stated once, in ``APPLIES``: a
keyword that does not apply (``overwrite`` to a send) is a UsageError, never silently
ignored; a shared Options object may carry fields for the other side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ..errors import UsageError
from ..protocol.compression import COMPRESS_MODES, ChooserMode
from ..protocol.lanes import LANE_CAP
from ..protocol.messages import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE
from ..protocol.policy import ReceivePolicy
from ..storage.streams import MEMORY_LIMIT
from .pinning import parse_fingerprint
from .reconnect import DEFAULT_RECONNECT_TIMEOUT, IDLE_TIMEOUT, reconnect_budget

if TYPE_CHECKING:
    from ..display.progress import Progress, ProgressKind

__all__ = [
    "APPLIES",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "EntryPoint",
    "OptionFields",
    "Options",
    "resolve",
]

@dataclass(frozen=True, kw_only=True)
class Options:
    """How a transfer runs; every field has the default an entry point uses without it.

    Both sides: ``cafile`` (a CA to trust for ``wss://``), ``fingerprint`` (instead of a
    CA: the SHA-256 of the relay's certificate, ``sha256:...``, as a relay served for
    the transfer announces it; only that certificate is accepted), ``relay_token`` (a private
    relay's access token), ``progress`` (a display, or "auto", "widget", "tqdm", "json",
    "none"), ``wait_timeout`` (seconds to wait for the other side to join; None: the
    relay's), ``reconnect_timeout`` (seconds to keep reconnecting after a drop; 0 or None:
    never), ``encrypt`` (False: the plain protocol, which the relay can read),
    ``idle_timeout`` (seconds without progress from the other side, once paired: a
    receiver that reads nothing, a sender that sends nothing, before giving up),
    ``lanes`` (the most connections to the relay one transfer may use, 1 to 8; the sender
    adds lanes only while they raise the throughput of a long link; 1: one, as before).

    Sending: ``chunk_size`` (bytes per data message), ``compress`` ("auto" compresses
    while that is measured to pay, "always", "never").

    Receiving: ``overwrite`` (replace existing files), ``policy`` (what is accepted:
    ReceivePolicy), ``max_memory`` (bytes a text or object may hold in memory; None: as
    much as this machine has).
    """

    cafile: str | None = None
    fingerprint: str | None = None
    relay_token: str | None = None
    progress: ProgressKind | Progress | None = None
    wait_timeout: float | None = None
    reconnect_timeout: float | None = DEFAULT_RECONNECT_TIMEOUT
    encrypt: bool = True
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compress: ChooserMode = "auto"
    idle_timeout: float = IDLE_TIMEOUT
    lanes: int = LANE_CAP
    overwrite: bool = False
    policy: ReceivePolicy | None = None
    max_memory: int | None = MEMORY_LIMIT

    def __post_init__(self) -> None:
        # Checked before anything starts, whichever entry point gets them.
        if not 1024 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise UsageError(f"chunk_size must be from 1 KiB to {MAX_CHUNK_SIZE} bytes.")
        if self.compress not in COMPRESS_MODES:
            raise UsageError(f"compress must be one of {', '.join(COMPRESS_MODES)}, "
                             f"not {self.compress!r}.")
        if type(self.lanes) is not int or not 1 <= self.lanes <= LANE_CAP:
            raise UsageError(f"lanes must be a whole number from 1 to {LANE_CAP}.")
        if not self.idle_timeout > 0:  # NaN too
            raise UsageError("idle_timeout must be a positive number of seconds.")
        if self.wait_timeout is not None and not self.wait_timeout > 0:
            raise UsageError("wait_timeout must be a positive number of seconds, or None "
                             "for the relay's own limit.")
        reconnect_budget(self.reconnect_timeout)  # raises for a negative or NaN budget
        if self.fingerprint is not None:
            parse_fingerprint(self.fingerprint)

    @property
    def reconnect_budget(self) -> float:
        """Seconds to keep reconnecting after a drop (0: never)."""
        return reconnect_budget(self.reconnect_timeout)


class OptionFields(TypedDict, total=False):
    """The keywords every entry point takes, one per field of Options (typed for callers)."""

    cafile: str | None
    fingerprint: str | None
    relay_token: str | None
    progress: ProgressKind | Progress | None
    wait_timeout: float | None
    reconnect_timeout: float | None
    encrypt: bool
    chunk_size: int
    compress: ChooserMode
    idle_timeout: float
    lanes: int
    overwrite: bool
    policy: ReceivePolicy | None
    max_memory: int | None


EntryPoint = Literal["send", "receive", "send_stream", "receive_stream", "send_text",
                     "receive_text", "send_object", "receive_object"]

_BOTH = frozenset({"cafile", "fingerprint", "relay_token", "progress", "wait_timeout",
                   "reconnect_timeout", "encrypt", "idle_timeout", "lanes"})
_SENDING = _BOTH | {"chunk_size", "compress"}

#: The fields of Options each entry point uses: the one statement of which option goes where.
APPLIES: Mapping[EntryPoint, frozenset[str]] = {
    "send": _SENDING,
    "send_stream": _SENDING,
    "send_text": _SENDING,
    "send_object": _SENDING,
    "receive": _BOTH | {"overwrite", "policy"},
    "receive_stream": _BOTH | {"policy"},
    "receive_text": _BOTH | {"max_memory"},
    "receive_object": _BOTH | {"max_memory"},
}


def resolve(entry: EntryPoint, options: Options | None, overrides: Mapping[str, Any]) -> Options:
    """``options`` (or the defaults) with the keywords given to ``entry`` laid over them."""
    if options is not None and not isinstance(options, Options):
        raise UsageError(f"options must be a p2p_copy.Options, not {type(options).__name__}.")
    wrong = sorted(set(overrides) - APPLIES[entry])
    if wrong:
        known = {f.name for f in dataclasses.fields(Options)}
        what = ", ".join(repr(w) for w in wrong)
        raise UsageError(
            f"{entry}() takes no {what}: "
            + ("it is an option of the other side." if set(wrong) <= known else
               "no such option (see help(p2p_copy.Options)).")
        )
    base = options if options is not None else Options()
    return dataclasses.replace(base, **overrides) if overrides else base
