"""The figures as printed tables, Markdown tables (for benchmarks/README.md) and a plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import ALL_CASES, TLS_TOOLS

#: the per-role CPU figures (CPU-s per GB moved) and their column names
ROLE_METRICS = (("sender", "sender_cpu_s_per_gb"), ("receiver", "receiver_cpu_s_per_gb"),
                ("relay", "relay_cpu_s_per_gb"))


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def print_case(name: str, case: dict[str, Any]) -> None:
    print(f"\n== {name}: {case['description']}")
    rate = {"files": "files_s", "pairs": "pairs_s"}.get(name, "mb_s")
    unit = {"files_s": "files/s", "pairs_s": "pairs/s", "mb_s": "MB/s"}[rate]
    head = (f"{'tool':<22}{unit:>10}{'x base':>8}{'wall s':>8}{'snd CPU':>9}{'rcv CPU':>9}"
            f"{'relay CPU':>10}{'relay s/GB':>11}{'all s/GB':>9}{'snd MB':>8}{'rcv MB':>8}"
            f"{'relay MB':>9}")
    if name == "pairs":
        head += f"{'KiB/pair':>9}{'conns':>7}{'intact':>8}"
    print(head)
    for tool, res in case["results"].items():
        if "skipped" in res:
            # Most tools are not in the longlink cases; the JSON says so, once is enough here.
            if "rtt_s" not in case or "does not take part" not in res["skipped"]:
                print(f"{tool:<22}skipped: {res['skipped']}")
            continue
        m, r = res.get("median", {}), res.get("ratio_to_baseline", {})

        def mb(key: str, m: dict[str, float] = m) -> str:
            return fmt(m[key] / 1024, 0) if key in m else "-"

        line = (f"{tool:<22}{fmt(m.get(rate)):>10}"
                f"{(fmt(r.get(rate), 2) + 'x') if rate in r else '-':>8}"
                f"{fmt(m.get('wall_s'), 2):>8}{fmt(m.get('sender_cpu_s'), 2):>9}"
                f"{fmt(m.get('receiver_cpu_s'), 2):>9}{fmt(m.get('relay_cpu_s'), 2):>10}"
                f"{fmt(m.get('relay_cpu_s_per_gb'), 2):>11}"
                f"{fmt(m.get('all_cpu_s_per_gb'), 2):>9}{mb('sender_maxrss_kb'):>8}"
                f"{mb('receiver_maxrss_kb'):>8}{mb('relay_maxrss_kb'):>9}")
        if name == "pairs":
            line += (f"{fmt(m.get('relay_kb_per_pair'), 1):>9}"
                     f"{fmt(m.get('peak_connections')):>7}"
                     f"{fmt(m.get('intact_pairs')):>8}")
        if res.get("discarded_noisy"):
            line += f"  ({res['discarded_noisy']} noisy runs not counted)"
        if res.get("failures"):
            errors = [x.get("error", "?") for x in res["runs"] if not x.get("ok")]
            line += f"  ({res['failures']} failed: {errors[0][:300]})"
        print(line)


def _role_cell(res: dict[str, Any], key: str, digits: int = 2) -> str:
    """'0.62 (2.38x)': the median, and × that of the tool's reference."""
    value = res.get("median", {}).get(key)
    if value is None:
        return "-"
    ratio = res.get("ratio_to_reference", {}).get(key)
    return f"{value:,.{digits}f}" + (f" ({ratio:.2f}x)" if ratio is not None else "")


def print_roles(name: str, case: dict[str, Any]) -> None:
    """CPU per GB of each role, and its ratio to the same role of the tool's reference
    (the rate too, against the reference's)."""
    rows = [(tool, res) for tool, res in case["results"].items()
            if any(key in res.get("median", {}) for _, key in ROLE_METRICS)]
    if not rows or name == "pairs":
        return
    rate = "files_s" if name == "files" else "mb_s"
    print("  per role, CPU-s/GB (x the same role of the tool's reference in this run: "
          f"socat-tls for {', '.join(t for t in TLS_TOOLS if t != 'socat-tls')}, else "
          "baseline)")
    unit = {"mb_s": "MB/s", "files_s": "files/s"}[rate]
    print(f"  {'tool':<20}{'reference':<11}{unit:>17}"
          + "".join(f"{r:>17}" for r, _ in ROLE_METRICS))
    for tool, res in rows:
        print(f"  {tool:<20}{res.get('reference', '-'):<11}{_role_cell(res, rate, 0):>17}"
              + "".join(f"{_role_cell(res, key):>17}" for _, key in ROLE_METRICS))


