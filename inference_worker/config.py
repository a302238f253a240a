"""The worker's settings: every default in one place, overridable by environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from model_swap.generation import MAX_MESSAGES
from model_swap.settings import EnvReader, SettingsError, shared_options

PACKAGE_DIR = Path(__file__).resolve().parent

DEFAULTS = {
    "WORKER_HOST": "127.0.0.1",
    "WORKER_PORT": 8080,
    # The default lives inside the package directory (inference_worker/model_cache),
    # wherever the worker is started from.
    "MODEL_CACHE_DIR": str(PACKAGE_DIR / "model_cache"),
    "N_GPU_LAYERS": -1,
    "N_CTX": 2048,
    # Most tokens of one embedding input, and of one llama.cpp batch of inputs; sizes each
    # model's embedding context (its compute buffer holds the vocabulary's logits for this
    # many tokens: ~0.5 GiB for Gemma 3 at 512). Capped at N_CTX.
    "EMBEDDING_TOKENS": 512,
    # Sequences per resident model that share each decode step (continuous batching), each
    # with N_CTX tokens of KV cache; more concurrent requests wait first come, first served.
    # 1 serves one generation at a time per model.
    "PARALLEL": 4,
    # Prefix reuse: a finished sequence keeps its KV cells, and a new request whose prompt
    # shares their prefix (a chat's next turn, a repeated prompt, a shared system prompt)
    # evaluates only the rest. Costs one more sequence of KV cache per model (the spare
    # stream two sequences swap through, inference_worker/batch.py) when PARALLEL > 1.
    "PREFIX_CACHE": True,
    # Host memory per resident model for the prompt cache (inference_worker/kv_cache.py): the
    # KV states of prompts whose slot was taken by an unrelated one, restored when a later
    # prompt extends them. Counted in the model's memory estimate, so MAX_LOADED_BYTES stays
    # honest. 256 MiB holds about 14,000 tokens of Gemma 3 270M's KV (11-18 KiB a token), some
    # 2,000 of an 8B model's (128 KiB): a few conversations beyond the PARALLEL slots, without
    # doubling a small model's footprint (llama-server's 8 GiB --cache-ram would). 0: off.
    "KV_CACHE_BYTES": 256 * 1024 * 1024,
    # Disk for the prompt states of models that left memory (inference_worker/kv_disk.py), in
    # MODEL_CACHE_DIR/.kv beside the model files, never counted in MAX_CACHE_SIZE. 1 GiB is
    # four times KV_CACHE_BYTES: what a few swapped-out models kept. 0: none saved.
    "KV_DISK_BYTES": 1024 * 1024 * 1024,
    # llama.cpp threads for every decode step (0: chosen per step from the CPUs other
    # processes left idle, inference_worker/threads.py), and the CPUs the worker process may
    # use (comma-separated ids or ranges, e.g. "0" or "0-3,8"; empty: every CPU).
    "N_THREADS": 0,
    "CPU_AFFINITY": (),
    # Largest /infer body accepted (bytes); uploads are bounded by the disk instead.
    "MAX_REQUEST_BYTES": 1024 * 1024,
    # Messages in one chat request; refused (400) before any is read or rendered.
    "MAX_MESSAGES": MAX_MESSAGES,
    # Shared secret every request (but GET /healthz) must present as a bearer token.
    "WORKER_TOKEN": "",
    # Without WORKER_TOKEN: host names the worker answers to besides IP addresses,
    # localhost and WORKER_HOST (any other Host is refused: DNS rebinding).
    "ALLOWED_HOSTS": (),
    "LOG_LEVEL": "INFO",
    # text: the seed's lines; json: one JSON object per line (with the request id).
    "LOG_FORMAT": "text",
    # Serve GET /metrics without the bearer token even when tokens are configured.
    "METRICS_PUBLIC": False,
    # Start the RDMA listener (inference_worker/rdma_listener.py) on WORKER_HOST:WORKER_RDMA_PORT.
    "WORKER_RDMA": False,
    "WORKER_RDMA_PORT": 8081,
    # Serving (model_swap/serving.py): threads that run requests; seconds running requests
    # may take to finish after SIGTERM/SIGINT/SIGHUP; seconds one read or write on a client
    # connection may block (a client that stops reading); seconds a request head may take
    # to arrive; seconds an idle connection is kept between requests; open connections
    # (one more is answered 503); bytes/s a request body must keep up over 30 s (0: off).
    "SERVER_THREADS": 64,
    "SHUTDOWN_GRACE_SECONDS": 30.0,
    "STREAM_WRITE_TIMEOUT": 60.0,
    "HEADER_TIMEOUT": 10.0,
    "KEEPALIVE_TIMEOUT": 5.0,
    "MAX_CONNECTIONS": 4096,
    "MIN_UPLOAD_RATE": 1_000_000.0,
    # Bytes/s a response must be read at, judged over 30 s of waiting for the client (0:
    # off); requests waiting for a thread beyond which one more is answered 503.
    "MIN_DOWNLOAD_RATE": 1000.0,
    "MAX_QUEUED_REQUESTS": 256,
    # Pushes received over RDMA at once; a further offer is refused (the store falls back).
    "WORKER_RDMA_MAX_OFFERS": 2,
    # Which RDMA device, port (from 1) and GID index to use; ""/0/-1 = the first active port
    # and its best GID. Shared with the store (model_swap/rdma_verbs.py PortChoice).
    "RDMA_DEVICE": "",
    "RDMA_DEVICE_PORT": 0,
    "RDMA_GID_INDEX": -1,
}


# llama.cpp's limit on sequences per context (llama_max_parallel_sequences()).
MAX_PARALLEL = 256


def _parallel(env: EnvReader) -> int:
    value = env.integer("PARALLEL", DEFAULTS["PARALLEL"], minimum=1)
    if value > MAX_PARALLEL:
        raise SettingsError(f"PARALLEL: {value} is more than llama.cpp's {MAX_PARALLEL} sequences")
    return value


def _cpu_list(value: str) -> tuple[int, ...]:
    """CPU ids from "0,2-3" (empty: none given); each must be a CPU of this machine."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in value.split(","))):
        first, _, last = part.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise SettingsError(
                f"CPU_AFFINITY: {part!r} is not valid (valid: CPU ids or ranges, e.g. 0-1,3)"
            ) from None
        cpus.update(range(low, high + 1))
    available = os.cpu_count() or 1
    if any(cpu < 0 or cpu >= available for cpu in cpus):
        raise SettingsError(
            f"CPU_AFFINITY: {value!r} names a CPU this machine lacks (0-{available - 1})"
        )
    return tuple(sorted(cpus))


