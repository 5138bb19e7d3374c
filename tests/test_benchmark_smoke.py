"""benchmarks/bench.py runs: tiny sizes, our CLI (--no-install: the current interpreter's
install) and the raw TCP baseline, plus the minimal websockets relay (wsmin) in one test.

No timing is asserted, only that the script exits 0, verifies every transfer and writes
a JSON result with the keys benchmarks/README.md documents.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cli_env

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
RATE = {"random": "mb_s", "compressible": "mb_s", "files": "files_s", "pairs": "pairs_s"}
PER_PROCESS = ["sender_cpu_s", "receiver_cpu_s", "relay_cpu_s", "sender_maxrss_kb",
               "receiver_maxrss_kb", "relay_maxrss_kb"]


def run_bench(tmp_path: Path, *extra: str, only: str = "ours,baseline") -> dict:
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", only, "--no-install",
         "--json", str(out), "--timeout", "30", *extra],
        capture_output=True, text=True, timeout=50, env=cli_env(), cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


def check_result(data: dict, cases: frozenset[str] = frozenset(RATE),
                 tools: frozenset[str] = frozenset({"ours", "baseline"})) -> None:
    assert {"schema", "started", "finished", "command", "machine", "launcher", "config",
            "tools", "cases"} <= data.keys()
    assert {"nproc", "cpu_model", "loadavg_start", "loadavg_end"} <= data["machine"].keys()
    assert data["launcher"]["rss_floor_kb"] > 0
    assert set(data["tools"]) == tools
    assert all(t["available"] for t in data["tools"].values())
    assert set(data["cases"]) == cases
    for case in cases:
        rate = RATE[case]
        results = data["cases"][case]["results"]
        assert set(results) == tools
        for tool, result in results.items():
            if tool == "wsmin" and case not in ("random", "compressible"):
                assert "skipped" in result
                continue
            assert result["ok"], (case, tool, result["runs"])
            assert len(result["runs"]) == 1 and result["runs"][0]["intact"]
            median = result["median"]
            assert median[rate] > 0 and median["wall_s"] > 0
            for key in PER_PROCESS:
                assert median[key] >= 0, (case, tool, key)
            assert rate in result["ratio_to_baseline"]
        assert results["baseline"]["ratio_to_baseline"][rate] == pytest.approx(1.0)
    pairs = data["cases"]["pairs"]["results"]["ours"]["median"]
    assert pairs["intact_pairs"] == data["config"]["pairs"]
    assert "relay_kb_per_pair" in pairs
    assert "relay_cpu_s_per_gb" in data["cases"]["random"]["results"]["ours"]["median"]
    json.dumps(data)  # plain JSON types throughout


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_quick_run_with_socat_or_its_fallback(tmp_path: Path) -> None:
    check_result(run_bench(tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_quick_run_with_the_python_baseline_and_launcher(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "--baseline", "python", "--launcher", "python",
                     "--cases", "random,files,pairs", only="ours,baseline,wsmin")
    check_result(data, frozenset({"random", "files", "pairs"}),
                 frozenset({"ours", "baseline", "wsmin"}))
    assert data["launcher"]["kind"] == "python"
    assert "asyncio" in data["tools"]["baseline"]["version"]
    random = data["cases"]["random"]["results"]
    assert random["ours"]["ratio_to_wsmin"]["mb_s"] > 0
    assert random["wsmin"]["ratio_to_wsmin"]["mb_s"] == pytest.approx(1.0)
    assert "ratio_to_wsmin" not in data["cases"]["files"]["results"]["ours"]
    assert "--no-install" in data["tools"]["ours"]["description"]
