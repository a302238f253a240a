"""The batching benchmark's traffic: bursts, staggered closed-loop clients and Poisson
arrivals, each request one streamed completion against model-swap or llama-server
(see batching.py).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    percentile,
)

STAGGERED = 6


CLIENTS = (1, 2, 4, 8)
LOADS = (0.5, 0.9)
SEED = 27


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


def _summary(rates: list[float], ttfts: list[float]) -> dict:
    """Median aggregate tok/s over the rounds, and TTFT percentiles over all their requests."""
    return {
        "tps": statistics.median(rates),
        "p50": percentile(ttfts, 50),
        "p95": percentile(ttfts, 95),
    }


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
    return _summary(rates, ttfts)


def staggered(one, url: str, args) -> dict:
    """STAGGERED closed-loop clients, client i starting i x args.stagger s after the first."""
    rates, ttfts = [], []
    for round_ in range(args.rounds + 1):
        started = time.perf_counter()

        def client(i: int, round_: int = round_) -> list[tuple[float, int]]:
            time.sleep(i * args.stagger)
            first = 100 + 1000 * round_ + i * args.loops
            return [one(url, first + k, args.tokens) for k in range(args.loops)]

        with ThreadPoolExecutor(STAGGERED) as pool:
            results = [r for found in pool.map(client, range(STAGGERED)) for r in found]
        elapsed = time.perf_counter() - started
        if round_ == 0:
            continue  # warm-up
        rates.append(sum(count for _, count in results) / elapsed)
        ttfts += [ttft for ttft, _ in results]
    return _summary(rates, ttfts)


def arrivals(rate: float, count: int, seed: int) -> list[float]:
    """``count`` Poisson arrival times (seconds from the start) at ``rate`` requests/s."""
    rng = random.Random(seed)
    at, times = 0.0, []
    for _ in range(count):
        at += rng.expovariate(rate)
        times.append(at)
    return times


def open_loop(one, url: str, times: list[float], tokens: int) -> dict:
    """One request at each of ``times``, whatever the others are doing; TTFT percentiles."""
    started = time.perf_counter()

    def send(i: int) -> tuple[float, int]:
        time.sleep(max(0.0, started + times[i] - time.perf_counter()))
        return one(url, 5000 + i, tokens)

    with ThreadPoolExecutor(len(times)) as pool:
        results = list(pool.map(send, range(len(times))))
    elapsed = time.perf_counter() - started
    ttfts = [ttft for ttft, _ in results]
    return {
        "tps": sum(count for _, count in results) / elapsed,
        "p50": percentile(ttfts, 50),
        "p95": percentile(ttfts, 95),
    }


def steady(one, url: str, args, rate: float) -> dict:
    """The staggered clients, and the open loop at each of LOADS x ``rate`` requests/s."""
    found = {"staggered": staggered(one, url, args), "rate": rate}
    for load in LOADS:
        times = arrivals(load * rate, args.requests, SEED + int(load * 100))
        found[load] = open_loop(one, url, times, args.tokens)
    return found


def saturated_rate(burst: dict[int, dict], tokens: int) -> float:
    """Requests/s of the largest burst: its tok/s over one request's tokens."""
    return burst[max(CLIENTS)]["tps"] / tokens
