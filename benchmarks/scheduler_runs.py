"""The scheduler benchmark's runs: a burst against the store or llama-server's router, the
thrash soak, and the hit overhead through the store (see scheduler.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    free_port,
    llama_server_bin,
    median,
    percentile,
    start_process,
    stop_process,
    stream_timing,
)
from timeline import (  # noqa: E402
    client_timeline,
    timeline,
)

NAMES = ("sched-a.gguf", "sched-b.gguf", "sched-c.gguf")
SOAK_NAMES = ("soak-a.gguf", "soak-b.gguf", "soak-c.gguf")
PROMPT = "Once upon a time"
N_CTX = 2048  # tokens per sequence (the worker's default N_CTX)


def first_token_stream(url: str, model: str, tokens: int, field: str) -> dict:
    """One streamed completion: seconds to the first text chunk, total seconds, model,
    the wall time it was sent and its request id (``X-Request-Id``, for the timeline)."""
    rid = uuid.uuid4().hex
    sent, started = time.time(), time.perf_counter()
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "stream": True}
    first, answered = None, None
    headers = {"X-Request-Id": rid}
    with requests.post(url, json=body, stream=True, timeout=600, headers=headers) as response:
        response.raise_for_status()
        answered = response.headers.get("X-Model")
        for line in response.iter_lines():
            if not line.startswith(b"data: {"):
                continue  # SSE comments (a load in progress) and [DONE]
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{model}: {chunk['error']}")
            if first is None and chunk.get("choices"):
                first = time.perf_counter() - started
            answered = answered or chunk.get(field)
    total = time.perf_counter() - started
    return {"ttft": first, "total": total, "model": answered, "sent": sent, "id": rid}


def burst(url: str, names: list[str], clients: int, tokens: int, strip_ext: bool) -> dict:
    """``clients`` concurrent requests, models interleaved; figures over all of them."""
    asked = [names[i % len(names)] for i in range(clients)]
    asked = [name.removesuffix(".gguf") if strip_ext else name for name in asked]
    gate = threading.Barrier(clients)

    def one(model: str) -> dict:
        gate.wait()
        return first_token_stream(url, model, tokens, "model")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, asked))
    wall = time.perf_counter() - started
    ttfts = [r["ttft"] for r in results]
    right = sum(1 for r, model in zip(results, asked, strict=True) if r["model"] == model)
    for r, model in zip(results, asked, strict=True):
        r["asked"] = model.removesuffix(".gguf")
    return {
        "results": results,
        "wall": wall,
        "p50": percentile(ttfts, 50),
        "p95": percentile(ttfts, 95),
        "right": right,
        "count": clients,
    }


@contextlib.contextmanager
def checkout(source: Path | None):
    """Start services from ``source`` (another checkout: ``python -m`` imports from the
    working directory), or from this one."""
    if source is None:
        yield
        return
    here = Path.cwd()
    os.chdir(source)
    try:
        yield
    finally:
        os.chdir(here)


def store_burst(
    tmp: Path,
    models: Path,
    names: list[str],
    args,
    max_wait: str,
    source: Path | None = None,
    tokens: int | None = None,
    run: int = 0,
) -> dict:
    tokens = tokens or args.tokens
    work = tmp / f"sched-store-{max_wait}-{tokens}-{run}{'-before' if source else ''}"
    work.mkdir()
    with checkout(source):
        services = Services(
            work,
            models,
            MAX_CACHE_SIZE="3",
            MAX_LOADED_MODELS="1",
            SCHEDULER_MAX_WAIT=max_wait,
            PARALLEL=str(args.parallel),  # the router's -np
            N_CTX=str(N_CTX),
            LOADING_COMMENTS_AFTER="600",
            # The arrival-order baseline swaps up to 16 times: on a busy machine its last
            # requests wait past the default 120 s, and the router has no such limit.
            SWAP_WAIT_TIMEOUT="600",
            LOG_FORMAT="json",  # the timeline reads its lines by request id
            LOG_LEVEL="INFO",
        )
    try:
        for name in names:  # every file on the worker's disk; nothing resident
            services.ask(name)
        for name in names:
            requests.post(f"{services.store_url}/models/{name}/unload", timeout=120)
        loads = services.worker_status()["loads"]
        steps = decode_steps(services.worker_url)
        try:
            result = burst(
                f"{services.store_url}/v1/completions", names, args.clients, tokens, False
            )
        except Exception:
            print((work / "store.log").read_text()[-4000:], file=sys.stderr)
            raise
        result["loads"] = services.worker_status()["loads"] - loads
        after = decode_steps(services.worker_url)
        result["threads"] = {
            t: n - steps.get(t, 0) for t, n in after.items() if n > steps.get(t, 0)
        }
    finally:
        services.stop()
    result["timeline"] = timeline(result.pop("results"), work)
    return result


STEPS_LINE = re.compile(r'^model_swap_worker_decode_steps_total\{threads="(\d+)"\} (\S+)$')


def decode_steps(worker_url: str) -> dict[int, int]:
    """The worker's llama_decode calls so far, by thread count (its /metrics)."""
    text = requests.get(f"{worker_url}/metrics", timeout=30).text
    found = (STEPS_LINE.match(line) for line in text.splitlines())
    return {int(m.group(1)): int(float(m.group(2))) for m in found if m}


