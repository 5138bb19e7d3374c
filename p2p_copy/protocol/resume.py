"""Resume without I/O: chained prefix hashes, resume offers and the receiver's sidecar.

A file's *chain* is the digest (the transfer's hash, digests.py) of each of its
whole-block prefixes ``file[:k*BLOCK]``. SHA-256 and BLAKE3 both hash incrementally, so
recording it costs one copy of the hash state per block while the file is hashed anyway
for the end-to-end check, and never a second pass over the data. With it a receiver
says "I hold the first ``offset`` bytes" (a Prefix, no digest), the sender answers with
its own digest of that prefix (an Offer), and the receiver resumes only if its digest is
the same: a changed source is sent again from 0 and never spliced, and the receiver never
shows a digest of what it held before (a sender that guessed a file's name, size and
time could test guesses of its content against it offline).

The sidecar beside a partial file (``.NAME.p2p-copy-resume``) records the last offset
the receiver made durable, its prefix digest and the algorithm, so that a later run can
offer it. Its format lives here; reading and writing it is destination.py's job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .digests import HEX_DIGEST, SHA256, Hash, available, new

__all__ = [
    "BLOCK",
    "CHAIN_WINDOW",
    "SIDECAR_VERSION",
    "Offer",
    "Prefix",
    "Sidecar",
    "ChainHasher",
    "check_offers",
    "valid_offset",
    "mtime_matches",
]

#: Resume granularity: offers are multiples of this (or a file's full size).
BLOCK = 2**20
#: Prefix states a ChainHasher keeps (the most recent ones): a resume within a run
#: offers a prefix a few MiB behind the sender, so older states are rarely needed, and a
#: sender that lacks one rereads its source instead.
CHAIN_WINDOW = 64
SIDECAR_VERSION = 1
#: Tolerance when comparing an announced mtime with a file's (utime may round it).
MTIME_TOLERANCE = 0.01



class Prefix(NamedTuple):
    """Receiver to sender (``accept``'s ``held``): it holds file ``file``'s first ``offset``
    bytes."""

    file: int
    offset: int


@dataclass(frozen=True)
class Offer:
    """File number ``file``'s first ``offset`` bytes hash to ``digest``.

    The sender says so of its source in ``prefix_digests``; a receiver keeps it of what it
    holds, to compare (older receivers sent it in ``accept``). The digest is in the
    transfer's algorithm (the receiver's accept names it).
    """

    file: int
    offset: int
    digest: str

    @property
    def prefix(self) -> Prefix:
        return Prefix(self.file, self.offset)


def valid_offset(offset: int, size: int) -> bool:
    """Whether a receiver may offer ``offset`` of a file of ``size`` bytes."""
    return 0 < offset <= size and (offset % BLOCK == 0 or offset == size)


def check_offers(offers: Sequence[Offer | Prefix], sizes: Sequence[int | None]) -> str | None:
    """Why ``offers`` (or held prefixes) for files of ``sizes`` (None: a stream) are out of
    place, or None."""
    seen: set[int] = set()
    for offer in offers:
        if not 0 <= offer.file < len(sizes):
            return f"a resume offer names file {offer.file}, which does not exist"
        if offer.file in seen:
            return f"two resume offers name file {offer.file}"
        seen.add(offer.file)
        size = sizes[offer.file]
        if size is None:
            return "a resume offer names a stream, which cannot be resumed"
        if not valid_offset(offer.offset, size):
            return (f"a resume offer for file {offer.file} has offset {offer.offset}, not a "
                    f"multiple of {BLOCK} up to its size {size}")
    return None


def mtime_matches(announced: float | None, actual: float) -> bool:
    return announced is None or (
        math.isfinite(announced) and abs(announced - actual) <= MTIME_TOLERANCE)


class ChainHasher:
    """The digest of a file as it is read or written, with its recent block-prefix states.

    ``state_at(offset)`` gives a hash object holding exactly ``file[:offset]``, from which
    the whole-file digest can be continued after a resume.
    """

    def __init__(self, base: Hash | None = None, position: int = 0,
                 algorithm: str = SHA256) -> None:
        #: digests.SHA256 or digests.BLAKE3; ``base``, if given, must be of this algorithm.
        self.algorithm = algorithm
        self._hash: Hash = base if base is not None else new(algorithm)
        self.position = position
        # Block-prefix states in the order made (dicts keep it), oldest dropped first.
        self._states: dict[int, Hash] = {}
        # A fresh hasher's empty prefix is made on demand (one copy less per small file).
        self._fresh = base is None and position == 0
        if position % BLOCK == 0 and not self._fresh:
            self._states[position] = self._hash.copy()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self.position % BLOCK + len(data) < BLOCK:
            # Within one block (every small file): no block boundary to record.
            self._hash.update(data)
            self.position += len(data)
            return
        view = memoryview(data)
        while view:
            room = BLOCK - self.position % BLOCK
            part, view = view[:room], view[room:]
            self._hash.update(part)
            self.position += len(part)
            if self.position % BLOCK == 0:
                self._states[self.position] = self._hash.copy()
                while len(self._states) > CHAIN_WINDOW:
                    del self._states[next(iter(self._states))]

    def state_at(self, offset: int) -> Hash | None:
        """A copy of the hash of ``file[:offset]``, if ``offset`` is the end or a kept block."""
        if offset == self.position:
            return self._hash.copy()
        if offset == 0 and self._fresh:
            return new(self.algorithm)
        state = self._states.get(offset)
        return state.copy() if state is not None else None

    def digest_at(self, offset: int) -> str | None:
        state = self.state_at(offset)
        return state.hexdigest() if state is not None else None

    def last_block(self) -> int:
        """The largest kept prefix length that is a whole number of blocks."""
        return max((o for o in self._states if o % BLOCK == 0), default=0)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def detach(self) -> Hash:
        """The running hash object itself, for the caller to go on with."""
        return self._hash


@dataclass(frozen=True)
class Sidecar:
    """What a receiver keeps beside a partial file: enough to offer its prefix later."""

    size: int
    mtime: float | None
    offset: int
    #: The prefix's digest, in ``algorithm`` (the sidecar's key: "sha256" or "blake3").
    digest: str
    algorithm: str = SHA256

    def encode(self) -> bytes:
        obj: dict[str, Any] = {"version": SIDECAR_VERSION, "size": self.size,
                               "mtime": self.mtime, "offset": self.offset,
                               self.algorithm: self.digest}
        return json.dumps(obj, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Sidecar | None:
        """The sidecar in ``raw``, or None if it is not one we wrote (then it is ignored)."""
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(obj, dict) or obj.get("version") != SIDECAR_VERSION:
            return None
        size, offset, mtime = (obj.get(k) for k in ("size", "offset", "mtime"))
        # One digest, keyed by its algorithm; one of an algorithm we lack is of no use.
        keyed = [name for name in available() if name in obj]
        if len(keyed) != 1:
            return None
        algorithm = keyed[0]
        digest = obj[algorithm]
        if not isinstance(size, int) or not isinstance(offset, int) or isinstance(
                size, bool) or isinstance(offset, bool):
            return None
        if not isinstance(digest, str) or not HEX_DIGEST.fullmatch(digest):
            return None
        if mtime is not None and (not isinstance(mtime, (int, float)) or isinstance(mtime, bool)
                                  or not math.isfinite(mtime)):
            return None
        if not valid_offset(offset, size):
            return None
        return cls(size=size, mtime=None if mtime is None else float(mtime), offset=offset,
                   digest=digest, algorithm=algorithm)
