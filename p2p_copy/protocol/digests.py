"""Which hash checks each file end to end: BLAKE3 when both peers have it, else SHA-256.

Every file is hashed by the sender as it is read and by the receiver as it is written,
and the two digests must agree (the ``checksums`` message, docs/protocol.md §6.7). On this
project's benchmark machine that hashing was the largest single cost of a large transfer:
SHA-256 runs at ~1.8 GB/s a core with the CPU's SHA extensions, BLAKE3 (the ``blake3``
package, SIMD) at ~6.5 GB/s. So the sender's manifest lists the algorithms it can use,
best first, and the receiver's ``accept`` names the one it picked; a peer that does not
know this negotiation (or lacks ``blake3``) gets SHA-256, which every peer must support.
Both are cryptographic hashes with 32-byte digests written as 64 lowercase hex digits.
``$P2P_COPY_DIGESTS=sha256`` makes a process offer and pick SHA-256 only (to compare
results with ``sha256sum``, say).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from ..errors import UsageError

__all__ = ["SHA256", "BLAKE3", "NAMES", "DIGESTS_ENV", "HEX_DIGEST", "Hash", "new",
           "available", "preferred", "choose"]

SHA256: Final = "sha256"
BLAKE3: Final = "blake3"
#: How messages name them.
NAMES: Final = {SHA256: "SHA-256", BLAKE3: "BLAKE3"}
#: Comma-separated algorithms this process may offer and pick (default: all it has).
DIGESTS_ENV: Final = "P2P_COPY_DIGESTS"
#: A digest of either as the wire carries it (and the room hash, a SHA-256): fullmatch it.
HEX_DIGEST: Final = re.compile(r"[0-9a-f]{64}")


class Hash(Protocol):
    """What hashlib's objects and blake3's have in common, and all this package uses."""

    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...
    def copy(self) -> Hash: ...
    def hexdigest(self) -> str: ...


_blake3: Callable[[], Hash] | None
try:
    from blake3 import blake3 as _blake3
except ImportError:  # installed without it (--no-deps, a distro's packages): SHA-256 only
    _blake3 = None


def available() -> tuple[str, ...]:
    """The algorithms this peer can use, best first (what a sender offers)."""
    return (BLAKE3, SHA256) if _blake3 is not None else (SHA256,)


def preferred(setting: str | None) -> tuple[str, ...]:
    """What this peer offers (as sender) and may pick (as receiver): available(), limited
    by ``setting``, the value of $P2P_COPY_DIGESTS (the driver reads it: nothing in this
    package reads the environment). SHA-256 stays the protocol's fallback either way."""
    wanted = (setting or "").strip()
    if not wanted:
        return available()
    names = {name.strip().lower() for name in wanted.split(",")}
    unknown = sorted(names - set(NAMES))
    if unknown:
        raise UsageError(
            f"${DIGESTS_ENV} names {', '.join(map(repr, unknown))}; it takes a comma-separated "
            f"list of {' and '.join(map(repr, NAMES))}.")
    return tuple(name for name in available() if name in names) or (SHA256,)


def new(algorithm: str) -> Hash:
    """A fresh hash object of ``algorithm`` (one of available())."""
    if algorithm == SHA256:
        return hashlib.sha256()
    if algorithm == BLAKE3 and _blake3 is not None:
        return _blake3()
    raise ValueError(f"unknown or unavailable hash algorithm {algorithm!r}")


def choose(offered: Sequence[str] | None, allowed: Sequence[str] | None = None) -> str:
    """The receiver's pick: the sender's first offer that this peer (and ``allowed``) has.

    No offer (a sender from before the negotiation) means SHA-256.
    """
    usable = set(available() if allowed is None else allowed) & set(available())
    return next((name for name in offered or () if name in usable), SHA256)
