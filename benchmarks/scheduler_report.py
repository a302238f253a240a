"""The scheduler benchmark's report: the burst, soak and hit tables, the verdicts and the
timelines, as markdown (see scheduler.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timeline import (  # noqa: E402
    TIMELINE_HEADER,
    floor,
    timeline_rows,
    where_the_time_goes,
)

BURST_HEADER = [
    "server",
    "loads",
    "wall time",
    "TTFT p50",
    "TTFT p95",
    "right model",
    "wall vs router",
]


def wall_cell(run: dict) -> str:
    """A burst's wall time; with several runs, the median and every run's."""
    walls = run.get("walls") or [run["wall"]]
    if len(walls) == 1:
        return f"{run['wall']:.2f} s"
    return f"{run['wall']:.2f} s (median of {', '.join(f'{w:.2f}' for w in walls)})"


def rows(results: dict, args) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    router = results["router"]
    burst_rows = []
    for label, key in (
        ("model-swap, SCHEDULER_MAX_WAIT=2 (default)", "scheduler"),
        ("model-swap, SCHEDULER_MAX_WAIT=0 (arrival order)", "arrival"),
        ("llama-server router, --models-max 1", "router"),
        (f"model-swap from {args.baseline_src} (before)", "before"),
    ):
        if key not in results:
            continue
        r = results[key]
        if r is None:
            burst_rows.append([label, "skipped: llama-server not found", "", "", "", "", ""])
            continue
        ratio = f"{r['wall'] / router['wall']:.2f}x" if router else "n/a"
        burst_rows.append(
            [
                label,
                str(r["loads"]),
                wall_cell(r),
                f"{r['p50']:.2f} s",
                f"{r['p95']:.2f} s",
                f"{r['right']}/{r['count']}",
                ratio,
            ]
        )
    soak_rows = []
    for label, key in (("SCHEDULER_MAX_WAIT=2", "scheduler"), ("SCHEDULER_MAX_WAIT=0", "arrival")):
        if results["soak"] is None:
            break
        r = results["soak"][key]
        soak_rows.append(
            [
                label,
                str(r["pushes"]),
                f"{r['p50'] * 1000:.0f} ms",
                f"{r['p95'] * 1000:.0f} ms",
                f"{r['wall']:.1f} s",
                str(r["count"]),
            ]
        )
    hit_rows = [
        [
            label,
            f"{hits['store'] * 1000:.2f} ms",
            f"{hits['worker'] * 1000:.2f} ms",
            f"{(hits['store'] - hits['worker']) * 1000:+.2f} ms",
        ]
        for label, hits in (("this code", results["hits"]), ("before", results.get("hits_before")))
        if hits
    ]
    return burst_rows, soak_rows, hit_rows


SOAK_HEADER = ["store", "pushes", "p50", "p95", "wall time", "requests"]


HIT_HEADER = ["code", "store /user_request", "worker /infer", "overhead"]


def verdicts(results: dict) -> list[str]:
    s, router = results["scheduler"], results["router"]
    lines = [
        f"loads <= distinct models + 2 (5): {s['loads']} -> "
        + ("met" if s["loads"] <= 5 else "not met")
    ]
    if router:
        lines.append(wall_verdict("", s, router, 0.67, results.get("bare_load")))
        for tokens, pair in sorted(results.get("timelines", {}).items()):
            if tokens == 48 and pair["router"]:
                lines.append(
                    wall_verdict(
                        " at 48 tokens", pair["ours"], pair["router"], 0.8, results.get("bare_load")
                    )
                )
    else:
        lines.append("wall time against the router: not measured (llama-server not built)")
    if results["hits"]:
        over = (results["hits"]["store"] - results["hits"]["worker"]) * 1000
        verdict = "met" if over <= 1 else "not met"
        lines.append(f"hit overhead <= +1 ms: {over:+.2f} ms -> {verdict}")
    return lines


def wall_verdict(label: str, ours: dict, router: dict, target: float, bare: dict | None) -> str:
    """The burst's wall time against the router's and its target, with the floor (see
    ``timeline.floor``) where llama.cpp's own load was measured."""
    ratio = ours["wall"] / router["wall"]
    line = (
        f"wall time{label} <= {target}x router's: {ratio:.2f}x -> "
        f"{'met' if ratio <= target else 'not met'}"
    )
    if bare is None:
        return line
    least = floor(router, bare, ours)["ratio"]
    reach = "below" if least > target else "within"
    return f"{line} (floor {least:.2f}x: the target is {reach} what llama.cpp's load allows)"


def timeline_sections(results: dict) -> list[str]:
    lines = []
    for tokens, pair in sorted(results["timelines"].items()):
        ours, router = pair["ours"], pair["router"]
        lines += [
            f"## Timeline: the burst at {tokens} tokens",
            "",
            where_the_time_goes(tokens, ours, router, results.get("bare_load")),
            "",
        ]
        runs = len(ours.get("walls") or [ours["wall"]])
        which = f" (the run with the median wall time of {runs})" if runs > 1 else ""
        lines += [f"model-swap (default store){which}, seconds from the first request sent:", ""]
        lines += [table(TIMELINE_HEADER, timeline_rows(ours["timeline"])), ""]
        if router:
            lines += [f"llama-server router{which}, as its clients saw it:", ""]
            lines += [table(TIMELINE_HEADER, timeline_rows(router["timeline"])), ""]
    return lines


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def bare_load_lines(results: dict) -> list[str]:
    bare = results.get("bare_load")
    if bare is None:
        return []
    loads = ", ".join(f"{seconds:.3f}" for seconds in bare["all"])
    return [
        f"llama.cpp alone loads {results['source']} in {bare['median']:.3f} s (median of "
        f"{loads} s: `llama_model_load_from_file`, default parameters, the file in the page "
        "cache, in a fresh process with the worker's huge pages, after the bursts) and "
        "evaluates one model's "
        f"{bare['sequences']} prompts in one `llama_decode` in {bare['prefill']:.3f} s (median "
        "of 5): each model's turn in a burst costs at least both.",
        "",
    ]


def markdown(results: dict, args) -> str:
    burst_rows, soak_rows, hit_rows = rows(results, args)
    more = []
    if soak_rows:
        more = [
            f"## Thrash soak: {args.soak_clients} clients x {args.soak_requests} requests over "
            "three tiny models, MAX_CACHE_SIZE=1",
            "",
            table(SOAK_HEADER, soak_rows),
            "",
            f"## Hit latency: time to first byte, median of {args.hits}, max_tokens=1",
            "",
            table(HIT_HEADER, hit_rows),
            "",
        ]
    return "\n".join(
        [
            "# Scheduler benchmark",
            "",
            f"Produced by `uv run python benchmarks/scheduler.py{' --quick' if args.quick else ''}"
            f"{f' --baseline-src {args.baseline_src}' if args.baseline_src else ''} "
            f"--out ...` on {os.cpu_count()} CPU cores, no GPU. Model: three copies of "
            f"{results['source']} under three names; MAX_LOADED_MODELS=1; {args.parallel} "
            f"sequences at once on each side (the worker's PARALLEL, the router's -np); the "
            "router without flash attention (-fa off), as the worker runs.",
            "",
            *bare_load_lines(results),
            f"## Burst: {args.clients} concurrent streamed /v1/completions, "
            f"{args.tokens} tokens each",
            "",
            table(BURST_HEADER, burst_rows),
            "",
            *more,
            *timeline_sections(results),
            "## Targets",
            "",
            *[f"- {line}" for line in verdicts(results)],
            "",
        ]
    )
