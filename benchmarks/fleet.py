"""Several workers behind one store: one worker against two (and three) on the same load.

    uv run python benchmarks/fleet.py                      # Gemma 3 270M copies (~5 minutes)
    uv run python benchmarks/fleet.py --quick              # tiny models, smaller bursts
    uv run python benchmarks/fleet.py --models 3 4 --out benchmarks/FLEET.md

A mixed concurrent load over ``--models`` copies of one model under their own
names (``fleet-a``, ``fleet-b``, ...; three by default): bursts of ``--clients`` concurrent
streamed ``/v1/completions`` (``--tokens`` each, models interleaved a, b, c,
a, ...), one warm-up burst, then ``--bursts`` measured ones. Every worker has
``MAX_LOADED_MODELS=1`` (the store's budgets apply per worker). This machine
has no accelerators, so each worker models one by owning one CPU core
(``CPU_AFFINITY`` and ``N_THREADS=1``):

- one worker on core 0 (the baseline, measured in the same run);
- two workers, on cores 0 and 1;
- three workers sharing the two cores (0, 1, 0): what the third saves in loads.

Per configuration, medians over the measured bursts: aggregate tokens per second
(text chunks received / burst wall time), p50/p95 time to the first token, and
loads (the workers' own load counts). The store and this client run unpinned on
the same two cores. Results go to stdout; with ``--out FILE`` also to markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    emit,
    free_port,
    link_names,
    median,
    percentile,
    standalone_models,
    start_process,
    start_worker,
    stop_process,
)

ALL_NAMES = ("fleet-a.gguf", "fleet-b.gguf", "fleet-c.gguf", "fleet-d.gguf")
NAMES = ALL_NAMES[:3]  # --models sets how many
PROMPT = "Once upon a time"
CONFIGS = {  # name -> each worker's CPU_AFFINITY
    "1 worker (core 0)": ("0",),
    "2 workers (cores 0, 1)": ("0", "1"),
    "3 workers (cores 0, 1, 0)": ("0", "1", "0"),
}


def one_stream(url: str, model: str, tokens: int) -> dict:
    """One streamed completion: seconds to the first text, text chunks, the worker."""
    started = time.perf_counter()
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "stream": True}
    first, chunks = None, 0
    with requests.post(url, json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        worker = response.headers.get("X-Worker")
        for line in response.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{model}: {chunk['error']}")
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - started
    return {"ttft": first, "chunks": chunks, "worker": worker}


def burst(url: str, clients: int, tokens: int, names) -> dict:
    asked = [names[i % len(names)] for i in range(clients)]
    gate = threading.Barrier(clients)

    def one(model: str) -> dict:
        gate.wait()
        return one_stream(url, model, tokens)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, asked))
    wall = time.perf_counter() - started
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    return {
        "wall": wall,
        "tok_s": sum(r["chunks"] for r in results) / wall,
        "p50": percentile(ttfts, 50),
        "p95": percentile(ttfts, 95),
        "workers": sorted({r["worker"] for r in results}),
    }


class Fleet:
    """Workers (one process each, pinned) and one store in front of them."""

    def __init__(self, workdir: Path, models: Path, affinities: tuple[str, ...], parallel: int):
        python = sys.executable
        self.workers, self.worker_urls = [], []
        for index, cpus in enumerate(affinities):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            self.workers.append(
                start_worker(
                    workdir,
                    index,
                    port,
                    CPU_AFFINITY=cpus,
                    N_THREADS="1",
                    PARALLEL=str(parallel),
                )
            )
            self.worker_urls.append(url)
        port = free_port()
        self.store_url = f"http://127.0.0.1:{port}"
        env = {
            "STORE_HOST": "127.0.0.1",
            "STORE_PORT": str(port),
            "MODELS_DIR": str(models),
            "MAX_LOADED_MODELS": "1",
            "MAX_CACHE_SIZE": str(len(ALL_NAMES)),  # every file fits each worker's disk
            "LOADING_COMMENTS_AFTER": "600",
            "LOG_LEVEL": "WARNING",
            ("WORKER_URLS" if len(affinities) > 1 else "WORKER_URL"): ",".join(self.worker_urls),
        }
        self.store = start_process(
            [python, "-m", "model_store_server.cli"],
            env,
            workdir / "store.log",
            f"{self.store_url}/health",
        )

    def loads(self) -> int:
        return sum(
            requests.get(f"{url}/status", timeout=30).json()["loads"] for url in self.worker_urls
        )

    def stop(self) -> None:
        stop_process(self.store)
        for worker in self.workers:
            stop_process(worker)


def run_config(tmp: Path, models: Path, name: str, affinities, args, names) -> dict:
    workdir = tmp / f"fleet-{len(names)}-{len(affinities)}"
    workdir.mkdir()
    fleet = Fleet(workdir, models, affinities, args.parallel)
    url = f"{fleet.store_url}/v1/completions"
    try:
        burst(url, args.clients, args.tokens, names)  # warm-up: files reach the workers' disks
        measured = []
        for _ in range(args.bursts):
            before = fleet.loads()
            result = burst(url, args.clients, args.tokens, names)
            result["loads"] = fleet.loads() - before
            measured.append(result)
            print(
                f"  {len(names)} models, {name}: {result['tok_s']:.1f} tok/s, "
                f"wall {result['wall']:.2f} s, TTFT p95 {result['p95']:.2f} s, "
                f"{result['loads']} loads",
                flush=True,
            )
    except Exception:
        print((workdir / "store.log").read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        fleet.stop()
    return {
        "tok_s": median([r["tok_s"] for r in measured]),
        "wall": median([r["wall"] for r in measured]),
        "p50": median([r["p50"] for r in measured]),
        "p95": median([r["p95"] for r in measured]),
        "loads": median([r["loads"] for r in measured]),
        "workers_used": max(len(r["workers"]) for r in measured),
    }


def report(results: dict, args, model: str) -> str:
    lines = [
        "# Several workers: one against two and three",
        "",
        f"Generated by `uv run python benchmarks/fleet.py{' --quick' if args.quick else ''}"
        f" --models {' '.join(map(str, args.models))} --clients {args.clients}"
        f" --tokens {args.tokens} --bursts {args.bursts} --parallel {args.parallel}`"
        f" on {time.strftime('%Y-%m-%d')}.",
        "",
        f"Copies of {model} under their own names (fleet-a, fleet-b, ...); bursts of "
        f"{args.clients} concurrent streamed /v1/completions, {args.tokens} tokens each, "
        f"models interleaved; every worker MAX_LOADED_MODELS=1, PARALLEL={args.parallel}, "
        "N_THREADS=1, pinned to the core named; the store and the client unpinned on the "
        f"same 2 cores. Medians of {args.bursts} bursts after one warm-up burst; the ratio "
        "is against one worker on the same models in the same run.",
        "",
        "| models | workers | tok/s | vs 1 worker | wall s | TTFT p50 s | TTFT p95 s "
        "| loads per burst |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count, by_config in results.items():
        base = by_config[next(iter(CONFIGS))]
        for name, r in by_config.items():
            lines.append(
                f"| {count} | {name} | {r['tok_s']:.1f} | {r['tok_s'] / base['tok_s']:.2f}x "
                f"| {r['wall']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['loads']:g} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, smaller bursts")
    parser.add_argument(
        "--models", type=int, nargs="+", default=[3], choices=range(1, len(ALL_NAMES) + 1)
    )
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4, help="each worker's PARALLEL")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    args.clients = args.clients or (6 if args.quick else 12)
    args.tokens = args.tokens or (8 if args.quick else 32)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        tmp = Path(tmp)
        models, source = standalone_models(tmp, args.quick)
        link_names(models, models / source, ALL_NAMES)
        results = {}
        for count in args.models:
            names = ALL_NAMES[:count]
            results[count] = {
                name: run_config(tmp, models, name, affinities, args, names)
                for name, affinities in CONFIGS.items()
            }
    text = report(results, args, source)
    return emit(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
