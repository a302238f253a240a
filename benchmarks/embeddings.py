"""Embedding latency on a resident model: the store against the worker's own call and llama-server.

    uv run python benchmarks/embeddings.py                 # Gemma 3 270M, 10 rounds
    uv run python benchmarks/embeddings.py --quick         # a tiny model, 3 rounds
    uv run python benchmarks/embeddings.py --out benchmarks/EMBEDDINGS.md

For one model, already loaded everywhere, each round measures one request of
one input and one of a batch of 32 inputs (the same texts everywhere) on:

- the store's ``POST /v1/embeddings`` (policy, swap path, worker call, OpenAI JSON);
- the worker's own ``POST /infer`` with ``embed`` (what the store sends): the baseline;
- llama.cpp's ``llama-server --embeddings --pooling mean`` on the same file (context
  N_CTX, batch and micro-batch the worker's EMBEDDING_TOKENS), at its
  ``/v1/embeddings`` (``LLAMA_SERVER_BIN``, default .peer/bin/llama-server;
  skipped with a line saying so when it is missing).

Rounds interleave the paths, so machine noise hits all alike; medians are
reported with their ratio to the worker's own call. The vectors of the store
and of llama-server are compared (cosine similarity of the same input).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Services,
    free_port,
    llama_server_bin,
    median,
    standalone_models,
    start_process,
    stop_process,
)

BATCH = 32
TEXTS = [
    f"Sentence {i}: a model swapper keeps small embedding models next to chat models."
    for i in range(BATCH)
]


def start_llama_server(binary: str, tmp: Path, path: Path, n_ctx: int, tokens: int) -> tuple:
    """llama.cpp's server with embeddings on (mean pooling, as model-swap for this file),
    its batch and micro-batch the worker's embedding batch (``tokens``)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [binary, "-m", str(path), "--embeddings", "--pooling", "mean"]
    args += ["-c", str(n_ctx), "-b", str(tokens), "-ub", str(tokens)]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    process = start_process(args, {}, tmp / "llama-server.log", f"{url}/health")
    return process, url


def timed(call: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = call()
    return time.perf_counter() - started, vectors


def openai_call(url: str, model: str, inputs: list[str]) -> Callable[[], np.ndarray]:
    def call() -> np.ndarray:
        answer = requests.post(url, json={"model": model, "input": inputs}, timeout=600)
        answer.raise_for_status()
        data = sorted(answer.json()["data"], key=lambda item: item["index"])
        return np.array([item["embedding"] for item in data], dtype=np.float32)

    return call


def worker_call(url: str, model: str, inputs: list[str]) -> Callable[[], np.ndarray]:
    import base64

    def call() -> np.ndarray:
        answer = requests.post(url, json={"model": model, "embed": inputs}, timeout=600)
        answer.raise_for_status()
        body = answer.json()
        raw = base64.b64decode(body["embeddings_base64"])
        return np.frombuffer(raw, dtype="<f4").reshape(len(inputs), body["dimensions"])

    return call


def measure(services: Services, model: str, peer_url: str | None, rounds: int) -> dict:
    store = f"{services.store_url}/v1/embeddings"
    worker = f"{services.worker_url}/infer"
    paths: dict[str, Callable] = {}
    for size, inputs in (("1", TEXTS[:1]), (str(BATCH), TEXTS)):
        paths[f"store/{size}"] = openai_call(store, model, inputs)
        paths[f"worker/{size}"] = worker_call(worker, model, inputs)
        if peer_url:
            paths[f"llama-server/{size}"] = openai_call(f"{peer_url}/v1/embeddings", model, inputs)
    vectors = {name: run() for name, run in paths.items()}  # load, create contexts, warm
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in paths.items():
            seconds, _ = timed(run)
            samples[name].append(seconds)
    result = {name: median(values) * 1000 for name, values in samples.items()}
    result["dimensions"] = int(vectors[f"store/{BATCH}"].shape[1])
    if peer_url:
        ours, theirs = vectors[f"store/{BATCH}"], vectors[f"llama-server/{BATCH}"]
        result["cosine_min"] = float(np.min(np.sum(ours * theirs, axis=1)))
    return result


def table(result: dict, peer: bool) -> list[str]:
    lines = [
        "| inputs | store /v1/embeddings | worker /infer (baseline) | store / worker "
        "| llama-server | store / llama-server |",
        "|---|---|---|---|---|---|",
    ]
    for size in ("1", str(BATCH)):
        store, worker = result[f"store/{size}"], result[f"worker/{size}"]
        row = [size, f"{store:.2f} ms", f"{worker:.2f} ms", f"{store / worker:.2f}x"]
        if peer:
            llama = result[f"llama-server/{size}"]
            row += [f"{llama:.2f} ms", f"{store / llama:.2f}x"]
        else:
            row += ["skipped", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and 3 rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, help="also write the results as markdown here")
    args = parser.parse_args()
    binary = llama_server_bin()
    rounds = 3 if args.quick else args.rounds
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="model-swap-embeddings-") as name:
        tmp = Path(name)
        models, model = standalone_models(tmp, args.quick)
        services = Services(tmp, models, CACHE_POLICY="lru", MAX_CACHE_SIZE="2")
        peer = peer_url = None
        try:
            if binary is not None:
                worker = services.worker_status()
                peer, peer_url = start_llama_server(
                    str(binary), tmp, models / model, worker["n_ctx"], worker["embedding_tokens"]
                )
            else:
                lines.append(
                    "llama-server skipped: not built (run scripts/build_llama_server.sh "
                    "or set LLAMA_SERVER_BIN)."
                )
            result = measure(services, model, peer_url, rounds)
        finally:
            if peer is not None:
                stop_process(peer)
            services.stop()
    lines = [
        "# Embedding latency on a resident model",
        "",
        f"Generated by `benchmarks/embeddings.py{' --quick' if args.quick else ''}`: {model} "
        f"({result['dimensions']} dimensions), medians of {rounds} interleaved rounds per path, "
        f"one input and a batch of {BATCH}; the model resident everywhere.",
        "",
        *lines,
        *table(result, peer_url is not None),
    ]
    if "cosine_min" in result:
        lines += [
            "",
            f"Lowest cosine similarity between model-swap's and llama-server's vector of the "
            f"same input (batch of {BATCH}): {result['cosine_min']:.6f}.",
        ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
