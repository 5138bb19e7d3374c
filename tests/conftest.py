"""Fixtures shared by the tests: a real relay on loopback, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from p2p_copy.relay import Relay
from p2p_copy.testing import running_relay

# The CLI must never reach anything but loopback, even if the machine has a proxy set.
for _var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = "*"


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    """An in-process relay on 127.0.0.1 with a free port (see p2p_copy.testing), without
    the web page: these tests see the relay's own paths (tests/test_web.py, the page's)."""
    async with running_relay(web=False) as r:
        yield r


#: The browser peer's sources: its JavaScript tests run Node there after ``npm ci``.
WEB = Path(__file__).resolve().parent.parent / "p2p_copy" / "web"


def need_node_packages() -> str:
    """The node binary for tests of the browser peer's JavaScript. Skips where Node or
    p2p_copy/web/node_modules is missing; fails instead on CI, where .ci/run installs both."""
    import shutil  # only these tests need it

    node = shutil.which("node")
    if node is None or not (WEB / "node_modules").is_dir():
        reason = "needs Node and `npm ci` in p2p_copy/web"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, and .ci/run should have done it")
        pytest.skip(reason)
    return node


async def http_request(port: int, target: str, method: str = "GET",
                  extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request (the target sent as is); status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def run_async(*argv: str, stdin: bytes = b"", timeout: float = 90,
                    env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run a process in the test's loop (so that an in-process relay keeps serving); exit
    code, stdout and stderr. Killed if it outlives ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=cli_env() if env is None else env)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("P2P_COPY_PROGRESS", None)
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m p2p_copy ARGS`` to completion and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "p2p_copy", *args],
        capture_output=True, text=True, timeout=timeout, env=env or cli_env(), cwd=cwd,
        input=input,
    )


class Processes:
    """Background CLI processes that are killed when the test ends, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2p_copy", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env or cli_env(), cwd=cwd,
        )
        self.procs.append(proc)
        return proc

    def start_relay(
        self, port: int | None = None, *extra: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[str], str]:
        """A relay process on 127.0.0.1 without TLS, and its ws:// URL, once it listens."""
        port = port or free_port()
        proc = self.start("run-relay-server", "127.0.0.1", str(port), "--no-tls", *extra,
                          env=env)
        wait_for_port(port, proc)
        return proc, f"ws://127.0.0.1:{port}"

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def wait_for_port(
    port: int, proc: subprocess.Popen[str] | None = None, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early: {proc.communicate()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.cleanup()


# --- the two ways to write a destination (storage/destination.py) -----------------------
#
# A test or module marked ``both_backends`` runs twice: with the descriptor backend
# (openat and friends: Linux, macOS) and with the path backend Windows uses, forced here.
# The switch also reaches CLI subprocesses, through P2P_COPY_PORTABLE_STORAGE.

#: Mark a test (or a module, with ``pytestmark``) to run it with each storage backend.
both_backends = pytest.mark.both_backends
STORAGE_BACKENDS = ("dirfd", "portable")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_backends: run once per storage backend (tests/conftest.py)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_backends") is not None:
        metafunc.parametrize("storage_backend", STORAGE_BACKENDS, indirect=True)


# Autouse so that every test has it to parametrise (a fixture name added to a test in
# pytest_generate_tests is parametrised but never set up); unmarked tests leave it alone.
@pytest.fixture(autouse=True)
def storage_backend(request: pytest.FixtureRequest) -> str | None:
    """The storage backend a ``both_backends`` test runs with ("dirfd" or "portable"), set
    for the in-process Destination and for CLI subprocesses alike; None elsewhere."""
    name: str | None = getattr(request, "param", None)
    if name is None:
        return None
    from p2p_copy.storage import destination

    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    portable = name == "portable"
    if not portable and not destination.has_folder_descriptors():
        pytest.skip("this system has no folder descriptors")
    monkeypatch.setattr(destination, "FOLDERS", destination._PathFolders if portable
                        else destination._DirFdFolders)
    if portable:
        monkeypatch.setenv(destination.PORTABLE_ENV, "1")
    else:
        monkeypatch.delenv(destination.PORTABLE_ENV, raising=False)
    return name


# A hypothesis profile for the parser fuzzing in tests/test_fuzz_parsers.py, applied there
# test by test: it is registered, never loaded, so other property tests keep their own
# settings. CI runs 10,000 examples per parser; a nightly run sets, e.g.,
# P2P_COPY_FUZZ_EXAMPLES=200000.
from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("P2P_COPY_FUZZ_EXAMPLES", "10000")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
