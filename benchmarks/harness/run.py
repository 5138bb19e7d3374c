"""The command line and the run: tools set up, data made, warm-up, the interleaved
repetitions (noisy runs redone), medians and ratios, the tables and the results file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import (
    ALL_CASES,
    ALL_TOOLS,
    DEFAULT_JSON,
    LONGLINK_MAX_SIZE,
    LONGLINK_RTTS,
    LONGLINK_WINDOW,
    REPO,
    SOCAT_BUFFER,
)
from .baselines import Baseline, Seed, SocatDefault, SocatTls, Wormhole, WsMin
from .cases import Bench, base_case, case_keys
from .measure import (
    Proc,
    add_ratios,
    cpu_times,
    kill_everything,
    machine_facts,
    summarise,
    wait_all,
    wait_quiet,
)
from .ours import Ours, OursLanes, OursNginxTls, OursWss
from .report import fmt, markdown, plot, print_case, print_longlink, print_roles
from .tools import Tool, clean_env

TOOL_CLASSES: dict[str, type[Tool]] = {
    "baseline": Baseline, "socat8k": SocatDefault, "socat-tls": SocatTls, "wsmin": WsMin,
    "ours": Ours, "ours-lanes": OursLanes, "ours-wss": OursWss, "ours-nginx-tls": OursNginxTls,
    "seed": Seed, "wormhole": Wormhole}

#: why a tool is absent from a case (printed and kept in the JSON)
NOT_IN_CASE = {
    "wormhole": " (it needs two ~60 MB processes per pair; 1000 pairs would be 2000 "
                "processes)",
    "socat8k": " (socat cannot pair by code; the baseline row uses bench.py's asyncio "
               "pairing relay)",
    "wsmin": " (a reference for one stream of bytes: its relay pairs only the first /send "
             "with the first /recv, no codes, and it has no format for many files)",
    "socat-tls": " (socat cannot pair by code)",
    "ours-wss": " (its reference, socat-tls, cannot pair by code)",
    "ours-nginx-tls": " (its reference, socat-tls, cannot pair by code)",
}
LONGLINK_WHY = (" (it compares ours on one lane and with adaptive lanes with the raw relay "
                "through the same emulated path)")


def parse_size(text: str) -> int:
    """'1GiB', '256MiB', '256M', '64k', '4096B'; a bare number is MiB."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    if text.strip().lower().endswith("b") and not text.strip().lower().endswith("ib"):
        return int(float(t))
    return int(float(t) * (1 << 20))


def warm_up(bench: Bench, tools: list[Tool], args: argparse.Namespace,
            data: dict[str, Any]) -> list[dict[str, Any]]:
    """Unmeasured runs: the baseline once per large-file case (fresh tmpfs memory gets
    touched once, which on a VM can be slow), every tool once on the smallest case (its
    imports reach the page cache)."""
    plan: list[tuple[Tool, str]] = []
    if args.warmup:
        by_name = {t.name: t for t in tools}
        for case in ("random", "compressible"):
            if case in args.cases and "baseline" in by_name:
                plan.append((by_name["baseline"], case))
        small = next((c for c in ("files", "pairs", "random", "compressible")
                      if c in args.cases), None)
        for tool in tools:
            case = small if small in tool.cases else next(
                (c for c in args.cases if c in tool.cases), None)
            if case and (tool, case) not in plan:
                plan.append((tool, case))
    done = []
    for tool, case in plan:
        t = time.monotonic()
        case = case if case in data else case_keys([case], args.rtts)[0]
        r = bench.measure(tool, case, data[case])
        done.append({"tool": tool.name, "case": case, "ok": r.get("ok"),
                     "wall_s": r.get("wall_s"), "error": r.get("error")})
        print(f"  warm-up  {case:<12} {tool.name:<9} ({time.monotonic() - t:.1f} s) "
              f"{'ok' if r.get('ok') else 'FAILED: ' + str(r.get('error'))[:300]}", flush=True)
    return done


