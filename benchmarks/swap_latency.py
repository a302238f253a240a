"""Swap latency and push throughput, each against a baseline measured in the same run.

Starts a real inference worker and a real store as separate processes on free
loopback ports (as they run in production), then measures, as medians over
``--repeats`` runs:

- TTFB through the store with max_tokens=1 for a cold swap (load_from_store),
  a warm swap (load_from_local_store) and a hit (already_loaded), for Gemma 3
  270M and a tiny model of ``--tiny-mb`` MiB; baselines: bare llama-cpp-python
  load + first token in this process, and the worker's own /infer TTFB;
- HTTP push throughput (the store's transport, into the worker's cache) for a
  ``--push-mb`` MiB file; baseline: a raw loopback TCP ``sendfile`` into a file.

Run: ``uv run python benchmarks/swap_latency.py`` (about a minute here).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_store_server.digests import DigestCache  # noqa: E402
from model_store_server.transport import HttpTransport  # noqa: E402
from model_store_server.worker_client import WorkerClient  # noqa: E402
from model_swap.cli import ensure_default_model  # noqa: E402
from model_swap.tiny_models import write_tiny_model  # noqa: E402

GEMMA = "gemma-3-270m-q4_k_m.gguf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(module: str, env: dict, log: Path, health_url: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(health_url, timeout=1).ok:
                return process
        except requests.RequestException:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{module} did not start; see {log}")


def ttfb(url: str, body: dict) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    response = requests.post(url, json=body, stream=True, timeout=300)
    response.raise_for_status()
    chunks = response.iter_content(chunk_size=None)
    next(chunks)
    elapsed = time.perf_counter() - started
    for _ in chunks:
        pass
    return elapsed, response


def bare_load_first_token(path: Path) -> float:
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(path), n_gpu_layers=-1, n_ctx=2048, verbose=False)
    tokens = llm.tokenize(b"hello", add_bos=True)
    next(iter(llm.generate(tokens)))
    elapsed = time.perf_counter() - started
    llm.close()
    return elapsed


def raw_sendfile_seconds(path: Path, sink_dir: Path) -> float:
    """Loopback TCP: client ``socket.sendfile``, server ``recv_into`` straight to a file."""
    size = path.stat().st_size
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def receive():
        conn, _ = server.accept()
        buffer = bytearray(4 * 1024 * 1024)
        view = memoryview(buffer)
        with conn, open(sink_dir / "raw.bin", "wb") as out:
            remaining = size
            while remaining:
                n = conn.recv_into(view)
                if not n:
                    break
                out.write(view[:n])
                remaining -= n
        done.set()

    thread = threading.Thread(target=receive)
    thread.start()
    started = time.perf_counter()
    with socket.create_connection(server.getsockname()) as client, open(path, "rb") as f:
        client.sendfile(f)
    done.wait()
    elapsed = time.perf_counter() - started
    thread.join()
    server.close()
    (sink_dir / "raw.bin").unlink()
    return elapsed


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny-mb", type=float, default=100)
    parser.add_argument("--push-mb", type=float, default=256)
    parser.add_argument("--no-gemma", action="store_true", help="skip the Gemma model")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="swap-bench-") as tmp:
        tmp = Path(tmp)
        models = tmp / "models"
        models.mkdir()
        tiny = f"tiny-{int(args.tiny_mb)}mb.gguf"
        write_tiny_model(models / tiny, size_mb=args.tiny_mb)
        write_tiny_model(models / "tiny-other.gguf")
        push_file = write_tiny_model(tmp / "push.gguf", size_mb=args.push_mb)
        nbytes = push_file.stat().st_size
        subjects = [tiny] if args.no_gemma else [GEMMA, tiny]
        if not args.no_gemma:
            ensure_default_model(models)

        worker_port, store_port = free_port(), free_port()
        worker_url = f"http://127.0.0.1:{worker_port}"
        store_url = f"http://127.0.0.1:{store_port}"
        env = {
            "WORKER_HOST": "127.0.0.1",
            "WORKER_PORT": str(worker_port),
            "MODEL_CACHE_DIR": str(tmp / "cache"),
            "STORE_HOST": "127.0.0.1",
            "STORE_PORT": str(store_port),
            "WORKER_URL": worker_url,
            "MODELS_DIR": str(models),
            "CACHE_POLICY": "lru",
            "MAX_CACHE_SIZE": "3",
            "LOG_LEVEL": "WARNING",
        }
        worker = start("inference_worker.cli", env, tmp / "worker.log", f"{worker_url}/healthz")
        store = start("model_store_server.cli", env, tmp / "store.log", f"{store_url}/healthz")
        try:
            user = f"{store_url}/user_request"

            def ask(model: str, expect: str) -> float:
                body = {"prompt": "hello", "model": model, "max_tokens": 1}
                seconds, response = ttfb(user, body)
                action = response.headers["X-Cache-Action"]
                if action != expect:
                    raise RuntimeError(f"{model}: expected {expect}, store did {action}")
                return seconds

            ask("tiny-other.gguf", "load_from_store")  # warm up both processes
            rows = []
            for model in subjects:
                bare, cold, warm, hit, direct = [], [], [], [], []
                for _ in range(args.repeats):
                    bare.append(bare_load_first_token(models / model))
                    requests.post(f"{store_url}/reset", timeout=60).raise_for_status()
                    cold.append(ask(model, "load_from_store"))
                    hit.append(ask(model, "already_loaded"))
                    direct.append(
                        ttfb(
                            f"{worker_url}/infer",
                            {"prompt": "hello", "max_tokens": 1, "model": model},
                        )[0]
                    )
                    ask("tiny-other.gguf", "load_from_store")
                    warm.append(ask(model, "load_from_local_store"))
                rows.append((model, (models / model).stat().st_size, bare, cold, warm, hit, direct))

            client = WorkerClient(worker_url, connect_timeout=5, read_timeout=600)
            transport = HttpTransport(client)
            pushes, raws = [], []
            digest = DigestCache().sha256(push_file)
            for _ in range(args.repeats):
                raws.append(raw_sendfile_seconds(push_file, tmp))
                result = transport.push("push.gguf", push_file, sha256=digest, load=False)
                pushes.append(result.seconds)
                client.evict("push.gguf")
        finally:
            for process in (store, worker):
                process.terminate()
                process.wait(timeout=30)

    print(f"median of {args.repeats} runs; TTFB with max_tokens=1, through the store\n")
    print(
        "| model | size | bare load+1st token | cold (load_from_store) | "
        "warm (load_from_local_store) | hit (already_loaded) | worker /infer alone |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model, size, bare, cold, warm, hit, direct in rows:
        b = median_ms(bare)
        print(
            f"| {model} | {size / 1e6:.0f} MB | {b:.1f} ms | {median_ms(cold):.1f} ms | "
            f"{median_ms(warm):.1f} ms ({median_ms(warm) / b:.2f}x bare) | "
            f"{median_ms(hit):.1f} ms | {median_ms(direct):.1f} ms |"
        )
    push_s, raw_s = statistics.median(pushes), statistics.median(raws)
    print(f"\npush of a {nbytes / 1e6:.0f} MB file into the worker's cache")
    print("| path | median time | throughput | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| raw loopback sendfile (baseline) | {raw_s * 1000:.0f} ms | "
        f"{nbytes / raw_s / 1e6:.0f} MB/s | 1.00x |"
    )
    print(
        f"| HTTP transport (store -> worker) | {push_s * 1000:.0f} ms | "
        f"{nbytes / push_s / 1e6:.0f} MB/s | {raw_s / push_s:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
