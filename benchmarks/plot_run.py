# /// script
# requires-python = ">=3.11"
# dependencies = ["matplotlib>=3.8"]
# ///
"""Chart where the time goes in a smoke-script run: one stacked bar per step.

Reads the output of a ``test_*_smoke.sh`` script (a file, or stdin) and draws,
per step, tcp_connect / time_to_first_byte / generation as one stacked
horizontal bar colored by the step's actual cache action, with the total time
at its end.

    uv run benchmarks/plot_run.py benchmarks/lru.txt            # -> benchmarks/lru.png
    ./test_cache_smoke.sh | uv run benchmarks/plot_run.py -o run.png --title "lru"

Exits 1 when the input has no timing lines.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

STEP = re.compile(r"^=== (\d+)\. (.*) -> expect: (.*) ===$")
TIMING = re.compile(
    r"^\[http (\d+) \| tcp_connect=([\d.]+)s  time_to_first_byte=([\d.]+)s  "
    r"generation=([\d.]+)s  total=([\d.]+)s \| throughput=~(\d+) bytes/s\]$"
)
ACTUAL = re.compile(r"^actual: action=(\S+) evicted=\[(.*)\]$")

ACTION_COLORS = {
    "load_from_store": "tab:orange",
    "load_from_local_store": "tab:blue",
    "already_loaded": "tab:green",
    "rejected": "tab:gray",
}
UNKNOWN_COLOR = "black"
SEGMENTS = (("tcp_connect", 0.35, "//"), ("time_to_first_byte", 0.7, ""), ("generation", 1.0, ""))
# Git-ignored: a chart of a run read from stdin never lands beside the committed ones.
DEFAULT_STDIN_OUTPUT = Path(__file__).resolve().parent / "out" / "smoke_bench.png"


@dataclass
class Step:
    label: str
    status: int = 0
    connect: float = 0.0
    ttfb: float = 0.0
    generation: float = 0.0
    total: float = 0.0
    action: str = "none"
    evicted: str = ""
    timed: bool = False


def parse(text: str) -> list[Step]:
    """The timed steps found in a smoke-script output, in order."""
    steps: list[Step] = []
    current: Step | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if match := STEP.match(line):
            current = Step(label=f"{match.group(1)}. {match.group(2)}")
            steps.append(current)
        elif (match := TIMING.match(line)) and current is not None:
            current.status = int(match.group(1))
            current.connect, current.ttfb, current.generation, current.total = (
                float(match.group(i)) for i in range(2, 6)
            )
            current.timed = True
        elif (match := ACTUAL.match(line)) and current is not None:
            current.action, current.evicted = match.group(1), match.group(2)
    return [step for step in steps if step.timed]


def plot(steps: list[Step], output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    height = 1.2 + 0.55 * len(steps)
    fig, ax = plt.subplots(figsize=(12, max(height, 3.2)))
    longest = max(step.total for step in steps) or 1.0
    for row, step in enumerate(steps):
        color = ACTION_COLORS.get(step.action, UNKNOWN_COLOR)
        widths = (step.connect, max(step.ttfb - step.connect, 0.0), step.generation)
        left = 0.0
        for (_, alpha, hatch), width in zip(SEGMENTS, widths, strict=True):
            ax.barh(
                row,
                width,
                left=left,
                color=color,
                alpha=alpha,
                hatch=hatch,
                edgecolor="white",
                height=0.6,
            )
            left += width
        note = f"{step.total:.3f}s  {step.action}"
        if step.status != 200:
            note += f" (HTTP {step.status})"
        if step.evicted:
            note += f", evicted {step.evicted}"
        ax.text(left + longest * 0.01, row, note, va="center", fontsize=8)
    ax.set_yticks(range(len(steps)), [step.label for step in steps], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, longest * 1.6)
    ax.set_xlabel("seconds (stacked: tcp_connect, time to first byte, generation)")
    ax.set_ylabel("step")
    ax.set_title(title)
    handles = [Patch(color=c, label=a) for a, c in ACTION_COLORS.items()]
    handles += [
        Patch(facecolor="dimgray", alpha=alpha, hatch=hatch, label=name, edgecolor="white")
        for name, alpha, hatch in SEGMENTS
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", help="smoke-script output (default: stdin)")
    parser.add_argument("-o", "--output", help="PNG to write (default: <input>.png)")
    parser.add_argument("--title", help="chart title (default: from the input name)")
    args = parser.parse_args(argv)

    if args.input and args.input != "-":
        source = Path(args.input)
        text = source.read_text(errors="replace")
        output = Path(args.output) if args.output else source.with_suffix(".png")
        title = args.title or f"{source.stem}: time per step"
    else:
        text = sys.stdin.read()
        output = Path(args.output) if args.output else DEFAULT_STDIN_OUTPUT
        title = args.title or "smoke run: time per step"

    steps = parse(text)
    if not steps:
        print(
            f"plot_run: no timing lines in {args.input or 'stdin'} "
            "(expected lines like '[http 200 | tcp_connect=0.000s  time_to_first_byte=...]')",
            file=sys.stderr,
        )
        return 1
    plot(steps, output, title)
    print(f"wrote {output} ({len(steps)} bars)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
