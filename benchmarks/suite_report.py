"""The suite's report: result tables into RESULTS.md, the chart into results.png,
and the names every section shares.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


GEMMA = "gemma-3-270m-q4_k_m.gguf"
OTHER = "tiny-other.gguf"
MB = 1024 * 1024


class Report:
    """Collects result tables and renders RESULTS.md."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, list[str], list[list[str]], str]] = []
        self.data: dict = {}

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
        self.sections.append((title, header, rows, note))
        print(f"\n## {title}")
        for row in rows:
            print("  " + " | ".join(row))

    def markdown(self, args) -> str:
        lines = [
            "# Performance results",
            "",
            f"Produced by `uv run python benchmarks/suite.py{' --quick' if args.quick else ''}` "
            f"on {datetime.now(UTC).strftime('%Y-%m-%d')}: {os.cpu_count()} CPU cores, "
            f"{platform.machine()}, no GPU, Python {platform.python_version()}. "
            f"Every figure is the median of {args.repeats} runs unless stated, next to a "
            "baseline measured in the same run. `ms` are milliseconds, `MB` are 10^6 bytes.",
            "",
        ]
        for title, header, rows, note in self.sections:
            lines += [f"## {title}", ""]
            if note:
                lines += [note, ""]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        # Generated from this run only: hand-written analysis of earlier runs stays in
        # benchmarks/ANALYSIS.md, which names the runs it describes.
        lines += ["![benchmark chart](results.png)", ""]
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


# -- chart --------------------------------------------------------------------------------


def chart(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    push = report.data.get("push", [])
    labels = [f"{p['mb']:.0f} MB" for p in push]
    xs = range(len(push))
    ax.bar(
        [x - 0.2 for x in xs],
        [p["raw_mbps"] for p in push],
        0.4,
        label="raw sendfile (baseline)",
        color="gray",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [p["http_mbps"] for p in push],
        0.4,
        label="HTTP push + blake3",
        color="tab:orange",
    )
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("MB/s")
    ax.set_title("1. push throughput")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    swaps = report.data.get("swaps", [])
    cases = ["bare", "warm", "cold", "hit", "direct"]
    names = {
        "bare": "bare load+1st token",
        "warm": "warm",
        "cold": "cold",
        "hit": "hit",
        "direct": "worker /infer",
    }
    width = 0.8 / max(len(swaps), 1)
    for i, s in enumerate(swaps):
        ax.bar(
            [c + i * width for c in range(len(cases))],
            [s[c] for c in cases],
            width,
            label=s["model"],
        )
    ax.set_xticks(
        [c + width * (len(swaps) - 1) / 2 for c in range(len(cases))],
        [names[c] for c in cases],
        fontsize=8,
    )
    ax.set_yscale("log")
    ax.set_ylabel("ms to first byte (log)")
    ax.set_title("2. swap latency")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    peer = report.data.get("peer", [])
    labels = [f"{p['model'][:18]}\n{p['case']}" for p in peer]
    xs = range(len(peer))
    ax.bar(
        [x - 0.2 for x in xs],
        [p["peer"] for p in peer],
        0.4,
        label="llama-cpp-python server",
        color="gray",
    )
    ax.bar(
        [x + 0.2 for x in xs], [p["ours"] for p in peer], 0.4, label="model-swap", color="tab:blue"
    )
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms to first byte (log)")
    ax.set_title("3. against a peer")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    conc = report.data.get("concurrency", [])
    ax.plot([c["clients"] for c in conc], [c["p50"] for c in conc], "o-", label="p50")
    ax.plot([c["clients"] for c in conc], [c["p95"] for c in conc], "o-", label="p95")
    ax.set_xlabel("concurrent clients (hits)")
    ax.set_ylabel("latency, ms")
    ax.set_title("6. latency under concurrency")
    ax.legend(fontsize=8)
    fig.suptitle("model-swap benchmark suite (medians; see RESULTS.md for baselines and ratios)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