def run(args: argparse.Namespace) -> int:
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    machine = machine_facts()
    b0, t0 = cpu_times()[0], time.monotonic()
    time.sleep(1.0)
    machine["busy_cores_start"] = (cpu_times()[0] - b0) / (time.monotonic() - t0)
    print(f"p2p-copy benchmark: {machine['nproc']} cores, {machine['cpu_model']}, "
          f"load average {machine['loadavg_start'][0]:.2f}, other processes use "
          f"{machine['busy_cores_start']:.2f} cores now", flush=True)
    if machine["busy_cores_start"] > 0.2:
        print("  note: the machine is busy; figures will be noisy (runs during which others "
              f"take over {100 * (args.max_noise or 0):.0f} % of the CPUs are redone)",
              flush=True)
    bench = Bench(args)
    results: dict[str, Any] = {
        "schema": 1, "started": started, "command": [sys.executable, *sys.argv],
        "machine": machine, "tmpfs": str(args.tmp),
        "launcher": {"kind": bench.launcher_kind},
        "config": {"size": args.size, "files": args.files, "file_size": args.file_size,
                   "longlink_size": args.longlink_size, "rtts": args.rtts,
                   "window": args.window,
                   "pairs": args.pairs, "pair_payload": args.pair_payload,
                   "repeat": args.repeat, "warmup": args.warmup, "max_noise": args.max_noise,
                   "retries": args.retries, "quiet_wait": args.quiet_wait, "tools": args.only,
                   "cases": args.cases,
                   "socat_buffer": SOCAT_BUFFER, "pair_ramp": args.pair_ramp},
        "tools": {}, "cases": {},
    }
    try:
        floor = Proc(bench.launcher, "floor", ["true"], logdir=bench.tmp,
                     env=clean_env(bench.tmp), cwd=bench.tmp)
        wait_all([floor], 30)
        results["launcher"]["rss_floor_kb"] = floor.rusage().get("maxrss_kb")
        print(f"launcher: {bench.launcher_kind}, peak RSS of `true` under it: "
              f"{results['launcher']['rss_floor_kb']} kB", flush=True)
        tools: list[Tool] = []
        for name in args.only:
            t0 = time.monotonic()
            tool = TOOL_CLASSES[name](bench)
            results["tools"][name] = {"label": tool.label, "available": tool.available,
                                      "version": tool.version, "description": tool.description}
            if tool.available:
                tools.append(tool)
                print(f"tool {name}: {tool.version} ({time.monotonic() - t0:.1f} s)", flush=True)
            else:
                results["tools"][name]["reason"] = tool.reason
                print(f"tool {name}: NOT AVAILABLE: {tool.reason}", flush=True)
        data = bench.prepare(args.cases)
        descriptions = {
            "random": f"one {args.size / 2**20:g} MiB file of random bytes",
            "compressible": f"one {args.size / 2**20:g} MiB CSV text file "
                            f"(zlib -1 ratio {data.get('compressible', {}).get('zlib1_ratio')})",
            "files": f"{args.files:,} files of {args.file_size:,} bytes in "
                     f"{(args.files + 999) // 1000} folders",
            "pairs": f"{args.pairs:,} pairs at once through one relay, "
                     f"{args.pair_payload:,} random bytes each",
        }
        keys = case_keys(args.cases, args.rtts)
        for key in keys:
            if base_case(key) == "longlink":
                d = data[key]
                cap = f"{d['cap_mb_s']:,.1f} MB/s" if d["cap_mb_s"] else "none"
                descriptions[key] = (
                    f"one {args.longlink_size / 2**20:g} MiB file of random bytes, every peer "
                    f"connection through a long link: RTT {d['rtt'] * 1000:g} ms, at most "
                    f"{args.window / 2**20:g} MiB in flight per direction and connection "
                    f"(one connection's cap W/RTT: {cap})")
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {} for c in keys}
        results["warmup"] = warm_up(bench, tools, args, data)
        for rep in range(args.repeat):
            for case in keys:
                order = tools[rep % len(tools):] + tools[:rep % len(tools)] if tools else []
                for tool in order:
                    if base_case(case) not in tool.cases:
                        continue
                    attempts = []
                    for attempt in range(1 + args.retries):
                        waited = wait_quiet(args.quiet_wait) if args.quiet_wait else 0.0
                        t = time.monotonic()
                        r = bench.measure(tool, case, data[case])
                        r["rep"], r["attempt"], r["waited_for_quiet_s"] = rep, attempt, waited
                        # Share of the machine that other processes took during the run.
                        r["noise"] = r.get("other_cpu_s", 0.0) / max(
                            1e-9, r.get("wall_s", 0.0) * machine["nproc"])
                        attempts.append(r)
                        rate = r.get("files_s") or r.get("pairs_s") or r.get("mb_s")
                        noisy = bool(args.max_noise) and r["noise"] > args.max_noise
                        status = ("ok" if r.get("ok") else
                                  f"FAILED: {r.get('error', '')[:400]}")
                        if noisy and r.get("ok"):
                            status += (" - noisy, " + ("measured again" if attempt < args.retries
                                                       else "no retries left"))
                        print(f"  rep {rep + 1}/{args.repeat} {case:<12} {tool.name:<14} "
                              f"{fmt(rate, 1):>9} in {r.get('wall_s', 0):.2f} s "
                              f"({time.monotonic() - t:.1f} s; others took "
                              f"{100 * r['noise']:.0f} % of the CPUs) {status}", flush=True)
                        if not (noisy and r.get("ok")):
                            break
                    # Count the least noisy attempt; keep the others, marked, in the JSON.
                    best = min(attempts, key=lambda x: (not x.get("ok"), x["noise"]))
                    for r in attempts:
                        r["counted"] = r is best
                        r["noisy"] = bool(args.max_noise) and r["noise"] > args.max_noise
                    runs[case].setdefault(tool.name, []).extend(attempts)
        references = {t.name: t.reference for t in tools}
        for case in keys:
            c: dict[str, Any] = {"description": descriptions[case],
                                 "bytes": data[case]["bytes"], "results": {}}
            if case == "compressible":
                c["zlib1_ratio"] = data[case]["zlib1_ratio"]
            if "rtt" in data[case]:
                c.update(rtt_s=data[case]["rtt"], window=data[case]["window"],
                         cap_mb_s=data[case]["cap_mb_s"])
            for name in args.only:
                if name in runs[case]:
                    c["results"][name] = summarise(runs[case][name])
                elif not results["tools"][name]["available"]:
                    c["results"][name] = {"skipped": "not available: "
                                          + results["tools"][name].get("reason", "")[:300]}
                else:
                    why = (LONGLINK_WHY if base_case(case) == "longlink"
                           else NOT_IN_CASE.get(name, ""))
                    c["results"][name] = {"skipped": f"{name} does not take part in "
                                                     f"{base_case(case)}{why}"}
            add_ratios(c, references)
            results["cases"][case] = c
        results["machine"]["loadavg_end"] = list(os.getloadavg())
        results["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        for case in keys:
            print_case(case, results["cases"][case])
            print_roles(case, results["cases"][case])
        print_longlink(results)
        for case in ("random", "compressible"):
            res = results["cases"].get(case, {}).get("results", {})
            ours = res.get("ours", {})
            if "mb_s" in ours.get("ratio_to_wsmin", {}):
                print(f"\n{case}: ours ÷ wsmin (minimal websockets relay, AES-GCM + SHA-256) = "
                      f"{ours['ratio_to_wsmin']['mb_s']:.2f}x in MB/s, "
                      f"ours ÷ baseline = {ours['ratio_to_baseline'].get('mb_s', 0):.2f}x, "
                      f"wsmin ÷ baseline = "
                      f"{res['wsmin'].get('ratio_to_baseline', {}).get('mb_s', 0):.2f}x")
        print("\nCPU in seconds (user+sys of the whole process, from wait4); relay CPU is "
              "counted from the moment it listens; MB/s and GB are 10^6 and 10^9 bytes; the "
              "RSS columns are ru_maxrss in MiB.")
    finally:
        bench.close()
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"results written to {path}")
    if args.plot:
        print(plot(results, Path(args.plot)))
    failed = [f"{case}/{tool}" for case, c in results["cases"].items()
              for tool, r in c["results"].items() if r.get("failures")]
    if failed:
        print(f"some runs failed: {', '.join(failed)}")
    return 0


