"""mypy --strict over the package, as each system's typeshed sees it (issue 23).

typeshed knows which calls exist where (os.O_NOFOLLOW, os.fchmod, signal.SIGBREAK,
resource): a call that does not exist on Windows or macOS fails here, on Linux, before
anyone runs it there.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("platform", [
    None,
    "win32",
    "darwin",
], ids=["this-system", "windows", "macos"])
def test_mypy_strict_is_clean(platform: str | None) -> None:
    """``mypy --strict p2p_copy`` (with ``--platform`` for Windows and macOS) finds nothing."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed: pip install -e '.[test]' installs it")
    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "p2p_copy"]
    if platform is not None:
        command[3:3] = ["--platform", platform]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
