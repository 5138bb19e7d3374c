"""What a tool is (its relay, its sender's and receiver's commands, its environment) and
the virtualenvs the tools run from.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import LOOPBACK_CASES

if TYPE_CHECKING:
    from .cases import Bench
    from .measure import Proc


def clean_env(tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "P2P_COPY_PROGRESS", "P2P_COPY_CODE", "WORMHOLE_RELAY_URL",
                "WORMHOLE_TRANSIT_HELPER"):
        env.pop(var, None)
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env["TMPDIR"] = str(tmpdir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def isolated_env(tmpdir: Path) -> dict[str, str]:
    """For a tool in its own venv: nothing that could import the repository's package."""
    env = clean_env(tmpdir)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE"):
        env.pop(var, None)
    env["PYTHONNOUSERSITE"] = "1"
    return env


@dataclass
class RelaySet:
    """The server side of one measurement: the relay (whose CPU is per GB), the other
    processes of the relay role (nginx, a second relay: their CPU is added to the relay's)
    and helpers that are not (magic-wormhole's mailbox, reported apart)."""

    main: Proc
    others: list[Proc] = field(default_factory=list)
    parts: list[Proc] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    url: str = ""
    #: CPU seconds of each relay-role process (by name) when the relay was ready
    cpu_ready: dict[str, float] = field(default_factory=dict)
    rss_idle_kb: int | None = None
    fd_idle: int | None = None

    def all(self) -> list[Proc]:
        return [self.main, *self.parts, *self.others]

    def role(self) -> list[Proc]:
        """The processes whose CPU is the relay role's."""
        return [self.main, *self.parts]


class Tool:
    name = ""
    label = ""
    available = True
    reason = ""
    version = ""
    description = ""
    cases: tuple[str, ...] = LOOPBACK_CASES
    #: the tool whose sender, receiver and relay CPU per GB this one's are compared with
    reference = "baseline"

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def env(self, tmp: Path) -> dict[str, str]:
        return clean_env(tmp)

    def cwd(self, work: Path) -> Path:
        return work

    def start_relay(self, work: Path, case: str) -> RelaySet:
        raise NotImplementedError

    def commands(self, relays: RelaySet, code: str, src: Path,
                 out: Path, case: str) -> tuple[list[str], list[str]]:
        """The sender's and the receiver's argv."""
        raise NotImplementedError

    def pairs_client(self) -> list[str]:
        """argv prefix of the python that runs ``bench.py _pairs-client --impl ...``."""
        raise NotImplementedError

    def code(self, n: int) -> str:
        return f"{n}-bench-{os.urandom(4).hex()}"


@contextlib.contextmanager
def venv_lock(venv: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold ``<venv>.lock`` (flock), shared with tests/seed.py for the seed venv."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{venv} stayed locked for {timeout:g} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_venv(venv: Path, packages: list[str], dist: str, version: str | None,
                no_install: bool, timeout: float = 600.0) -> bool:
    """A virtualenv holding ``dist`` (at ``version``), made with pip if missing. True if
    it was (re)made now."""

    def works() -> bool:
        python = venv / "bin" / "python"
        if not python.is_file():
            return False
        try:
            out = subprocess.run(
                [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                capture_output=True, text=True, timeout=60, env=isolated_env(Path("/tmp")),
                cwd=venv)
        except (OSError, subprocess.SubprocessError):
            return False
        return out.returncode == 0 and (version is None or out.stdout.strip() == version)

    if works():
        return False
    if no_install:
        raise RuntimeError(f"{venv} does not hold {dist} and --no-install was given")
    deadline = time.monotonic() + timeout
    with venv_lock(venv, timeout):
        if works():
            return False
        shutil.rmtree(venv, ignore_errors=True)
        print(f"  installing {' '.join(packages)} into {venv} ...", flush=True)
        for args in ([sys.executable, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                      "--disable-pip-version-check", "--no-input", *packages]):
            try:
                run = subprocess.run(args, capture_output=True, text=True, cwd=venv.parent,
                                     env=isolated_env(Path("/tmp")),
                                     timeout=max(1.0, deadline - time.monotonic()))
            except (OSError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(venv, ignore_errors=True)
                raise RuntimeError(f"{' '.join(args[:4])}: {exc}") from None
            if run.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-5:])
                raise RuntimeError(f"{' '.join(args[:5])} failed: {tail}")
        if not works():
            raise RuntimeError(f"{venv}: {dist} {version or ''} not importable after pip")
        return True