def longlink_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The longlink cases side by side: RTT, the one-connection cap W/RTT, every tool's
    MB/s (and × baseline). A tool added to the case (adaptive lanes) gets its column."""
    cases = [(name, c) for name, c in results["cases"].items() if "rtt_s" in c]
    tools = [t for t in dict.fromkeys(t for _, c in cases for t in c["results"])
             if any("mb_s" in c["results"][t].get("median", {}) for _, c in cases)]
    head = ["RTT", "cap W/RTT, MB/s", *(f"{t}, MB/s" for t in tools),
            *(f"{t} ÷ baseline" for t in tools if t != "baseline")]
    rows = []
    for _, c in cases:
        res = c["results"]
        rows.append([f"{c['rtt_s'] * 1000:g} ms",
                     fmt(c["cap_mb_s"], 1) if c["cap_mb_s"] else "-",
                     *(fmt(res[t].get("median", {}).get("mb_s"), 1) for t in tools),
                     *(f"{res[t]['ratio_to_baseline']['mb_s']:.2f}"
                       if "mb_s" in res[t].get("ratio_to_baseline", {}) else "-"
                       for t in tools if t != "baseline")])
    return head, rows


def print_longlink(results: dict[str, Any]) -> None:
    head, rows = longlink_rows(results)
    if not rows:
        return
    window = results["config"]["window"] / 2**20
    print(f"\n== longlink, {window:g} MiB window: MB/s (median) beside one connection's "
          "cap W/RTT (ours: --lanes 1; ours-lanes: adaptive lanes, up to 8)")
    widths = [max(len(h), 8) + 2 for h in head]
    print("".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for row in rows:
        print("".join(f"{v:>{w}}" for v, w in zip(row, widths, strict=True)))


def markdown(results: dict[str, Any]) -> str:
    """The figures as Markdown tables (for benchmarks/README.md)."""
    lines: list[str] = []
    for name, case in results["cases"].items():
        rate = {"files": "files_s", "pairs": "pairs_s"}.get(name, "mb_s")
        unit = {"files_s": "files/s", "pairs_s": "pairs/s", "mb_s": "MB/s"}[rate]
        lines += [f"**{name}**: {case['description']}", ""]
        with_wsmin = any(rate in res.get("ratio_to_wsmin", {})
                         for res in case["results"].values())
        head = [unit, "× baseline", *(["× wsmin"] if with_wsmin else []), "wall s",
                "sender CPU s", "receiver CPU s", "relay CPU s", "relay CPU s/GB",
                "all CPU s/GB", "sender RSS MiB", "receiver RSS MiB", "relay RSS MiB"]
        if name == "pairs":
            head += ["relay KiB/pair", "peak conns", "intact"]
        lines += ["| tool | " + " | ".join(head) + " |",
                  "| --- |" + " ---: |" * len(head)]
        for tool, res in case["results"].items():
            if "skipped" in res:
                if "rtt_s" not in case or "does not take part" not in res["skipped"]:
                    lines.append(f"| {tool} | {res['skipped']} |" + " |" * (len(head) - 1))
                continue
            m, r = res.get("median", {}), res.get("ratio_to_baseline", {})

            def mb(key: str, m: dict[str, float] = m) -> str:
                return fmt(m[key] / 1024) if key in m else "-"

            w = res.get("ratio_to_wsmin", {})
            cells = [fmt(m.get(rate), 0 if rate != "pairs_s" else 0),
                     f"{r[rate]:.2f}" if rate in r else "-",
                     *([f"{w[rate]:.2f}" if rate in w else "-"] if with_wsmin else []),
                     fmt(m.get("wall_s"), 2),
                     fmt(m.get("sender_cpu_s"), 2), fmt(m.get("receiver_cpu_s"), 2),
                     fmt(m.get("relay_cpu_s"), 2), fmt(m.get("relay_cpu_s_per_gb"), 2),
                     fmt(m.get("all_cpu_s_per_gb"), 2), mb("sender_maxrss_kb"),
                     mb("receiver_maxrss_kb"), mb("relay_maxrss_kb")]
            if name == "pairs":
                cells += [fmt(m.get("relay_kb_per_pair"), 1), fmt(m.get("peak_connections")),
                          f"{fmt(m.get('intact_pairs'))}/{results['config']['pairs']:,}"]
            note = f" ({res['failures']} of {len(res['runs'])} runs failed)" \
                if res.get("failures") else ""
            if res.get("discarded_noisy"):
                note += f" ({res['discarded_noisy']} noisy runs redone)"
            lines.append(f"| {tool}{note} | " + " | ".join(cells) + " |")
        lines.append("")
        roles = [(tool, res) for tool, res in case["results"].items()
                 if any(key in res.get("median", {}) for _, key in ROLE_METRICS)]
        if roles and name != "pairs":
            lines += ["Per role, CPU-s/GB (× the same role of the reference):", "",
                      f"| tool | reference | {unit} | "
                      + " | ".join(r for r, _ in ROLE_METRICS) + " |",
                      "| --- | --- |" + " ---: |" * (1 + len(ROLE_METRICS))]
            lines += [f"| {tool} | {res.get('reference', '-')} | {_role_cell(res, rate, 0)} | "
                      + " | ".join(_role_cell(res, key) for _, key in ROLE_METRICS) + " |"
                      for tool, res in roles]
            lines.append("")
    head, rows = longlink_rows(results)
    if rows:
        lines += [f"**longlink**, {results['config']['window'] / 2**20:g} MiB window "
                  "(MB/s, median):", "", "| " + " | ".join(head) + " |",
                  "| --- |" + " ---: |" * (len(head) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    # The loopback cases (the longlink ones have their own table).
    cases = [c for c in ALL_CASES if c in results["cases"]]
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4), squeeze=False)
    for ax, name in zip(axes[0], cases, strict=True):
        case = results["cases"][name]
        rate = {"files": "files_s", "pairs": "pairs_s"}.get(name, "mb_s")
        tools = [t for t, r in case["results"].items() if rate in r.get("median", {})]
        values = [case["results"][t]["median"][rate] for t in tools]
        colors = {"baseline": "#777", "socat8k": "#aaa", "socat-tls": "#555", "ours": "#2a7",
                  "ours-wss": "#1a5", "ours-nginx-tls": "#083", "seed": "#c73",
                  "wormhole": "#37c", "wsmin": "#a5a"}
        bars = ax.bar(tools, values, color=[colors.get(t, "#999") for t in tools])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        unit = {"mb_s": "MB/s", "files_s": "files/s", "pairs_s": "pairs/s"}[rate]
        ax.set_title(f"{name} ({unit}, median)", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"p2p-copy benchmark, {results['machine']['nproc']} cores, "
                 f"{results['started'][:16]}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"plot written to {path}"
