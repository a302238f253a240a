"""Shared pieces of the benchmarks: real service processes, timing helpers and baselines.

Everything here measures real processes on 127.0.0.1: the project's worker and
store (started as ``python -m ...`` exactly as in production), bare
llama-cpp-python in the benchmark's own process, and raw loopback sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_swap.probes import free_port, wait_until_healthy  # noqa: E402

__all__ = ["free_port"]


def start_process(
    args: list[str], env: dict, log: Path, health_url: str, timeout: float = 120
) -> subprocess.Popen:
    """Start ``args`` with ``env`` added, logging to ``log``; wait until ``health_url`` answers."""
    process = subprocess.Popen(
        args,
        env={**os.environ, **env},
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_healthy(
            health_url, process=process, timeout=timeout, describe=str(args), path=""
        )
    except RuntimeError as err:
        process.kill()
        raise RuntimeError(f"{err}; see {log}:\n{log.read_text()[-2000:]}") from None
    return process


def start_worker(workdir: Path, index: int, port: int, **settings: str) -> subprocess.Popen:
    """Worker number ``index`` as a process on ``127.0.0.1:port``, its cache and log under
    ``workdir``; ``settings`` are more of its environment variables."""
    env = {
        "WORKER_HOST": "127.0.0.1",
        "WORKER_PORT": str(port),
        "MODEL_CACHE_DIR": str(workdir / f"cache-{index}"),
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "inference_worker.cli"]
    return start_process(args, env, workdir / f"worker-{index}.log", f"{url}/health")


def start_llama_server(tmp: Path, models: dict[str, Path], name: str) -> tuple:
    """llama-cpp-python's own server (the peer) serving ``models`` (alias -> file) on a free
    port; returns (process, base URL). Stop it with ``stop_process``."""
    port = free_port()
    config = {
        "host": "127.0.0.1",
        "port": port,
        "models": [
            {
                "model": str(path),
                "model_alias": alias,
                "n_ctx": 2048,
                "n_gpu_layers": -1,
                "verbose": False,
            }
            for alias, path in models.items()
        ],
    }
    config_file = tmp / f"{name}.json"
    config_file.write_text(json.dumps(config))
    url = f"http://127.0.0.1:{port}"
    process = start_process(
        [sys.executable, "-m", "llama_cpp.server", "--config_file", str(config_file)],
        {},
        tmp / f"{name}.log",
        f"{url}/v1/models",
    )
    return process, url


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Services:
    """A worker and a store as separate processes on free loopback ports."""

    def __init__(self, workdir: Path, models_dir: Path, **store_env: str):
        self.worker_port, self.store_port = free_port(), free_port()
        self.worker_url = f"http://127.0.0.1:{self.worker_port}"
        self.store_url = f"http://127.0.0.1:{self.store_port}"
        env = {
            "WORKER_HOST": "127.0.0.1",
            "WORKER_PORT": str(self.worker_port),
            "MODEL_CACHE_DIR": str(workdir / "cache"),
            "STORE_HOST": "127.0.0.1",
            "STORE_PORT": str(self.store_port),
            "WORKER_URL": self.worker_url,
            "MODELS_DIR": str(models_dir),
            "LOG_LEVEL": "WARNING",
            **store_env,
        }
        python = sys.executable
        self.worker = start_process(
            [python, "-m", "inference_worker.cli"],
            env,
            workdir / "worker.log",
            f"{self.worker_url}/healthz",
        )
        self.store = start_process(
            [python, "-m", "model_store_server.cli"],
            env,
            workdir / "store.log",
            f"{self.store_url}/healthz",
        )

    def ask(self, model: str, expect: str | None = None, max_tokens: int = 1) -> tuple:
        """TTFB and total seconds of one /user_request; checks the cache action if given."""
        first, total, response = stream_timing(
            f"{self.store_url}/user_request",
            {"prompt": "Once upon a time", "model": model, "max_tokens": max_tokens},
        )
        action = response.headers["X-Cache-Action"]
        if expect is not None and action != expect:
            raise RuntimeError(f"{model}: expected {expect}, the store did {action}")
        return first, total

    def reset(self) -> None:
        requests.post(f"{self.store_url}/reset", timeout=120).raise_for_status()

    def worker_status(self) -> dict:
        return requests.get(f"{self.worker_url}/status", timeout=30).json()

    def stop(self) -> None:
        stop_process(self.store)
        stop_process(self.worker)


def stream_timing(url: str, body: dict) -> tuple[float, float, requests.Response]:
    """POST ``body`` and read the streamed answer: (seconds to first byte, total, response)."""
    started = time.perf_counter()
    response = requests.post(url, json=body, stream=True, timeout=600)
    response.raise_for_status()
    chunks = response.iter_content(chunk_size=None)
    next(chunks)
    first = time.perf_counter() - started
    for _ in chunks:
        pass
    return first, time.perf_counter() - started, response


def bare_load_first_token(path: Path) -> float:
    """Seconds for bare llama-cpp-python to load ``path`` and sample one token."""
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(path), n_gpu_layers=-1, n_ctx=2048, verbose=False)
    tokens = llm.tokenize(b"Once upon a time", add_bos=True)
    next(iter(llm.generate(tokens)))
    elapsed = time.perf_counter() - started
    llm.close()
    return elapsed


def _load_bare(path: Path):
    """``llama_model_load_from_file`` with its default parameters (the weights mmapped, no
    context), under the worker's log callback (and its cost). The caller frees it."""
    import llama_cpp

    from inference_worker import llama_log

    llama_log.install()
    model = llama_cpp.llama_model_load_from_file(
        str(path).encode(), llama_cpp.llama_model_default_params()
    )
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    return model


