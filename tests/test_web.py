"""The relay serves the browser peer's page: ``/`` and ``/static/NAME``, with strict headers,
only the listed files, without touching room counts or limits (relay/web.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from p2p_copy import __version__
from p2p_copy.relay.web import WebApp, connect_source
from p2p_copy.testing import running_relay
from p2p_copy.web import ASSETS, STATIC

from .conftest import http_request, run_cli

PAGE = b"<!doctype html><title>p2p-copy</title><script type=module src=static/app.js></script>"
SCRIPT = b"console.log('app');\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A stand-in for the built page, with a file beside it that must never be served."""
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_bytes(PAGE)
    (static / "app.js").write_bytes(SCRIPT)
    (static / "style.css").write_bytes(b"body{margin:0}")
    (static / "icon.svg").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    (static / "secret.txt").write_bytes(b"not an asset")
    (tmp_path / "outside.txt").write_bytes(b"outside")
    return static


async def test_root_serves_the_page_with_strict_headers(folder: Path) -> None:
    """GET / is index.html, with the CSP, nosniff, no referrer, COOP and no-cache."""
    async with asyncio.timeout(10), running_relay(web_folder=str(folder)) as relay:
        status, headers, body = await http_request(relay.port, "/")
    assert status == 200 and body == PAGE
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-length"] == str(len(PAGE))
    assert headers["content-security-policy"] == (
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
        "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
        "manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(("name", "content_type"), [
    ("app.js", "application/javascript; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("icon.svg", "image/svg+xml"),
    ("index.html", "text/html; charset=utf-8"),
])
async def test_each_asset_goes_out_with_its_content_type(folder: Path, name: str,
                                                         content_type: str) -> None:
    """/static/NAME is the file, typed by the asset table; a query is ignored."""
    async with asyncio.timeout(10), running_relay(web_folder=str(folder)) as relay:
        status, headers, body = await http_request(relay.port, f"/static/{name}?v=1")
    assert status == 200 and body == (folder / name).read_bytes()
    assert headers["content-type"] == content_type
    assert "content-security-policy" in headers


async def test_head_answers_the_headers_without_the_body(folder: Path) -> None:
    """HEAD gets the GET's status and length, and no body."""
    async with asyncio.timeout(10), running_relay(web_folder=str(folder)) as relay:
        status, headers, body = await http_request(relay.port, "/static/app.js", "HEAD")
        assert (status, headers["content-length"], body) == (200, str(len(SCRIPT)), b"")
        status, _, _ = await http_request(relay.port, "/static/app.js", "POST")
        assert status == 405


async def test_an_unchanged_file_is_not_sent_again(folder: Path) -> None:
    """With the ETag it got, a browser revalidates and gets 304 without a body."""
    async with asyncio.timeout(10), running_relay(web_folder=str(folder)) as relay:
        _, headers, _ = await http_request(relay.port, "/static/app.js")
        status, _, body = await http_request(relay.port, "/static/app.js",
                                        extra=f"If-None-Match: {headers['etag']}\r\n")
    assert (status, body) == (304, b"")


@pytest.mark.parametrize("target", [
    "/static/secret.txt", "/static/../outside.txt", "/static/%2e%2e/outside.txt",
    "/static/..%2foutside.txt", "/static/..%2Foutside.txt", "/static/%2e%2e%2foutside.txt",
    "/static/", "/static//app.js", "/static/./app.js", "/static/app.js%00",
    "/static/app.js\x00", "/static/APP.JS", "/static/../../relay/server.py",
    "/static/..\\outside.txt", "/index.html", "/static",
])
async def test_only_listed_files_are_served(folder: Path, target: str) -> None:
    """Traversal, encoded dots and slashes, a NUL, a listing, an unlisted file: 404."""
    async with asyncio.timeout(10), running_relay(web_folder=str(folder)) as relay:
        status, _, body = await http_request(relay.port, target)
    assert status == 404
    assert b"outside" not in body and b"not an asset" not in body and SCRIPT not in body


