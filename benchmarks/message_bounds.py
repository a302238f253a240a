"""What MAX_MESSAGES saves: refusing a huge message list against rendering and tokenizing it.

    uv run python benchmarks/message_bounds.py                  # Gemma 3 270M (/tmp/gemma.gguf)
    uv run python benchmarks/message_bounds.py --sizes 1025,5000 --rounds 3 --model PATH

Issue 32's third finding: empty messages cost nothing against MAX_PROMPT_CHARS, and a
worker rendered the whole chat template and tokenized it before comparing with N_CTX
(each such request ended in a 400 anyway). Two workers run in this process (loopback,
port 0) with the model loaded: one with the default MAX_MESSAGES (the bound), one with
MAX_MESSAGES so large that only N_CTX refuses (what every worker did before the bound);
a store in front of the bounded one answers ``/v1/chat/completions``. For each size N,
each round sends N empty user messages to all three (interleaved, so machine noise hits
them alike) and times each whole request to its 400. Prints the medians and the ratio
unbounded / bounded. Writes no file.
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
from model_swap.generation import MAX_MESSAGES
from model_swap.serving import ServerThread

EMPTY = {"role": "user", "content": ""}


def seconds_to_refuse(url: str, body: dict) -> float:
    start = time.perf_counter()
    r = requests.post(url, json=body, timeout=3600)
    elapsed = time.perf_counter() - start
    if r.status_code != 400:
        raise SystemExit(f"{url}: expected a 400, got {r.status_code} {r.text[:200]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/gemma.gguf"))
    parser.add_argument("--sizes", default="1025,5000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    name = "model.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp, "models")
        models.mkdir()
        (models / name).symlink_to(args.model.resolve())
        servers, workers = [], {}
        for label, limit in (("bounded", MAX_MESSAGES), ("unbounded", 10**9)):
            settings = WorkerSettings(
                worker_host="127.0.0.1",
                worker_port=0,
                model_cache_dir=Path(tmp, label),
                max_messages=limit,
                max_request_bytes=64 * 1024 * 1024,
            )
            worker = ServerThread(create_worker_app(settings)).start()
            servers.append(worker)
            with open(models / name, "rb") as f:
                requests.post(
                    f"{worker.url}/load_model_from_store",
                    data=f,
                    headers={"X-Model-Name": name},
                    timeout=600,
                ).raise_for_status()
            workers[label] = worker
        store_settings = StoreSettings(
            models_dir=models,
            worker_url=workers["bounded"].url,
            store_host="127.0.0.1",
            store_port=0,
            transport="http",
            max_request_bytes=64 * 1024 * 1024,
        )
        store = ServerThread(create_store_app(store_settings)).start()
        servers.append(store)
        targets = {
            "store (bound)": f"{store.url}/v1/chat/completions",
            "worker (bound)": f"{workers['bounded'].url}/infer",
            "worker (no bound)": f"{workers['unbounded'].url}/infer",
        }
        try:
            print(f"model {args.model.name}, MAX_MESSAGES={MAX_MESSAGES}, {args.rounds} rounds")
            print(f"{'messages':>9} " + " ".join(f"{t:>18}" for t in targets) + "   ratio")
            for size in sizes:
                body = {"model": name, "messages": [EMPTY] * size, "max_tokens": 1}
                times = {t: [] for t in targets}
                for _ in range(args.rounds):
                    for target, url in targets.items():
                        times[target].append(seconds_to_refuse(url, body))
                medians = {t: statistics.median(v) for t, v in times.items()}
                ratio = medians["worker (no bound)"] / medians["worker (bound)"]
                cells = " ".join(f"{medians[t] * 1000:>15.1f} ms" for t in targets)
                print(f"{size:>9} {cells}   {ratio:,.0f}x", flush=True)
        finally:
            for server in reversed(servers):
                server.stop()


if __name__ == "__main__":
    main()
