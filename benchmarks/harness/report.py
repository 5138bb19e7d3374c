"""The figures as printed tables, Markdown tables (for benchmarks/README.md) and a plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import ALL_CASES


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
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    cases = [c for c in ALL_CASES if c in results["cases"]]
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4), squeeze=False)
    for ax, name in zip(axes[0], cases, strict=True):
        case = results["cases"][name]
        rate = {"files": "files_s", "pairs": "pairs_s"}.get(name, "mb_s")
        tools = [t for t, r in case["results"].items() if rate in r.get("median", {})]
        values = [case["results"][t]["median"][rate] for t in tools]
        colors = {"baseline": "#777", "socat8k": "#aaa", "ours": "#2a7", "seed": "#c73",
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
