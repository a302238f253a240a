"""What grammar sampling costs: a ``json_schema`` chat against the same chat without one.

    uv run python benchmarks/grammar_sampling.py              # Gemma 3 270M, 5 rounds
    uv run python benchmarks/grammar_sampling.py --rounds 3 --model tiny-a.gguf

A worker and a store run in this process (loopback, port 0) on MODELS_DIR
(default ``models/``, where ``model-swap up`` puts Gemma 3 270M). Each round
sends the same chat (``max_tokens`` 48, seeded) without and with a JSON Schema
``response_format``, interleaved so machine noise hits both alike, and times
each whole request. Prints the median completion tokens per second of each and
their ratio (1.0: a grammar costs nothing). Writes no file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests

from inference_worker.app import create_app as create_worker_app
from inference_worker.config import WorkerSettings
from model_store_server.app import create_app as create_store_app
from model_store_server.config import StoreSettings
from model_swap.serving import ServerThread

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "city": {"type": "string"},
        "age": {"type": "integer"},
        "bio": {"type": "string"},
    },
    "required": ["name", "city", "age", "bio"],
}


def tokens_per_second(store: str, model: str, schema: bool) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Describe a person as JSON: name, city, age."}],
        "max_tokens": 48,
        "temperature": 0.7,
        "seed": 1,
    }
    if schema:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": SCHEMA},
        }
    started = time.perf_counter()
    answer = requests.post(f"{store}/v1/chat/completions", json=body, timeout=600)
    answer.raise_for_status()
    return answer.json()["usage"]["completion_tokens"] / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        worker = ServerThread(
            create_worker_app(
                WorkerSettings(
                    worker_host="127.0.0.1", worker_port=0, model_cache_dir=Path(tmp) / "cache"
                )
            )
        ).start()
        store = ServerThread(
            create_store_app(
                StoreSettings(
                    models_dir=args.models_dir,
                    worker_url=worker.url,
                    store_host="127.0.0.1",
                    store_port=0,
                    transport="http",
                )
            )
        ).start()
        try:
            tokens_per_second(store.url, args.model, False)  # load the model
            free, constrained = [], []
            for _ in range(args.rounds):
                free.append(tokens_per_second(store.url, args.model, False))
                constrained.append(tokens_per_second(store.url, args.model, True))
        finally:
            store.stop()
            worker.stop()
    free_tps, constrained_tps = statistics.median(free), statistics.median(constrained)
    print(f"{args.model}, {args.rounds} rounds, medians of whole requests:")
    print(f"  without a schema: {free_tps:.1f} tokens/s")
    print(f"  json_schema:      {constrained_tps:.1f} tokens/s")
    print(f"  ratio:            {constrained_tps / free_tps:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
