"""benchmarks/bench.py runs: tiny sizes, our CLI (--no-install: the current interpreter's
install) and the raw TCP baseline, plus the minimal websockets relay (wsmin) in one test,
and in another ours over wss:// and behind nginx, socat with TLS and the long link.

No timing is asserted, only that the script exits 0, verifies every transfer and writes
a JSON result with the keys benchmarks/README.md documents.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cli_env

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
RATE = {"random": "mb_s", "compressible": "mb_s", "files": "files_s", "pairs": "pairs_s"}
PER_PROCESS = ["sender_cpu_s", "receiver_cpu_s", "relay_cpu_s", "sender_maxrss_kb",
               "receiver_maxrss_kb", "relay_maxrss_kb"]


def run_bench(tmp_path: Path, *extra: str, only: str = "ours,baseline",
              timeout: float = 50) -> dict:
    out = tmp_path / "result.json"
    if "--cases" not in extra:  # the loopback cases (longlink has its own test)
        extra = ("--cases", ",".join(RATE), *extra)
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", only, "--no-install",
         "--json", str(out), "--timeout", "30", *extra],
        capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=tmp_path,
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


def _has_nginx() -> bool:
    return bool(shutil.which("nginx")) or any(
        Path(p).is_file() for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx",
                                    "/usr/local/nginx/sbin/nginx"))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_run_over_tls_behind_nginx_and_through_the_long_link(tmp_path: Path) -> None:
    """ours-wss, ours-nginx-tls and socat-tls deliver intact with per-role CPU per GB
    against socat-tls; the longlink case carries ours and the baseline through the link."""
    tls = ["socat-tls", "ours-wss", "ours-nginx-tls"]
    data = run_bench(tmp_path, "--cases", "random,files,longlink", "--rtts", "0,50",
                     only="baseline," + ",".join(tls) + ",ours", timeout=130)
    present = {"socat-tls": shutil.which("socat") is not None, "ours-wss": True,
               "ours-nginx-tls": _has_nginx()}
    assert set(data["cases"]) == {"random", "files", "longlink-0ms", "longlink-50ms"}
    for case in ("random", "files"):
        results = data["cases"][case]["results"]
        for tool in ["ours", *tls]:
            result = results[tool]
            if not present.get(tool, True):
                assert "not available" in result["skipped"], result  # says why
                continue
            assert result["ok"] and result["runs"][0]["intact"], (case, tool, result["runs"])
            median = result["median"]
            for role in ("sender", "receiver", "relay"):
                assert median[f"{role}_cpu_s_per_gb"] > 0, (case, tool, role)
            reference = "socat-tls" if tool in tls else "baseline"
            if present["socat-tls"] or reference == "baseline":
                assert result["reference"] == reference
                assert set(result["ratio_to_reference"]) >= {
                    "sender_cpu_s_per_gb", "receiver_cpu_s_per_gb", "relay_cpu_s_per_gb"}
        if present["socat-tls"]:
            assert results["socat-tls"]["ratio_to_reference"]["mb_s"] == pytest.approx(1.0)
        if present["ours-nginx-tls"]:
            # The relay role behind nginx is nginx plus both relays.
            parts = results["ours-nginx-tls"]["runs"][0]["relay_parts_cpu_s"]
            assert set(parts) == {"relay", "relay2", "nginx"}
            assert results["ours-nginx-tls"]["median"]["relay_cpu_s"] == pytest.approx(
                sum(parts.values()))
        assert "wss://" in data["tools"]["ours-wss"]["description"]
    for rtt in (0, 50):
        case = data["cases"][f"longlink-{rtt}ms"]
        assert case["rtt_s"] == rtt / 1000 and case["window"] == 4 << 20
        assert case["cap_mb_s"] == (pytest.approx((4 << 20) / (rtt / 1000) / 1e6) if rtt
                                    else None)
        for tool in ("ours", "baseline"):
            result = case["results"][tool]
            assert result["ok"] and result["median"]["mb_s"] > 0, (rtt, tool, result["runs"])
            # Every byte, both ways, went through the link: the file at least once.
            assert result["runs"][0]["link_bytes"] >= case["bytes"]
        for tool in tls:
            assert "skipped" in case["results"][tool]
