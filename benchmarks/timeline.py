"""A burst's requests on one time axis, from the client's times and the services' log lines.

Used by ``benchmarks/scheduler.py``: the store and the worker log JSON lines
(``LOG_FORMAT=json``) under each request's ``X-Request-Id``, which the client
chose; the executor's lines are the swap a request carried out, the worker's
``[infer] TTFT`` line less its TTFT is when its prefill started. The router
(llama-server) is seen from the client's side only.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path


def log_events(path: Path) -> dict[str, list[tuple[float, str, str]]]:
    """A service's JSON log lines by request id: (wall time, logger, message)."""
    found: dict[str, list[tuple[float, str, str]]] = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        rid = entry.get("request_id") if isinstance(entry, dict) else None
        if not rid:
            continue
        at = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        found.setdefault(rid, []).append((at.timestamp(), entry["logger"], entry["message"]))
    return found


TTFT_LINE = re.compile(r"\[infer\] TTFT: ([0-9.]+)s")
LOAD_LINE = re.compile(r"loaded \S+ in ([0-9.]+)s")
# The worker's loggers of a swap: the engine unloads, the loader loads.
WORKER_LOGGERS = ("inference_worker.engine", "inference_worker.loader")


def timeline(results: list[dict], work: Path) -> list[dict]:
    """Each request of a burst on one time axis (seconds from the first request sent):
    arrival, the swap it carried out (the store's executor lines under its request id;
    none if it rode on another's), prefill start (the worker's first-token line less its
    TTFT), first and last token as the client saw them."""
    store, worker = log_events(work / "store.log"), log_events(work / "worker.log")
    origin = min(r["sent"] for r in results)
    rows = []
    for r in results:
        swap = [at for at, logger, _ in store.get(r["id"], ()) if logger.endswith("executor")]
        swap_start, load = None, None
        if swap:  # from its first action (an unload, a push, a load) to its last line
            swap_start = min(swap)
            for at, logger, message in worker.get(r["id"], ()):
                if not logger.endswith(WORKER_LOGGERS):
                    continue
                if message.startswith("unloaded"):
                    swap_start = min(swap_start, at)
                loaded = LOAD_LINE.match(message)
                if loaded:
                    load = float(loaded.group(1))
                    swap_start = min(swap_start, at - load)
            swap_start -= origin
        prefill = None
        for at, _, message in worker.get(r["id"], ()):
            match = TTFT_LINE.search(message)
            if match:
                prefill = at - float(match.group(1)) - origin
        rows.append(
            {
                "model": r["asked"],
                "arrival": r["sent"] - origin,
                "swap": None if swap_start is None else (swap_start, max(swap) - origin),
                "load": load,  # seconds of the swap's load inside the worker (None: none)
                "prefill": prefill,
                "first": r["sent"] + r["ttft"] - origin,
                "last": r["sent"] + r["total"] - origin,
            }
        )
    return sorted(rows, key=lambda row: row["first"])