@dataclass(frozen=True)
class WorkerSettings:
    """Validated settings of one inference worker."""

    worker_host: str = DEFAULTS["WORKER_HOST"]
    worker_port: int = DEFAULTS["WORKER_PORT"]
    model_cache_dir: Path = Path(DEFAULTS["MODEL_CACHE_DIR"])
    n_gpu_layers: int = DEFAULTS["N_GPU_LAYERS"]
    n_ctx: int = DEFAULTS["N_CTX"]
    embedding_tokens: int = DEFAULTS["EMBEDDING_TOKENS"]
    parallel: int = DEFAULTS["PARALLEL"]
    prefix_cache: bool = DEFAULTS["PREFIX_CACHE"]
    kv_cache_bytes: int = DEFAULTS["KV_CACHE_BYTES"]
    kv_disk_bytes: int = DEFAULTS["KV_DISK_BYTES"]
    n_threads: int = DEFAULTS["N_THREADS"]
    cpu_affinity: tuple[int, ...] = DEFAULTS["CPU_AFFINITY"]
    max_request_bytes: int = DEFAULTS["MAX_REQUEST_BYTES"]
    max_messages: int = DEFAULTS["MAX_MESSAGES"]
    worker_token: str = field(default=DEFAULTS["WORKER_TOKEN"], repr=False)
    allowed_hosts: tuple[str, ...] = DEFAULTS["ALLOWED_HOSTS"]
    log_level: str = DEFAULTS["LOG_LEVEL"]
    log_format: str = DEFAULTS["LOG_FORMAT"]
    metrics_public: bool = DEFAULTS["METRICS_PUBLIC"]
    server_threads: int = DEFAULTS["SERVER_THREADS"]
    shutdown_grace_seconds: float = DEFAULTS["SHUTDOWN_GRACE_SECONDS"]
    stream_write_timeout: float = DEFAULTS["STREAM_WRITE_TIMEOUT"]
    header_timeout: float = DEFAULTS["HEADER_TIMEOUT"]
    keepalive_timeout: float = DEFAULTS["KEEPALIVE_TIMEOUT"]
    max_connections: int = DEFAULTS["MAX_CONNECTIONS"]
    min_upload_rate: float = DEFAULTS["MIN_UPLOAD_RATE"]
    min_download_rate: float = DEFAULTS["MIN_DOWNLOAD_RATE"]
    max_queued_requests: int = DEFAULTS["MAX_QUEUED_REQUESTS"]
    worker_rdma: bool = DEFAULTS["WORKER_RDMA"]
    worker_rdma_port: int = DEFAULTS["WORKER_RDMA_PORT"]
    worker_rdma_max_offers: int = DEFAULTS["WORKER_RDMA_MAX_OFFERS"]
    rdma_device: str = DEFAULTS["RDMA_DEVICE"]
    rdma_device_port: int = DEFAULTS["RDMA_DEVICE_PORT"]
    rdma_gid_index: int = DEFAULTS["RDMA_GID_INDEX"]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Build settings from ``environ`` (default ``os.environ``); raises SettingsError."""
        env = EnvReader(os.environ if environ is None else environ)
        return cls(
            worker_host=env.text("WORKER_HOST", DEFAULTS["WORKER_HOST"]),
            worker_port=env.port("WORKER_PORT", DEFAULTS["WORKER_PORT"]),
            model_cache_dir=env.path("MODEL_CACHE_DIR", DEFAULTS["MODEL_CACHE_DIR"]),
            n_gpu_layers=env.integer("N_GPU_LAYERS", DEFAULTS["N_GPU_LAYERS"], minimum=-1),
            n_ctx=env.integer("N_CTX", DEFAULTS["N_CTX"], minimum=16),
            allowed_hosts=env.host_list("ALLOWED_HOSTS"),
            embedding_tokens=env.integer(
                "EMBEDDING_TOKENS", DEFAULTS["EMBEDDING_TOKENS"], minimum=16
            ),
            parallel=_parallel(env),
            prefix_cache=env.flag("PREFIX_CACHE", DEFAULTS["PREFIX_CACHE"]),
            kv_cache_bytes=env.byte_size("KV_CACHE_BYTES", DEFAULTS["KV_CACHE_BYTES"]),
            kv_disk_bytes=env.byte_size("KV_DISK_BYTES", DEFAULTS["KV_DISK_BYTES"]),
            n_threads=env.integer("N_THREADS", DEFAULTS["N_THREADS"], minimum=0),
            cpu_affinity=_cpu_list(env.optional_text("CPU_AFFINITY", "")),
            worker_rdma=env.flag("WORKER_RDMA", DEFAULTS["WORKER_RDMA"]),
            **shared_options(env, DEFAULTS),
            worker_rdma_max_offers=env.integer(
                "WORKER_RDMA_MAX_OFFERS", DEFAULTS["WORKER_RDMA_MAX_OFFERS"], minimum=1
            ),
        )