async def test_config_json_lists_the_other_relays_and_the_csp_allows_them(
        folder: Path) -> None:
    """--web-connect URLs are in /static/config.json and, as origins, in connect-src."""
    others = ("wss://relay.example.org/p2p/", "ws://127.0.0.1:9")
    async with asyncio.timeout(10), running_relay(web_folder=str(folder),
                                                  web_connect=others) as relay:
        status, headers, body = await http_request(relay.port, "/static/config.json")
        _, page_headers, _ = await http_request(relay.port, "/")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"version": __version__, "relays": list(others)}
    assert ("connect-src 'self' wss://relay.example.org ws://127.0.0.1:9;"
            in page_headers["content-security-policy"])


@pytest.mark.parametrize("url", [
    "https://relay.example.org", "wss://", "wss://a b", "wss://x;script-src *",
    "wss://user@host", "wss://host/#x", "wss://'self'", "wss://h,o", "relay.example.org",
    "wss://host:99999",
])
def test_a_connect_url_that_is_no_relay_url_is_refused(url: str) -> None:
    """Nothing but ws(s)://host[:port][/path] can reach the CSP (no ';' or quote)."""
    with pytest.raises(ValueError, match="is not a relay URL"):
        connect_source(url)


async def test_without_the_built_page_root_says_so_in_one_line(tmp_path: Path) -> None:
    """A checkout that was never built: GET / is a 404 with one line, no crash."""
    async with asyncio.timeout(10), running_relay(web_folder=str(tmp_path / "none")) as relay:
        status, headers, body = await http_request(relay.port, "/")
        assert (await http_request(relay.port, "/healthz"))[0] == 200
    assert status == 404 and headers["content-type"].startswith("text/plain")
    assert body.count(b"\n") == 1 and b"not installed" in body


async def test_no_web_leaves_root_as_before(folder: Path) -> None:
    """web=False (--no-web): / is no page (426, as a room path) and /static/ is 404."""
    async with asyncio.timeout(10), running_relay(web=False, web_folder=str(folder)) as relay:
        assert (await http_request(relay.port, "/"))[0] == 426
        assert (await http_request(relay.port, "/static/app.js"))[0] == 404


async def test_a_websocket_upgrade_on_root_is_still_a_peer(folder: Path) -> None:
    """The page does not shadow ``/`` for WebSocket clients (p2p-copy 0.1.x connect there)."""
    async with asyncio.timeout(10), running_relay(web_folder=str(folder)) as relay:
        async with connect(relay.url + "/") as ws:
            await ws.send(json.dumps({"type": "hello", "code_hash_hex": "a" * 64,
                                      "role": "sender", "version": 2}))
            assert json.loads(await ws.recv()) == {"type": "waiting"}


async def test_page_requests_count_no_peer_and_take_no_join(folder: Path) -> None:
    """Page GETs leave the relay's connection and room counters alone and do not use up
    the join rate; the per-address connection cap does apply to them."""
    async with asyncio.timeout(20), running_relay(
            web_folder=str(folder), join_rate=2, join_window=600.0, exempt_addresses=(),
    ) as relay:
        for _ in range(10):
            assert (await http_request(relay.port, "/"))[0] == 200
            assert (await http_request(relay.port, "/static/app.js"))[0] == 200
        assert relay.stats.connections == 0 and not relay.stats.rejections
        assert not any(relay.stats.outcomes.values())
        async with connect(relay.url + "/") as ws:  # the join rate is untouched
            await ws.send(json.dumps({"type": "hello", "code_hash_hex": "b" * 64,
                                      "role": "sender", "version": 2}))
            assert json.loads(await ws.recv()) == {"type": "waiting"}
    async with asyncio.timeout(20), running_relay(
            web_folder=str(folder), max_connections_per_address=1, exempt_addresses=(),
    ) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        try:
            assert (await http_request(relay.port, "/"))[0] == 429
        finally:
            writer.close()
            await writer.wait_closed()


async def test_a_private_relay_serves_no_page(folder: Path) -> None:
    """With access tokens the page gets 401, like a room: a browser cannot send a token."""
    async with asyncio.timeout(10), running_relay(
            web_folder=str(folder), access_tokens=frozenset({"t0k"})) as relay:
        assert (await http_request(relay.port, "/"))[0] == 401


def test_the_asset_table_names_plain_files() -> None:
    """Asset names are single plain names: a table entry cannot name a path."""
    assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in ASSETS)
    assert WebApp(STATIC).files.keys() <= {*ASSETS, "config.json"}


