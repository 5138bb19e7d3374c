"""From the code two people share to what the relay is allowed to see of it.

A code is ``ROOM-SECRET``: everything before the first ``-`` is the room, which pairs
the two peers on the relay; the rest is the secret, which never leaves the two peers
(it is the password of the key exchange, see secure.py). Generated codes look like
``7-crossover-clockwork-puma``: a small room number and three words of the PGP word list
(27 bits). The relay gets only a domain-separated SHA-256 of the room, so the most it
can recover by brute force is the room number, which it may know anyway.

The relay sees that hash twice: in the ``hello`` and as the last segment of the
URL path (``wss://relay.example.org/<code_hash_hex>``), so that a proxy in front of
several relay processes can send both peers of a room to the same one without reading
WebSocket messages. Both halves of that path rule live here: ``room_url`` for peers,
``room_from_path`` for the relay.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

from ..errors import UsageError
from .digests import HEX_DIGEST

__all__ = [
    "CODE_ENV",
    "GENERATE",
    "WORDS_PER_CODE",
    "normalize_code",
    "split_code",
    "looks_like_code",
    "secret_bits",
    "weak_code_warning",
    "room_hash_hex",
    "generate_code",
    "wordlist",
    "code_from_env",
    "room_url",
    "room_from_path",
]

#: Environment variable the CLI reads the code from when CODE is given as "-".
CODE_ENV = "P2P_COPY_CODE"

#: The CLI's CODE argument that asks for a generated code (it has no "-", so it is
#: never a valid code itself).
GENERATE = "auto"
#: Words of the secret part of a generated code.
WORDS_PER_CODE = 3
#: Generated room numbers are drawn from 1..ROOM_RANGES[attempt]: short while the relay
#: is quiet, longer after a collision.
ROOM_RANGES = (999, 9_999, 99_999, 999_999)

_ROOM_DOMAIN = b"p2p-copy room v2\x00"

CODE_FORMAT_HELP = (
    "A code is ROOM-SECRET, e.g. 7-crossover-clockwork-puma: the relay sees only a hash "
    "of the part before the first '-'; the rest is the secret only the two of you know."
)


def normalize_code(code: str) -> str:
    """The code as both peers hash it: surrounding whitespace dropped, lower case.

    A code read out loud or typed on a phone comes back as ``7-Crossover-clockwork-puma ``;
    it must still pair. Generated codes are already in this form, and a chosen one is shown
    in it, so peers that did not normalise (0.5.1 and older) pair with ours when the code
    is typed as shown (protocol.md §4.1).
    """
    return code.strip().lower()


def split_code(code: str) -> tuple[str, str]:
    """``(room, secret)`` of the normalised code; UsageError if either is empty."""
    room, dash, secret = normalize_code(code).partition("-")
    if not code.strip():
        raise UsageError("The code must not be empty.")
    if not dash or not room or not secret:
        raise UsageError(f"{code.strip()!r} is not a code. {CODE_FORMAT_HELP}")
    return room, secret


def looks_like_code(text: str) -> bool:
    """Whether ``text`` has the ``ROOM-SECRET`` shape (a command line tells codes from files)."""
    room, dash, secret = normalize_code(text).partition("-")
    # A path separator or inner space means a file name (codes never hold one).
    shape = not any(c.isspace() or c in "/\\" for c in text.strip())
    return bool(dash and room and secret) and shape


#: Below this estimate of a chosen secret's bits, the sender is warned (a generated
#: secret has 27; each run of the handshake lets an attacker test one guess, §4.4).
WEAK_BITS = 20


def secret_bits(code: str) -> float:
    """A rough estimate of the bits of the secret part a person chose.

    A word of the word list counts 9 bits (what it is worth when drawn at random), a
    number 3.3 bits per digit, anything else 2 bits per character, about what English
    text carries: people choose words, not random letters.
    """
    _, secret = split_code(code)
    words = set(wordlist())
    bits = 0.0
    for part in secret.split("-"):
        if part in words:
            bits += 9
        elif part.isdigit():
            bits += 3.32 * len(part)
        else:
            bits += 2 * len(part)
    return bits


def weak_code_warning(code: str) -> str | None:
    """A sentence for the person who chose ``code`` if its secret is easy to guess, else None."""
    bits = secret_bits(code)
    if bits >= WEAK_BITS:
        return None
    return (f"the secret part of this code is easy to guess (about {bits:.0f} bits; a "
            f"generated code has {9 * WORDS_PER_CODE}): someone who joins the room first "
            "gets one guess at it. Leave the code out to get one generated.")


def room_hash_hex(code: str) -> str:
    """The room hash, sent in the hello's ``code_hash_hex`` field (its name since 0.1.x,
    whose peers put a SHA-256 of the whole code there: anyone holding that could try every
    short code offline). A domain-separated SHA-256 of the code's room part only."""
    room, _ = split_code(code)
    return hashlib.sha256(_ROOM_DOMAIN + room.encode("utf-8")).hexdigest()


@functools.cache
def wordlist() -> tuple[str, ...]:
    """The 512 words generated codes are made of (the PGP word list)."""
    from importlib import resources  # ~7 ms at start-up that only generating a code needs

    text = resources.files(__package__).joinpath("wordlist.txt").read_text("utf-8")
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def generate_code(attempt: int = 0, words: int = WORDS_PER_CODE) -> str:
    """A fresh random code such as ``7-crossover-clockwork-puma``.

    ``attempt`` counts earlier collisions with a taken room: each one widens the range
    of room numbers, so that a busy relay still finds a free room quickly.
    """
    top = ROOM_RANGES[min(attempt, len(ROOM_RANGES) - 1)]
    room = 1 + secrets.randbelow(top)
    chosen = [secrets.choice(wordlist()) for _ in range(words)]
    return "-".join([str(room), *chosen])


def code_from_env() -> str:
    """The code from $P2P_COPY_CODE, so that it never shows in the process list."""
    code = os.environ.get(CODE_ENV, "")
    if not code:
        raise UsageError(f"CODE is '-', so the code is read from ${CODE_ENV}, which is not set.")
    return code


def room_url(server: str, room: str) -> str:
    """``server`` with ``room`` appended as one more path segment; the query is kept.

    ``wss://h`` and ``wss://h/`` give ``wss://h/ROOM``; ``wss://h/p2p?x=1`` gives
    ``wss://h/p2p/ROOM?x=1``, for a relay published under a path prefix.
    """
    parts = urlsplit(server)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path + room, parts.query, parts.fragment))


def room_from_path(path: str) -> str | None:
    """The room a request path names; None for ``/`` (p2p-copy 0.1.x peers name none).

    ``path`` may carry a query, which is ignored. Any other shape than ``/`` or
    ``.../<64 lowercase hex digits>`` raises ValueError saying what is expected.
    """
    path = path.partition("?")[0]
    if path == "/":
        return None
    room = path.rpartition("/")[2]
    if not path.startswith("/") or not HEX_DIGEST.fullmatch(room):
        raise ValueError("the path must be / or end in /<code_hash_hex> (64 lowercase hex digits)")
    return room