def peer_binary(quick: bool) -> str | None:
    """The llama-server to compare with (``--quick``: only one named by LLAMA_SERVER_BIN)."""
    if quick and not os.environ.get("LLAMA_SERVER_BIN"):
        return None
    binary = llama_server_bin()
    return str(binary) if binary else None


def router_burst(
    tmp: Path,
    models: Path,
    names: list[str],
    args,
    binary: str,
    tokens: int | None = None,
    run: int = 0,
) -> dict:
    """llama-server in router mode over a directory holding only ``names``."""
    tokens = tokens or args.tokens
    directory = tmp / f"sched-router-models-{tokens}-{run}"
    directory.mkdir()
    for name in names:
        os.link(models / name, directory / name)
    port = free_port()
    log = tmp / f"sched-router-{tokens}-{run}.log"
    process = start_process(
        [
            binary,
            "--models-dir",
            str(directory),
            "--models-max",
            "1",
            # The worker's slots: PARALLEL sequences of N_CTX tokens each.
            "-np",
            str(args.parallel),
            "-c",
            str(args.parallel * N_CTX),
            # The worker's kernels: llama.cpp's default (auto) turns flash attention on for
            # the CPU, the worker runs without it (as benchmarks/batching.py compares).
            "-fa",
            "off",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        {},
        log,
        f"http://127.0.0.1:{port}/models",
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/completions"
        result = burst(url, names, args.clients, tokens, True)
    finally:
        stop_process(process)
    result["loads"] = len(re.findall(r"spawning server instance with name=", log.read_text()))
    result["timeline"] = client_timeline(result.pop("results"))
    return result


def soak(tmp: Path, models: Path, args, max_wait: str) -> dict:
    work = tmp / f"sched-soak-{max_wait}"
    work.mkdir()
    services = Services(
        work, models, MAX_CACHE_SIZE="1", MAX_LOADED_MODELS="1", SCHEDULER_MAX_WAIT=max_wait
    )
    try:
        services.ask(SOAK_NAMES[0])
        pushes = services.worker_status()["received"]["uploads"]
        url = f"{services.store_url}/user_request"
        latencies: list[float] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            for j in range(args.soak_requests):
                model = SOAK_NAMES[(index + j) % len(SOAK_NAMES)]
                _, total, _ = stream_timing(
                    url, {"prompt": PROMPT, "model": model, "max_tokens": 2}
                )
                with lock:
                    latencies.append(total)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.soak_clients) as pool:
            list(pool.map(client, range(args.soak_clients)))
        wall = time.perf_counter() - started
        return {
            "pushes": services.worker_status()["received"]["uploads"] - pushes,
            "p95": percentile(latencies, 95),
            "p50": percentile(latencies, 50),
            "wall": wall,
            "count": len(latencies),
        }
    finally:
        services.stop()


def hit_overhead(
    tmp: Path, models: Path, name: str, count: int, source: Path | None = None
) -> dict:
    work = tmp / f"sched-hits{'-before' if source else ''}"
    work.mkdir()
    with checkout(source):
        services = Services(work, models)
    try:
        services.ask(name)
        body = {"prompt": PROMPT, "max_tokens": 1}
        store, worker = [], []
        for _ in range(count):  # interleaved: the two share every disturbance
            store.append(services.ask(name, "already_loaded")[0])
            worker.append(stream_timing(f"{services.worker_url}/infer", {**body, "model": name})[0])
        return {"store": median(store), "worker": median(worker)}
    finally:
        services.stop()
