"""Concurrent streamed requests on one model: model-swap's batching against llama-server's.

    uv run python benchmarks/batching.py                          # Gemma 3 270M
    uv run python benchmarks/batching.py --quick                  # a tiny model, 1 round
    uv run python benchmarks/batching.py --out benchmarks/BATCHING.md
    uv run python benchmarks/batching.py --model path/to/model.gguf     # any model file

Also section 11 of ``benchmarks/suite.py``. Three kinds of traffic, each
request streaming one completion (its own prompt, greedy, ``--tokens`` tokens
at most):

- bursts: 1, 2, 4 and 8 clients at once, one request each;
- staggered closed loop: ``STAGGERED`` clients, client i starting i x
  ``--stagger`` seconds after the first, each sending its next request as soon
  as the previous one ended, ``--loops`` requests each;
- open loop: requests at Poisson arrival times (seeded, the same times for both
  servers) at 50% and 90% of llama-server's saturated request rate (its
  8-client burst; model-swap's own where llama-server is not built).

The figures: aggregate tokens/s (every completion token over the time from the
first request sent to the last stream ended; median over rounds) and TTFT p50
/ p95 (a request sent to its first text chunk, over all requests of all rounds).

model-swap: the store and the worker as separate processes (``PARALLEL`` = the
largest client count), streamed ``/v1/completions`` through the store.
llama-server: built from the llama.cpp that llama-cpp-python vendors
(``scripts/build_llama_server.sh``; found at ``$LLAMA_SERVER_BIN`` or
``.peer/bin/llama-server``), started per client count with ``-np N`` and
``N x N_CTX`` context cells, its default thread count, flash attention off (as the
worker runs it) and ``cache_prompt`` false (every request evaluates its whole
prompt, as the worker does); streamed ``/completion``. It is skipped, with a
line saying so, when it is not built. Medians over ``--rounds`` rounds; the
first round of each server is a warm-up and not counted. The traffic shapes are
in ``batching_traffic.py``; this file runs them against both servers and reports.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batching_traffic import (
    CLIENTS,
    LOADS,
    STAGGERED,
    measure,
    ours_one,
    peer_one,
    saturated_rate,
    steady,
)  # noqa: E402
from harness import (  # noqa: E402
    Services,
    free_port,
    llama_server_bin,
    standalone_models,
    start_process,
    stop_process,
)

# llama-server's -ngl for the worker's default N_GPU_LAYERS=-1 (all layers; no effect on a CPU
# build), or the N_GPU_LAYERS set in the environment (which the worker reads too).
PEER_GPU_LAYERS = (
    "999" if os.environ.get("N_GPU_LAYERS", "-1") == "-1" else os.environ["N_GPU_LAYERS"]
)
N_CTX = 2048
HEADER = [
    "clients",
    "model-swap tok/s",
    "llama-server tok/s",
    "ratio",
    "model-swap TTFT p50 / p95",
    "llama-server TTFT p50 / p95",
    "TTFT p50 ratio",
    "vs our 1 client",
    "target",
]


def measure_ours(tmp: Path, models: Path, model: str, args, rate: float | None) -> dict:
    """Bursts, then the steady traffic at ``rate`` (None: at our own saturated rate)."""
    services = Services(tmp, models, PARALLEL=str(max(CLIENTS)), N_CTX=str(N_CTX))
    one = partial(ours_one, model=model)
    try:
        burst = {n: measure(one, services.store_url, n, args.tokens, args.rounds) for n in CLIENTS}
        rate = rate or saturated_rate(burst, args.tokens)
        return {"burst": burst, "steady": steady(one, services.store_url, args, rate)}
    finally:
        services.stop()


def measure_peer(binary: Path, tmp: Path, path: Path, args) -> dict:
    """Bursts on ``-np N`` for each N; the steady traffic on ``-np 8`` (the worker's PARALLEL)."""
    burst, found = {}, {}
    for n in CLIENTS:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_process(
            [
                str(binary),
                *("-m", str(path), "--host", "127.0.0.1", "--port", str(port)),
                *("-np", str(n), "-c", str(n * N_CTX)),
                *("-fa", "off", "-ngl", PEER_GPU_LAYERS),
            ],
            {},
            tmp / f"llama-server-{n}.log",
            f"{url}/health",
        )
        try:
            burst[n] = measure(peer_one, url, n, args.tokens, args.rounds)
            if n == max(CLIENTS):
                found = steady(peer_one, url, args, saturated_rate(burst, args.tokens))
        finally:
            stop_process(process)
    return {"burst": burst, "steady": found}


def rows(ours: dict[int, dict], peer: dict[int, dict] | None) -> list[list[str]]:
    """The bursts' table."""
    table = []
    single = ours[1]["tps"]
    for n in CLIENTS:
        o = ours[n]
        cells = [str(n), f"{o['tps']:.1f}"]
        ttft_ours = f"{o['p50'] * 1000:.0f} / {o['p95'] * 1000:.0f} ms"
        if peer is None:
            cells += ["-", "-", ttft_ours, "-", "-"]
            target = "-"
        else:
            p = peer[n]
            tps_ratio, ttft_ratio = o["tps"] / p["tps"], o["p50"] / p["p50"]
            cells += [
                f"{p['tps']:.1f}",
                f"{tps_ratio:.2f}x",
                ttft_ours,
                f"{p['p50'] * 1000:.0f} / {p['p95'] * 1000:.0f} ms",
                f"{ttft_ratio:.2f}x",
            ]
            target = target_text(n, tps_ratio, ttft_ratio)
        cells += [f"{o['tps'] / single:.2f}x", target]
        table.append(cells)
    return table


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def target_text(n: int, tps_ratio: float, ttft_ratio: float) -> str:
    return (
        f"tok/s >= 0.95x: {verdict(tps_ratio >= 0.95)}; "
        f"TTFT p50 <= 1.2x: {verdict(ttft_ratio <= 1.2)}"
    )


STEADY_HEADER = [
    "traffic",
    "model-swap tok/s",
    "llama-server tok/s",
    "ratio",
    "model-swap TTFT p50 / p95",
    "llama-server TTFT p50 / p95",
    "TTFT p50 / p95 ratio",
    "target",
]


def steady_rows(ours: dict, peer: dict | None, args) -> list[list[str]]:
    def ms(found: dict) -> str:
        return f"{found['p50'] * 1000:.0f} / {found['p95'] * 1000:.0f} ms"

    labels = [("staggered", f"{STAGGERED} closed-loop clients, {args.stagger} s apart")]
    labels += [
        (load, f"Poisson {load:.0%} ({load * ours['rate']:.2f} req/s, {args.requests} requests)")
        for load in LOADS
    ]
    table = []
    for key, label in labels:
        o = ours[key]
        if not peer:
            table.append([label, f"{o['tps']:.1f}", "-", "-", ms(o), "-", "-", "-"])
            continue
        p = peer[key]
        tps, p50, p95 = o["tps"] / p["tps"], o["p50"] / p["p50"], o["p95"] / p["p95"]
        if key == "staggered":
            target = f"tok/s >= 0.95x: {verdict(tps >= 0.95)}"
        else:
            target = f"TTFT p50 and p95 <= 1.2x: {verdict(p50 <= 1.2 and p95 <= 1.2)}"
        cells = [label, f"{o['tps']:.1f}", f"{p['tps']:.1f}", f"{tps:.2f}x", ms(o), ms(p)]
        table.append(cells + [f"{p50:.2f}x / {p95:.2f}x", target])
    return table


def note(model: str, args, peer_line: str) -> str:
    return (
        f"{model}, greedy, at most {args.tokens} tokens per request, distinct prompts; "
        f"median aggregate tok/s over {args.rounds} rounds after a warm-up round, TTFT "
        f"percentiles over all their requests; threads: the worker's per-step rule "
        f"(inference_worker/threads.py), llama-server's own default. "
        f"model-swap: PARALLEL={max(CLIENTS)}, N_CTX={N_CTX}, streamed /v1/completions "
        f"through the store. {peer_line}"
    )


PEER_LINE = (
    "llama-server: `-np N -c N*{n_ctx} -fa off`, streamed /completion with cache_prompt false."
)
SKIPPED_LINE = (
    "llama-server: skipped, not built (run scripts/build_llama_server.sh or set LLAMA_SERVER_BIN)."
)


def run(tmp: Path, models: Path, model: str, args) -> tuple[list[tuple], str, dict]:
    """Both servers on the same traffic: [(title, header, rows)], the note, the raw figures."""
    binary = llama_server_bin()
    peer, line = None, SKIPPED_LINE
    if binary is None:
        print(SKIPPED_LINE)
    else:
        peer, line = measure_peer(binary, tmp, models / model, args), PEER_LINE.format(n_ctx=N_CTX)
    rate = saturated_rate(peer["burst"], args.tokens) if peer else None
    ours = measure_ours(tmp, models, model, args, rate)
    tables = [
        ("Bursts: N clients at once", HEADER, rows(ours["burst"], peer and peer["burst"])),
        (
            "Steady traffic",
            STEADY_HEADER,
            steady_rows(ours["steady"], peer and peer["steady"], args),
        ),
    ]
    return tables, note(model, args, line), {"ours": ours, "peer": peer}


def options(tokens: int, rounds: int, quick: bool) -> argparse.Namespace:
    """The steady sections' sizes: smaller with ``quick``."""
    return argparse.Namespace(
        tokens=tokens,
        rounds=rounds,
        stagger=0.2 if quick else 0.5,
        loops=2 if quick else 4,
        requests=8 if quick else 24,
    )


def bench_batching(report, args, tmp: Path, models: Path, model: str) -> None:
    """The suite's section 11."""
    found = options(32 if args.quick else 64, max(args.repeats, 1), args.quick)
    tables, text, data = run(tmp, models, model, found)
    report.data["batching"] = data
    for i, (title, header, table) in enumerate(tables):
        section = f"11{'ab'[i]}. Continuous batching on one model: {title}"
        report.table(section, header, table, text if i == 0 else "")


def markdown(tables: list[tuple], text: str, command: str) -> str:
    lines = [
        "# Continuous batching: concurrent streams on one model",
        "",
        f"Produced by `{command}` on {os.cpu_count()} CPU cores. {text}",
    ]
    for title, header, table in tables:
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |"]
        lines += ["|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="max tokens per request")
    parser.add_argument("--model", type=Path, help="a .gguf file instead of the default model")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.tokens = 1, min(args.tokens, 32)
    found = options(args.tokens, args.rounds, args.quick)
    with tempfile.TemporaryDirectory(prefix="model-swap-batching-") as name:
        tmp = Path(name)
        if args.model:
            models, model = args.model.resolve().parent, args.model.name
        else:
            models, model = standalone_models(tmp, args.quick)
        tables, text, _ = run(tmp, models, model, found)
    out = markdown(
        tables, text, "uv run python " + " ".join(["benchmarks/batching.py", *sys.argv[1:]])
    )
    print(out)
    if args.out:
        args.out.write_text(out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