def bare_model_load(path: Path) -> float:
    """Seconds for llama.cpp alone to load ``path`` (``_load_bare``)."""
    import llama_cpp

    started = time.perf_counter()
    model = _load_bare(path)
    elapsed = time.perf_counter() - started
    llama_cpp.llama_model_free(model)
    return elapsed


def bare_prefill(path: Path, prompt: str, sequences: int, n_ctx_seq: int, repeats: int) -> list:
    """Seconds for llama.cpp alone to evaluate ``prompt`` for ``sequences`` sequences in one
    ``llama_decode`` (a KV stream of ``n_ctx_seq`` cells each, no flash attention, every CPU:
    as the worker and llama-server run), ``repeats`` times: the prefill of a group of requests
    that arrive together."""
    import llama_cpp

    from inference_worker.threads import usable_cpus

    model = _load_bare(path)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max = sequences * n_ctx_seq, sequences
    params.n_batch = params.n_ubatch = 512
    params.kv_unified = False
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.n_threads = params.n_threads_batch = usable_cpus()
    ctx = llama_cpp.llama_init_from_model(model, params)
    text = prompt.encode()
    ids = (llama_cpp.llama_token * 256)()
    count = llama_cpp.llama_tokenize(
        llama_cpp.llama_model_get_vocab(model), text, len(text), ids, 256, True, False
    )
    batch = llama_cpp.llama_batch_init(sequences * count, 0, 1)
    seconds = []
    try:
        for _ in range(repeats):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            batch.n_tokens = sequences * count
            for seq in range(sequences):
                for pos in range(count):
                    i = seq * count + pos
                    batch.token[i], batch.pos[i] = ids[pos], pos
                    batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
                    batch.logits[i] = pos == count - 1
            started = time.perf_counter()
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            seconds.append(time.perf_counter() - started)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return seconds


def bare_llama_cpp(path: Path, prompt: str, sequences: int, n_ctx_seq: int, repeats: int) -> dict:
    """``bare_model_load`` and ``bare_prefill``, ``repeats`` times each, in a fresh process
    under the worker's huge-page tunable (``inference_worker/huge_pages.py``): llama.cpp
    alone in the conditions the worker loads and decodes in. Seconds, as
    {"loads": [...], "prefills": [...]}."""
    from inference_worker.huge_pages import tuned_environment

    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import harness; "
        "print(json.dumps(harness.bare_measures(*sys.argv[2:])))"
    )
    args = [str(ROOT / "benchmarks"), str(path), prompt, str(sequences), str(n_ctx_seq)]
    done = subprocess.run(
        [sys.executable, "-c", code, *args, str(repeats)],
        env=tuned_environment(dict(os.environ)) or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the bare llama.cpp measurement failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_measures(path: str, prompt: str, sequences: str, n_ctx_seq: str, repeats: str) -> dict:
    """``bare_llama_cpp``'s child: its measurements, from its command-line strings."""
    loads = [bare_model_load(Path(path)) for _ in range(int(repeats))]
    prefills = bare_prefill(Path(path), prompt, int(sequences), int(n_ctx_seq), int(repeats))
    return {"loads": loads, "prefills": prefills}


def raw_sendfile_seconds(path: Path, sink_dir: Path) -> float:
    """Loopback TCP baseline: ``socket.sendfile`` into a socket, ``recv_into`` to a file."""
    size = path.stat().st_size
    server = socket.create_server(("127.0.0.1", 0))
    sink = sink_dir / "raw-sendfile.bin"

    def receive():
        conn, _ = server.accept()
        view = memoryview(bytearray(4 * 1024 * 1024))
        with conn, open(sink, "wb") as out:
            remaining = size
            while remaining:
                n = conn.recv_into(view)
                if not n:
                    break
                out.write(view[:n])
                remaining -= n

    thread = threading.Thread(target=receive)
    thread.start()
    started = time.perf_counter()
    with socket.create_connection(server.getsockname()) as client, open(path, "rb") as f:
        client.sendfile(f)
    thread.join()
    elapsed = time.perf_counter() - started
    server.close()
    sink.unlink()
    return elapsed


def standalone_models(tmp: Path, quick: bool, tiny_name: str = "tiny-bench.gguf") -> tuple:
    """A models directory under ``tmp`` for a benchmark run on its own: one tiny model
    with ``quick``, else Gemma 3 270M. Returns (directory, model name)."""
    from model_swap.tiny_models import write_tiny_model
    from model_swap_cli.cli import ensure_default_model

    models = tmp / "models"
    models.mkdir()
    if quick:
        write_tiny_model(models / tiny_name)
        return models, tiny_name
    return models, ensure_default_model(models).name


def llama_server_bin() -> Path | None:
    """llama.cpp's own llama-server, the peer of several benchmarks: $LLAMA_SERVER_BIN, else
    .peer/bin/llama-server (``scripts/build_llama_server.sh``); None if it is missing."""
    path = Path(os.environ.get("LLAMA_SERVER_BIN") or ROOT / ".peer" / "bin" / "llama-server")
    return path if path.is_file() and os.access(path, os.X_OK) else None


def link_names(models: Path, source: Path, names) -> list[str]:
    """``names`` in ``models`` for one file (hard links when possible: the services only
    read them)."""
    for name in names:
        target = models / name
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
    return list(names)


def emit(text: str, out: Path | None) -> int:
    """Print a benchmark's markdown and, with ``--out``, write it there; exit code 0."""
    print(text)
    if out:
        out.write_text(text)
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux ``/proc``)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def serving_pid(pid: int) -> int:
    """The process that serves requests for a service started as ``pid``: its one
    gunicorn worker process (model_swap/serving.py), or ``pid`` itself."""
    kids = children(pid)
    return kids[0] if len(kids) == 1 else pid


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
