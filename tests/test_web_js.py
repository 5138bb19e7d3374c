"""The browser peer's JavaScript tests (p2p_copy/web/test/*.test.mjs: protocol.md's
vectors, python-spake2's, the core against itself, the page's pure pieces) under Node's
own test runner, so that the one test command runs them too."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import WEB, cli_env, need_node_packages


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_node_test_runner_passes() -> None:
    node = need_node_packages()
    tests = sorted(str(p.relative_to(WEB)) for p in (WEB / "test").glob("*.test.mjs"))
    assert tests, "no JavaScript tests found"
    run = subprocess.run([node, "--experimental-websocket", "--test", *tests], cwd=WEB,
                         capture_output=True, text=True, timeout=280, env=cli_env())
    summary = [line for line in run.stdout.splitlines() if line.startswith("# ")]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "# fail 0" in summary, summary
