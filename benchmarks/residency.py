"""Several resident models: alternating requests, and the worker's memory against the estimate.

    uv run python benchmarks/residency.py           # three copies of Gemma 3 270M (~3 minutes)
    uv run python benchmarks/residency.py --quick   # three tiny models, 2 rounds

Also section 8 of ``benchmarks/suite.py``. Three models of one size (copies of
one file under three names, as three fine-tunes of one base would be) are
requested in turn A, B, C, A, B, C... through ``/user_request`` (streamed,
``max_tokens`` 1), each time measuring the time to the first byte:

- with ``MAX_LOADED_MODELS=3`` (all three stay resident after the first round);
- with ``MAX_LOADED_MODELS=1`` (the seed: every request loads from the disk cache);
- the baseline, in the same run: one model asked again and again (a plain hit).

Medians after one warm-up round. Then the worker's resident set size (VmRSS) is
read with 0, 1, 2 and 3 models made resident by ``POST /models/<name>/load``
(and after one short generation on each, which touches the compute buffer),
against the footprint estimate the budget uses (``model_swap/footprint.py``)
and the buffer sizes llama.cpp itself logged.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    link_names,
    median,
    rss_bytes,
    serving_pid,
    standalone_models,
    stream_timing,
)

NAMES = ("model-a.gguf", "model-b.gguf", "model-c.gguf")
MIB = 1024 * 1024


def prepare_models(models: Path, source: Path) -> list[str]:
    """Three names for one file (hard links when possible: the store only reads them)."""
    return link_names(models, source, NAMES)


def alternate(services: Services, names: list[str], rounds: int) -> tuple[list[float], dict]:
    """TTFBs of ``rounds`` measured rounds over ``names`` (after one warm-up round),
    and the count of each cache action seen in the measured rounds."""
    for name in names:
        services.ask(name)
    times, actions = [], {}
    for _ in range(rounds):
        for name in names:
            first, _, action = ask(services, name)
            times.append(first)
            actions[action] = actions.get(action, 0) + 1
    return times, actions


def ask(services: Services, name: str) -> tuple[float, float, str]:
    first, total, response = stream_timing(
        f"{services.store_url}/user_request",
        {"prompt": "Once upon a time", "model": name, "max_tokens": 1},
    )
    return first, total, response.headers["X-Cache-Action"]


def single_hits(services: Services, name: str, count: int) -> list[float]:
    services.ask(name)
    return [ask(services, name)[0] for _ in range(count)]


def measure_alternation(tmp: Path, models: Path, names: list[str], rounds: int) -> dict:
    result = {}
    for loaded in (3, 1):
        workdir = tmp / f"alternate-{loaded}"
        workdir.mkdir()
        services = Services(
            workdir, models, MAX_CACHE_SIZE="3", MAX_LOADED_MODELS=str(loaded), CACHE_POLICY="lru"
        )
        try:
            times, actions = alternate(services, names, rounds)
            hits = single_hits(services, names[0], rounds * len(names))
            result[loaded] = {"alternating": median(times), "hit": median(hits), "actions": actions}
        finally:
            services.stop()
    return result


def measure_memory(tmp: Path, models: Path, names: list[str]) -> list[dict]:
    workdir = tmp / "memory"
    workdir.mkdir()
    services = Services(workdir, models, MAX_CACHE_SIZE="3", MAX_LOADED_MODELS="3")
    try:
        pid = serving_pid(services.worker.pid)
        base = rss_bytes(pid)
        rows = [{"resident": 0, "rss": base, "rss_after": base, "estimate": 0, "llama": 0}]
        for count, name in enumerate(names, start=1):
            url = f"{services.store_url}/models/{name}/load"
            requests.post(url, timeout=600).raise_for_status()
            loaded = rss_bytes(pid)
            services.ask(name, max_tokens=8)
            status = services.worker_status()
            rows.append(
                {
                    "resident": count,
                    "rss": loaded,
                    "rss_after": rss_bytes(pid),
                    "estimate": sum(e["estimated_bytes"] for e in status["resident"]),
                    "llama": sum(e.get("llama_bytes") or 0 for e in status["resident"]),
                }
            )
        return rows
    finally:
        services.stop()


def alternation_rows(result: dict) -> list[list[str]]:
    three, one = result[3], result[1]
    return [
        [
            "MAX_LOADED_MODELS=3",
            f"{three['alternating'] * 1000:.1f} ms",
            f"single-model hit {three['hit'] * 1000:.1f} ms",
            f"{(three['alternating'] - three['hit']) * 1000:+.1f} ms",
            _actions(three["actions"]),
            "within +2 ms of a hit: "
            + ("met" if three["alternating"] <= three["hit"] + 0.002 else "**not met**"),
        ],
        [
            "MAX_LOADED_MODELS=1",
            f"{one['alternating'] * 1000:.1f} ms",
            f"single-model hit {one['hit'] * 1000:.1f} ms",
            f"{one['alternating'] / one['hit']:.0f}x",
            _actions(one["actions"]),
            "(a load per request)",
        ],
    ]


def _actions(actions: dict) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(actions.items()))


def memory_rows(rows: list[dict]) -> list[list[str]]:
    base = rows[0]["rss"]
    out = []
    for row in rows[1:]:
        grown, grown_after = row["rss"] - base, row["rss_after"] - base
        out.append(
            [
                str(row["resident"]),
                f"{grown / MIB:.0f} MiB",
                f"{grown_after / MIB:.0f} MiB",
                f"{row['estimate'] / MIB:.0f} MiB",
                f"{row['llama'] / MIB:.0f} MiB",
                f"{grown_after / row['estimate']:.2f}",
            ]
        )
    return out


ALTERNATION_HEADER = [
    "configuration",
    "median TTFB, A,B,C,...",
    "baseline",
    "difference",
    "actions",
    "target",
]
MEMORY_HEADER = [
    "resident models",
    "RSS growth after load",
    "after a generation each",
    "estimate (budget)",
    "llama.cpp's buffers",
    "RSS / estimate",
]
NOTE = (
    "Three names for one {size} file, requested in turn through /user_request (max_tokens 1, "
    "streamed), {rounds} measured rounds after a warm-up round; the baseline is one model "
    "asked repeatedly on the same services. RSS is the worker process's VmRSS growth over "
    "its RSS with no model; the estimate is what MAX_LOADED_BYTES counts "
    "(model_swap/footprint.py); llama.cpp's buffers are the sizes it logged at load."
)


def bench_residency(report, args, tmp: Path, models: Path, source: str) -> None:
    """The suite's section 8."""
    names = prepare_models(models, models / source)
    rounds = max(args.repeats * 2, 2)
    result = measure_alternation(tmp, models, names, rounds)
    memory = measure_memory(tmp, models, names)
    report.data["residency"] = {"alternation": result, "memory": memory}
    size = f"{(models / source).stat().st_size / 1e6:.0f} MB"
    report.table(
        "8a. Three models alternating: several resident against one",
        ALTERNATION_HEADER,
        alternation_rows(result),
        NOTE.format(size=size, rounds=rounds),
    )
    report.table("8b. Worker memory against the estimate", MEMORY_HEADER, memory_rows(memory))


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three tiny models, 2 rounds")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="model-swap-residency-") as name:
        tmp = Path(name)
        models, source = standalone_models(tmp, args.quick)
        rounds = 2 if args.quick else args.rounds
        names = prepare_models(models, models / source)
        result = measure_alternation(tmp, models, names, rounds)
        memory = measure_memory(tmp, models, names)
    print(table(ALTERNATION_HEADER, alternation_rows(result)))
    print()
    print(table(MEMORY_HEADER, memory_rows(memory)))
    print()
    print(f"{rounds} measured rounds; source model {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