@pytest.mark.slow
def test_the_relay_cli_takes_the_web_flags(tmp_path: Path) -> None:
    """--web-connect with a bad URL is a usage error naming the flag (exit 2)."""
    result = run_cli("run-relay-server", "127.0.0.1", "1", "--no-tls",
                     "--web-connect", "wss://x;y", timeout=30)
    assert result.returncode == 2
    assert "--web-connect" in result.stderr and "is not a relay URL" in result.stderr


@pytest.mark.slow
def test_the_package_ships_the_page_and_not_its_sources(tmp_path: Path) -> None:
    """The packaging (pyproject.toml) takes p2p_copy/web/static/* and leaves out the page's
    sources and node_modules, even a .py file in there (setuptools' own file list, made
    offline from a copy of the checkout with a stand-in build)."""
    root = Path(__file__).resolve().parent.parent
    copy = tmp_path / "checkout"
    shutil.copytree(root / "p2p_copy", copy / "p2p_copy",
                    ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).exists():
            shutil.copy(root / name, copy / name)
    web = copy / "p2p_copy" / "web"
    for name, text in (("static/index.html", "page"), ("src/page/main.js", "x"),
                       ("node_modules/gyp/tool.py", "x = 1"), ("package.json", "{}")):
        (web / name).parent.mkdir(parents=True, exist_ok=True)
        (web / name).write_text(text)
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
                    "egg_info", "--egg-base", str(tmp_path)],
                   cwd=copy, check=True, timeout=120, capture_output=True)
    [listing] = tmp_path.glob("*.egg-info/SOURCES.txt")
    names = listing.read_text().split()
    assert "p2p_copy/web/static/index.html" in names and "p2p_copy/web/__init__.py" in names
    assert not [n for n in names if "/web/src/" in n or "node_modules" in n
                or n.endswith("package.json")]


# --- the headers in a real browser -------------------------------------------------------

PROBE_PAGE = b"""<!doctype html><title>loading</title>
<script>window.inlineRan = true;</script>
<script type="module" src="static/app.js"></script>
"""
#: Connects to this relay (allowed: 'self'), to an allowed other relay and to one that is
#: not allowed; says in the title what got through and what the CSP blocked.
PROBE_SCRIPT = b"""
const blocked = [];
document.addEventListener("securitypolicyviolation", (e) => blocked.push(e.blockedURI));
const room = "c".repeat(64);
const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/" + room);
ws.onopen = () => ws.send(JSON.stringify({type: "hello", code_hash_hex: room,
                                          role: "sender", version: 2}));
ws.onmessage = async (event) => {
  for (const port of [OTHER, STRANGER]) {
    try { new WebSocket(`ws://127.0.0.1:${port}/`).onerror = () => {}; } catch (e) {}
  }
  await new Promise((r) => setTimeout(r, 300));
  document.title = "relay said " + JSON.parse(event.data).type + "; inline " +
    Boolean(window.inlineRan) + "; blocked " + JSON.stringify(blocked);
};
"""


@pytest.mark.slow
async def test_the_csp_holds_in_chromium(tmp_path: Path) -> None:
    """In real Chromium: the page's script runs and reaches its relay over ws:// ('self'),
    and a --web-connect relay; an inline script does not run; a WebSocket to any other
    relay is blocked by the CSP."""
    from .conftest import free_port
    from .test_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip(f"needs {CHROMIUM}")
    async_api = pytest.importorskip("playwright.async_api")
    other, stranger = free_port(), free_port()
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_bytes(PROBE_PAGE)
    (static / "app.js").write_bytes(PROBE_SCRIPT.replace(b"OTHER", str(other).encode())
                                    .replace(b"STRANGER", str(stranger).encode()))
    async with asyncio.timeout(60), running_relay(
            web_folder=str(static), web_connect=(f"ws://127.0.0.1:{other}",)) as relay:
        async with async_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                               args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{relay.port}/")
                # Not wait_for_function: it evaluates its predicate with eval, which this
                # CSP forbids; title() goes through the debugger protocol.
                title = await page.title()
                while not title.startswith("relay said"):
                    await asyncio.sleep(0.05)
                    title = await page.title()
            finally:
                await browser.close()
    assert title.startswith("relay said waiting; inline false; blocked "), title
    blocked = json.loads(title.removeprefix("relay said waiting; inline false; blocked "))
    assert blocked == [f"ws://127.0.0.1:{stranger}/"]
