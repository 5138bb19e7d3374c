"""The web page a relay serves: ``GET /`` and ``GET /static/NAME``, nothing else.

The page is the browser peer (p2p_copy/web): it speaks the protocol itself, so the relay
only hands out files. They are read once, when the relay starts, by the names that
``web.ASSETS`` lists; a request names a file by looking it up in that table, never by
joining it to a folder, so no path, encoded or not, reaches anything else.

Every answer carries a Content-Security-Policy that allows scripts, styles and
connections from the relay itself only (and from the relays ``--web-connect`` names):
the page can load nothing from elsewhere and send the code and the files nowhere but to
a relay. See docs/security.md for what that does and does not guarantee.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .._version import __version__
from ..web import ASSETS, CONFIG, INDEX, STATIC

__all__ = ["WebApp", "connect_source", "STATIC_PREFIX"]

#: Where the page's files are, below the root.
STATIC_PREFIX: Final = "/static/"

_CSP: Final = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src {connect}; worker-src 'self' blob:; "
    "manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Headers of every answer for the page, whatever its status.
_SECURITY: Final = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
#: Browsers revalidate each file with its ETag: after an upgrade, index.html and app.js
#: can never come from two versions.
_CACHE: Final = "no-cache"
#: A host name, an IPv4 address or a bracketed IPv6 address, then maybe a port: nothing
#: that could end a CSP source list (space, ';', ',', quotes).
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                   r"(?::[0-9]{1,5})?")


def connect_source(url: str) -> str:
    """The CSP source (``wss://host[:port]``) that lets the page reach the relay at ``url``.

    ValueError, with a sentence that says why, for anything but a ws:// or wss:// URL
    with a host.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"{url!r} is not a relay URL: give ws://HOST[:PORT][/PATH] or "
                         "wss://HOST[:PORT][/PATH]")
    if "@" in parts.netloc or parts.fragment or not _HOST.fullmatch(parts.netloc):
        raise ValueError(f"{url!r} is not a relay URL: give a host name or address and "
                         "maybe a port, without user, spaces or a #fragment")
    return f"{parts.scheme}://{parts.netloc.lower()}"


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _file(body: bytes, content_type: str) -> _File:
    return _File(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class WebApp:
    """The page's files, read once from ``folder`` (default: the installed page), and the
    answers to requests for them.

    ``connect``: relay URLs besides this one that the page may reach (``--web-connect``):
    listed in ``/static/config.json`` and allowed by the CSP.
    """

    def __init__(self, folder: Traversable | Path | None = None,
                 connect: Sequence[str] = ()) -> None:
        root: Traversable | Path = STATIC if folder is None else folder
        self.files: dict[str, _File] = {}
        for name, content_type in ASSETS.items():
            try:
                self.files[name] = _file((root / name).read_bytes(), content_type)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue  # an asset this build lacks is a 404, like any unknown name
        config = {"version": __version__, "relays": list(connect)}
        self.files[CONFIG] = _file(json.dumps(config).encode(), "application/json")
        sources = dict.fromkeys(["'self'", *(connect_source(url) for url in connect)])
        self.csp = _CSP.format(connect=" ".join(sources))

    @property
    def installed(self) -> bool:
        """Whether the page itself is there (a checkout that was never built has none)."""
        return INDEX in self.files

    @staticmethod
    def wants(path: str, headers: Headers) -> bool:
        """Whether a request is for the page: ``/`` without a WebSocket upgrade (a
        client that upgrades there is a peer, as ever), or anything under /static/."""
        if path.startswith(STATIC_PREFIX):
            return True
        return path == "/" and "websocket" not in headers.get("Upgrade", "").lower()

    def respond(self, request: Request) -> Response:
        """The answer to a request that wants() took: the file, 304, 404 or 405."""
        path = request.path.partition("?")[0]
        if request.method not in ("GET", "HEAD"):
            response = self._text(HTTPStatus.METHOD_NOT_ALLOWED, "Only GET and HEAD.\n")
            response.headers["Allow"] = "GET, HEAD"
            return response
        name = INDEX if path == "/" else path[len(STATIC_PREFIX):]
        # Looked up, never joined to a folder: "../x", "%2e%2e", "a/b" are just unknown names.
        found = self.files.get(name)
        if found is None:
            if path == "/":
                return self._text(
                    HTTPStatus.NOT_FOUND,
                    "This relay works, but its web page is not installed "
                    "(p2p_copy/web/static/index.html is missing).\n", request.method)
            return self._text(HTTPStatus.NOT_FOUND, "No such file.\n", request.method)
        headers = self._headers(found.content_type, len(found.body))
        headers["ETag"] = found.etag
        if found.etag in _etags(request.headers.get_all("If-None-Match")):
            del headers["Content-Length"]
            return Response(HTTPStatus.NOT_MODIFIED.value, HTTPStatus.NOT_MODIFIED.phrase,
                            headers, b"")
        body = found.body if request.method == "GET" else b""
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)

    def _headers(self, content_type: str, length: int) -> Headers:
        headers = Headers([
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(length)),
            ("Content-Type", content_type),
            ("Cache-Control", _CACHE),
            ("Content-Security-Policy", self.csp),
        ])
        for key, value in _SECURITY:
            headers[key] = value
        return headers

    def _text(self, status: HTTPStatus, text: str, method: str = "GET") -> Response:
        body = text.encode()
        headers = self._headers("text/plain; charset=utf-8", len(body))
        return Response(status.value, status.phrase, headers, body if method != "HEAD" else b"")


def _etags(values: list[str]) -> set[str]:
    """The entity tags of If-None-Match headers (weak ones compare as strong for GET)."""
    tags: set[str] = set()
    for value in values:
        for tag in value.split(","):
            tag = tag.strip()
            tags.add(tag[2:] if tag.startswith("W/") else tag)
    return tags
