"""Concurrent streamed requests on one model: model-swap's batching against llama-server's.

    uv run python benchmarks/batching.py                          # Gemma 3 270M
    uv run python benchmarks/batching.py --quick                  # a tiny model, 1 round
    uv run python benchmarks/batching.py --out benchmarks/BATCHING.md

Also section 11 of ``benchmarks/suite.py``. For 1, 2, 4 and 8 clients at once,
each client streams one completion (its own prompt, greedy, ``--tokens``
tokens at most) and the figures are:

- aggregate tokens/s: every client's completion tokens over the time from the
  first request sent to the last stream ended;
- TTFT p50 / p95: time from a request sent to its first text chunk, over all
  requests of all rounds.

model-swap: the store and the worker as separate processes (``PARALLEL`` = the
largest client count), streamed ``/v1/completions`` through the store.
llama-server: built from the llama.cpp that llama-cpp-python vendors
(``scripts/build_llama_server.sh``; found at ``$LLAMA_SERVER_BIN`` or
``.peer/bin/llama-server``), started per client count with ``-np N`` and
``N x N_CTX`` context cells, its default thread count, flash attention off (as the
worker runs it) and ``cache_prompt`` false (every request evaluates its whole
prompt, as the worker does); streamed ``/completion``. It is skipped, with a
line saying so, when it is not built. Medians over ``--rounds`` rounds; the
first round of each server is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    free_port,
    llama_server_bin,
    percentile,
    standalone_models,
    start_process,
    stop_process,
)

CLIENTS = (1, 2, 4, 8)
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


def prompt(i: int) -> str:
    return f"Once upon a time, in kingdom number {i}, there lived"


def sse_events(response: requests.Response):
    """The JSON objects of a Server-Sent Events stream, as they arrive."""
    for line in response.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            yield json.loads(line[6:])


def ours_one(url: str, i: int, tokens: int, model: str) -> tuple[float, int]:
    """(TTFT seconds, completion tokens) of one streamed /v1/completions through the store."""
    body = {
        "model": model,
        "prompt": prompt(i),
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft, count = None, 0
    with requests.post(f"{url}/v1/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for event in sse_events(r):
            if ttft is None and event.get("choices") and event["choices"][0].get("text"):
                ttft = time.perf_counter() - started
            if event.get("usage"):
                count = event["usage"]["completion_tokens"]
    return ttft if ttft is not None else float("nan"), count


def peer_one(url: str, i: int, tokens: int) -> tuple[float, int]:
    """(TTFT seconds, tokens predicted) of one streamed /completion on llama-server."""
    body = {
        "prompt": prompt(i),
        "n_predict": tokens,
        "temperature": 0,
        "stream": True,
        "cache_prompt": False,
    }
    started = time.perf_counter()
    ttft, count = None, 0
    with requests.post(f"{url}/completion", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for event in sse_events(r):
            if ttft is None and event.get("content"):
                ttft = time.perf_counter() - started
            if event.get("stop"):
                count = event.get("tokens_predicted", count)
    return ttft if ttft is not None else float("nan"), count


def measure(one, url: str, clients: int, tokens: int, rounds: int) -> dict:
    """Aggregate tok/s (median over rounds) and TTFTs (pooled) of ``clients`` at once."""
    rates, ttfts = [], []
    for round_ in range(rounds + 1):
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda i: one(url, i, tokens), range(clients)))
        elapsed = time.perf_counter() - started
        if round_ == 0:
            continue  # warm-up
        rates.append(sum(count for _, count in results) / elapsed)
        ttfts += [ttft for ttft, _ in results]
    return {
        "tps": statistics.median(rates),
        "p50": percentile(ttfts, 50),
        "p95": percentile(ttfts, 95),
    }


def measure_ours(tmp: Path, models: Path, model: str, args) -> dict[int, dict]:
    services = Services(tmp, models, PARALLEL=str(max(CLIENTS)), N_CTX=str(N_CTX))
    one = partial(ours_one, model=model)
    try:
        return {n: measure(one, services.store_url, n, args.tokens, args.rounds) for n in CLIENTS}
    finally:
        services.stop()


def measure_peer(binary: Path, tmp: Path, path: Path, args) -> dict[int, dict]:
    results = {}
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
            results[n] = measure(peer_one, url, n, args.tokens, args.rounds)
        finally:
            stop_process(process)
    return results


def rows(ours: dict[int, dict], peer: dict[int, dict] | None) -> list[list[str]]:
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


def target_text(n: int, tps_ratio: float, ttft_ratio: float) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    if n == 1:
        return f"tok/s >= 0.95x: {verdict(tps_ratio >= 0.95)}"
    if n == 8:
        return (
            f"tok/s >= 0.9x: {verdict(tps_ratio >= 0.9)}; "
            f"TTFT p50 <= 1.5x: {verdict(ttft_ratio <= 1.5)}"
        )
    return "-"


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


def run(tmp: Path, models: Path, model: str, args) -> tuple[list[list[str]], str, dict]:
    ours = measure_ours(tmp, models, model, args)
    binary = llama_server_bin()
    if binary is None:
        print(SKIPPED_LINE)
        peer, line = None, SKIPPED_LINE
    else:
        peer, line = measure_peer(binary, tmp, models / model, args), PEER_LINE.format(n_ctx=N_CTX)
    return rows(ours, peer), note(model, args, line), {"ours": ours, "peer": peer}


def bench_batching(report, args, tmp: Path, models: Path, model: str) -> None:
    """The suite's section 11."""
    options = argparse.Namespace(tokens=32 if args.quick else 64, rounds=max(args.repeats, 1))
    table, text, data = run(tmp, models, model, options)
    report.data["batching"] = data
    report.table("11. Concurrent streams on one model: continuous batching", HEADER, table, text)


def markdown(table: list[list[str]], text: str) -> str:
    lines = [
        "# Continuous batching: concurrent streams on one model",
        "",
        f"Produced by `uv run python benchmarks/batching.py --out benchmarks/BATCHING.md` on "
        f"{os.cpu_count()} CPU cores. {text}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="max tokens per request")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.tokens = 1, min(args.tokens, 32)
    with tempfile.TemporaryDirectory(prefix="model-swap-batching-") as name:
        tmp = Path(name)
        models, model = standalone_models(tmp, args.quick)
        table, text, _ = run(tmp, models, model, args)
    out = markdown(table, text)
    print(out)
    if args.out:
        args.out.write_text(out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
