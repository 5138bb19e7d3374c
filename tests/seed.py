"""The seed project's published p2p-copy 0.1.1 in a virtualenv of its own, for interop tests.

The virtualenv lives in ``<repo>/.cache/seed-venv`` and is reused while its
``bin/p2p-copy --help`` works and it holds 0.1.1; otherwise it is made again with
``python -m venv`` and ``pip install p2p-copy==0.1.1`` from the package index. It is
never installed into the environment that runs the tests.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .conftest import Processes, cli_env

__all__ = [
    "SEED_VERSION",
    "VENV_DIR",
    "CREATE_TIMEOUT",
    "SeedUnavailable",
    "ensure_seed_venv",
    "seed_env",
    "SeedProcesses",
]

SEED_VERSION = "0.1.1"
REPO = Path(__file__).resolve().parent.parent
VENV_DIR = REPO / ".cache" / "seed-venv"
#: Seconds that making the virtualenv may take, waiting for another test run's lock included.
CREATE_TIMEOUT = 300.0


class SeedUnavailable(Exception):
    """The 0.1.1 virtualenv could not be made; the message says why."""


def seed_env() -> dict[str, str]:
    """The environment for the venv's processes: ours, minus anything that would leak our code."""
    env = cli_env()
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE"):
        env.pop(var, None)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _works(venv: Path) -> bool:
    """True if ``venv`` runs the 0.1.1 CLI (and not some other p2p-copy)."""
    script, python = venv / "bin" / "p2p-copy", venv / "bin" / "python"
    if not (script.is_file() and python.is_file()):
        return False
    try:
        # cwd is the venv itself so that the repository's p2p_copy can never be imported.
        help_run = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                                  timeout=60, env=seed_env(), cwd=venv)
        version = subprocess.run(
            [str(python), "-c",
             "import importlib.metadata as m; print(m.version('p2p-copy'))"],
            capture_output=True, text=True, timeout=60, env=seed_env(), cwd=venv,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return (help_run.returncode == 0 and "run-relay-server" in help_run.stdout
            and version.returncode == 0 and version.stdout.strip() == SEED_VERSION)


def _run_step(args: list[str], deadline: float, what: str, cwd: Path) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise SeedUnavailable(f"no time left to {what} within {CREATE_TIMEOUT:g} s")
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=remaining,
                                env=seed_env(), cwd=cwd)
    except subprocess.TimeoutExpired:
        raise SeedUnavailable(f"{what} took longer than {CREATE_TIMEOUT:g} s") from None
    except OSError as exc:
        raise SeedUnavailable(f"cannot {what}: {exc}") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise SeedUnavailable(f"cannot {what} (exit {result.returncode}):\n{tail}")


def ensure_seed_venv(venv: Path = VENV_DIR, timeout: float = CREATE_TIMEOUT) -> Path:
    """The virtualenv with p2p-copy 0.1.1, made if needed; SeedUnavailable says why not."""
    deadline = time.monotonic() + timeout
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Test runs in parallel share the cache: one makes it, the others wait and reuse it.
    # A virtualenv cannot be moved once made (its scripts name its path), hence the lock.
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SeedUnavailable(
                        f"another test run kept {venv} locked for {timeout:g} s"
                    ) from None
                time.sleep(0.5)
        try:
            if _works(venv):
                return venv
            shutil.rmtree(venv, ignore_errors=True)
            try:
                _run_step([sys.executable, "-m", "venv", str(venv)], deadline,
                          "create a virtualenv", venv.parent)
                _run_step([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", "--no-input",
                           f"p2p-copy=={SEED_VERSION}"],
                          deadline, f"pip install p2p-copy=={SEED_VERSION}", venv.parent)
                if not _works(venv):
                    raise SeedUnavailable(f"{venv}/bin/p2p-copy --help does not run 0.1.1")
            except SeedUnavailable:
                shutil.rmtree(venv, ignore_errors=True)
                raise
            return venv
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class SeedProcesses(Processes):
    """0.1.1 CLI processes started from the virtualenv, killed when the test ends."""

    def __init__(self, venv: Path) -> None:
        super().__init__()
        self.venv = venv

    def start(self, *args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[str]:
        # Run from the venv, so that our own p2p_copy package can never be imported.
        proc = subprocess.Popen(
            [str(self.venv / "bin" / "p2p-copy"), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, env=env or seed_env(), cwd=cwd or self.venv,
        )
        self.procs.append(proc)
        return proc