def _list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return [x for x in allowed if x in items]
    return parse


def _seconds_list(text: str) -> list[float]:
    """'0,20,50' (milliseconds) -> [0.0, 0.02, 0.05]."""
    try:
        values = sorted({float(x) / 1000 for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("milliseconds, comma-separated: 0,20,50") from None
    if not values or values[0] < 0:
        raise argparse.ArgumentTypeError("milliseconds, comma-separated, none negative")
    return values


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark p2p-copy (ws://, wss://, behind nginx) against a raw TCP "
        "relay (plain and TLS), a minimal websockets relay, p2p-copy 0.1.1 and "
        "magic-wormhole on loopback, and through an emulated long link (see "
        "benchmarks/README.md).")
    p.add_argument("--size", type=parse_size, default=None,
                   help="large file size: 1GiB (default), 256MiB, 64M; a bare number is MiB")
    p.add_argument("--files", type=int, default=None, help="small files (default 10000)")
    p.add_argument("--file-size", type=parse_size, default=None,
                   help="size of each small file (default 4KiB)")
    p.add_argument("--pairs", type=int, default=None,
                   help="pairs at once through one relay (default 1000)")
    p.add_argument("--pair-payload", type=parse_size, default=None,
                   help="bytes each pair sends (default 256KiB)")
    p.add_argument("--pair-ramp", type=int, default=50,
                   help="pair clients open this many connections per 10 ms (default 50)")
    p.add_argument("--repeat", type=int, default=None,
                   help="interleaved repetitions; medians are reported (default 5, as the issue)")
    p.add_argument("--only", type=_list(ALL_TOOLS), default=list(ALL_TOOLS),
                   help=f"tools, comma-separated: {','.join(ALL_TOOLS)} (default all)")
    p.add_argument("--cases", type=_list(ALL_CASES), default=list(ALL_CASES),
                   help=f"cases, comma-separated: {','.join(ALL_CASES)} (default all)")
    p.add_argument("--longlink-size", type=parse_size, default=None,
                   help="the longlink case's file (default: --size, at most "
                   f"{LONGLINK_MAX_SIZE >> 20} MiB)")
    p.add_argument("--rtts", type=_seconds_list, default=list(LONGLINK_RTTS),
                   help="the longlink case's round-trip times in ms, comma-separated "
                   f"(default {','.join(f'{r * 1000:g}' for r in LONGLINK_RTTS)})")
    p.add_argument("--window", type=parse_size, default=LONGLINK_WINDOW,
                   help="the longlink case's bytes in flight per direction and connection "
                   f"(default {LONGLINK_WINDOW >> 20}MiB, Linux's default send-buffer cap)")
    p.add_argument("--warmup", type=int, choices=[0, 1], default=None,
                   help="1: unmeasured warm-up runs first (default; 0 with --quick)")
    p.add_argument("--max-noise", type=float, default=None,
                   help="measure a run again if other processes took more than this share "
                   "of the CPUs during it (default 0.1; 0 = never; 0 with --quick)")
    p.add_argument("--retries", type=int, default=2,
                   help="at most this many extra attempts for a noisy run (default 2)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each run, wait up to this many seconds for other processes "
                   "to use under 15 %% of a core (default 20; 0 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke test: 4 MiB, 200 files, 10 pairs, 1 repetition")
    p.add_argument("--json", default=str(DEFAULT_JSON),
                   help=f"where to write the results (default {DEFAULT_JSON.relative_to(REPO)})")
    p.add_argument("--plot", default=None, help="draw a PNG plot here (needs matplotlib)")
    p.add_argument("--markdown", metavar="JSON", default=None,
                   help="print the figures of a results file as Markdown tables and exit")
    p.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp",
                   help="tmpfs for data and outputs (default /dev/shm)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per transfer before it is killed (default: from the size)")
    p.add_argument("--no-install", action="store_true",
                   help="do not create or refresh virtualenvs (ours, 0.1.1, magic-wormhole); "
                   "ours then runs from the current interpreter's install")
    p.add_argument("--baseline", choices=["auto", "python"], default="auto",
                   help="'python' uses bench.py's asyncio forwarder even if socat is present")
    p.add_argument("--launcher", choices=["auto", "python"], default="auto",
                   help="'python' uses the Python launcher even if a C compiler is present")
    args = p.parse_args(argv)
    quick = {"size": 4 << 20, "files": 200, "file_size": 4096, "pairs": 10,
             "pair_payload": 64 << 10, "repeat": 1, "warmup": 0, "max_noise": 0.0,
             "quiet_wait": 0.0}
    full = {"size": 1 << 30, "files": 10000, "file_size": 4096, "pairs": 1000,
            "pair_payload": 256 << 10, "repeat": 5, "warmup": 1, "max_noise": 0.1,
            "quiet_wait": 20.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.longlink_size is None:
        args.longlink_size = min(args.size, LONGLINK_MAX_SIZE)
    if args.repeat < 1 or args.size < 1 or args.files < 1 or args.pairs < 1:
        p.error("--repeat, --size, --files and --pairs must be positive")
    if args.longlink_size < 1 or args.window < 1:
        p.error("--longlink-size and --window must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    try:
        return run(args)
    finally:
        kill_everything()