def union(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by ``intervals``."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def breakdown(rows: list[dict]) -> dict:
    """Where a burst's wall time went: swapping, generating (prefill to last token, not
    during a swap), and neither (waiting on HTTP, the scheduler's decisions)."""
    wall = max(row["last"] for row in rows)
    swaps = [row["swap"] for row in rows if row["swap"]]
    running = [(row["prefill"] or row["first"], row["last"]) for row in rows]
    swapping = union(swaps)
    busy = union(swaps + running)
    return {
        "wall": wall,
        "swaps": len(swaps),
        "swapping": swapping,
        "loading": sum(row.get("load") or 0.0 for row in rows),
        "generating": busy - swapping,
        "idle": wall - busy,
    }


def router_breakdown(rows: list[dict]) -> dict:
    """The router's burst from the client's side: the wall time, and for each model in
    the order served, when its first token came and its last one went."""
    phases = {}
    for row in rows:
        first, last = phases.get(row["model"], (float("inf"), 0.0))
        phases[row["model"]] = (min(first, row["first"]), max(last, row["last"]))
    return {
        "wall": max(row["last"] for row in rows),
        "phases": sorted(phases.items(), key=lambda p: p[1]),
    }


def floor(router: dict, bare: dict, ours: dict | None = None) -> dict:
    """The least wall time a server could take for the router's burst with one model
    resident: each model loaded once and its group's prompts evaluated in one step as fast
    as llama.cpp alone does (``bare``: the seconds of each, see scheduler.py), then its
    requests decoded as fast as the faster of the router and ``ours`` decoded them in this
    run, from their first token to their last. All in sequence: the next model may load
    only once the previous one is gone."""
    phases = router_breakdown(router["timeline"])["phases"]
    spans = {"router": decode_spans(phases)}
    if ours is not None:
        spans["ours"] = decode_spans(router_breakdown(ours["timeline"])["phases"])
    generating = min(spans.values())
    turns = len(phases) * (bare["median"] + bare["prefill"])
    return {
        "models": len(phases),
        "spans": spans,
        "generating": generating,
        "seconds": turns + generating,
        "ratio": (turns + generating) / router["wall"],  # as the burst's ratio: the client's
    }


def decode_spans(phases: list) -> float:
    """Seconds from each model's first token to its last (``router_breakdown``'s phases),
    summed over the models."""
    return sum(last - first for _, (first, last) in phases)


def timeline_rows(rows: list[dict]) -> list[list[str]]:
    def at(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return [
        [
            row["model"],
            at(row["arrival"]),
            "-" if row["swap"] is None else f"{row['swap'][0]:.2f}-{row['swap'][1]:.2f}",
            at(row["prefill"]),
            at(row["first"]),
            at(row["last"]),
        ]
        for row in rows
    ]


TIMELINE_HEADER = [
    "model",
    "arrival",
    "swap (start-end)",
    "prefill start",
    "first token",
    "last token",
]


def where_the_time_goes(
    tokens: int, ours: dict, router: dict | None, bare: dict | None = None
) -> str:
    b = breakdown(ours["timeline"])
    text = (
        f"At {tokens} tokens model-swap's wall time {b['wall']:.2f} s: {b['swaps']} swaps "
        f"covering {b['swapping']:.2f} s (of which the worker's loads {b['loading']:.2f} s), "
        f"generation (prefill to last token) outside them {b['generating']:.2f} s, neither "
        f"{b['idle']:.2f} s."
    )
    if ours.get("threads"):
        steps = ", ".join(
            f"{calls} on {threads} thread{'s' if threads > 1 else ''}"
            for threads, calls in sorted(ours["threads"].items())
        )
        text += f" Its decode steps: {steps}."
    if router:
        r = router_breakdown(router["timeline"])
        phases = "; ".join(
            f"{model} first token {first:.2f} s, last {last:.2f} s"
            for model, (first, last) in r["phases"]
        )
        text += (
            f" The router's {r['wall']:.2f} s (ratio {b['wall'] / r['wall']:.2f}x), by model in "
            f"the order served: {phases}."
        )
        if bare is not None:
            f = floor(router, bare, ours)
            text += (
                f" Floor: {f['models']} loads of {bare['median']:.2f} s and prefills of "
                f"{bare['prefill']:.2f} s (llama.cpp alone), and {f['generating']:.2f} s from "
                "each model's first token to its last (the faster side's: router "
                f"{f['spans']['router']:.2f} s, model-swap {f['spans']['ours']:.2f} s), "
                f"{f['seconds']:.2f} s: {f['ratio']:.2f}x the router's wall time."
            )
    return text


def client_timeline(results: list[dict]) -> list[dict]:
    """A burst's requests as the client saw them (no server lines: the router's)."""
    origin = min(r["sent"] for r in results)
    rows = [
        {
            "model": r["asked"],
            "arrival": r["sent"] - origin,
            "swap": None,
            "prefill": None,
            "first": r["sent"] + r["ttft"] - origin,
            "last": r["sent"] + r["total"] - origin,
        }
        for r in results
    ]
    return sorted(rows, key=lambda row: row["first"])
