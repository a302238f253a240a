"""The store's settings: every default in one place, overridable by environment variables.

Each setting is read from the environment variable of exactly its name. A bad
value raises ``SettingsError`` naming the variable and what is valid.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from model_store_server.api.tiktoken_ids import TOKEN_ID_READINGS
from model_store_server.policies import POLICIES, Tier
from model_store_server.policies.greedy_dual import DEFAULT_FREQ_HALF_LIFE_S
from model_store_server.policies.prewarm import MODES as PREWARM_MODES
from model_swap.generation import MAX_MESSAGES
from model_swap.settings import EnvReader, SettingsError, shared_options

# How model bytes reach the worker (model_store_server/transport/factory.py).
TRANSPORTS = ("auto", "http", "rdma")

DEFAULTS = {
    "MODELS_DIR": "./models",
    "WORKER_URL": "http://localhost:8080",
    # Several workers: comma-separated URLs, or dns+http://NAME:PORT (every address NAME
    # resolves to is a worker, re-resolved every DISCOVERY_INTERVAL seconds). Empty: WORKER_URL.
    "WORKER_URLS": (),
    "DISCOVERY_INTERVAL": 10.0,
    # CIDRs a dns+ WORKER_URLS may resolve into (loopback always); addresses outside are
    # refused. Most workers discovery adds (the rest are refused and logged).
    "WORKER_NETWORKS": (),
    "MAX_DISCOVERED_WORKERS": 32,
    # Seconds between health probes (GET /health) of each worker when there are several.
    "HEALTH_INTERVAL": 2.0,
    # Requests for one model in flight on each worker holding it (running or waiting) from
    # which another worker loads a copy too (0: never; one copy per model).
    "REPLICATE_AFTER": 0,
    "MAX_CACHE_SIZE": 2,
    # Disk budget of the worker's cache in bytes (0: no byte bound), next to MAX_CACHE_SIZE.
    "MAX_CACHE_BYTES": 0,
    # Models resident (loaded) on the worker at once, and their memory budget in bytes
    # (0: no byte bound; a model costs its footprint estimate, model_swap/footprint.py).
    "MAX_LOADED_MODELS": 1,
    "MAX_LOADED_BYTES": 0,
    # Comma-separated models made resident at start, after the first sync with the worker.
    "PRELOAD_MODELS": (),
    # Seconds a streamed OpenAI request whose model is loading waits before its response
    # starts with SSE comments (a load done sooner is answered as without comments).
    "LOADING_COMMENTS_AFTER": 1.0,
    "TTL_SECONDS": 5.0,
    "CACHE_POLICY": "lru",
    # Seconds after which a use counts half in gdsf-aged's frequencies (and in adaptive's
    # gdsf-aged expert); chosen by the lab's sweep (benchmarks/POLICIES.md).
    "FREQ_HALF_LIFE": DEFAULT_FREQ_HALF_LIFE_S,
    # Predictive prewarm (docs/policies.md): off, or histogram (each model's idle-time
    # histogram brings it in PREWARM_MARGIN seconds before its next request is expected and
    # unloads it once its expected window is over); idle times are binned
    # PREWARM_BIN_SECONDS wide. STATE_DIR (empty: none) keeps the histograms over restarts.
    "PREWARM": "off",
    "PREWARM_MARGIN": 10.0,
    "PREWARM_BIN_SECONDS": 1.0,
    "STATE_DIR": "",
    "TRANSPORT": "auto",
    "ALLOW_FALLBACK": False,
    "WORKER_RDMA_HOST": "localhost",
    "WORKER_RDMA_PORT": 8081,
    # Which RDMA device, port (from 1) and GID index to use; ""/0/-1 = the first active port
    # and its best GID. Shared with the worker (model_swap/rdma_verbs.py PortChoice).
    "RDMA_DEVICE": "",
    "RDMA_DEVICE_PORT": 0,
    "RDMA_GID_INDEX": -1,
    "STORE_HOST": "127.0.0.1",
    "STORE_PORT": 8000,
    # Seconds to wait for the worker to accept a connection before answering 503.
    "WORKER_CONNECT_TIMEOUT": 5.0,
    # Seconds a worker call (push, load, next token) may stay silent before it fails.
    "WORKER_READ_TIMEOUT": 600.0,
    # Seconds a request waits for another model's generations or a swap to finish (then 503).
    "SWAP_WAIT_TIMEOUT": 120.0,
    # Seconds another model's oldest request may wait before new requests for the resident
    # model queue behind it (0: strict arrival order; see docs/concurrency.md).
    "SCHEDULER_MAX_WAIT": 2.0,
    # Keep-alive connections the store keeps open to the worker (0: a new one per call).
    "WORKER_POOL_SIZE": 8,
    # Largest /user_request body accepted (bytes) and longest prompt (characters).
    "MAX_REQUEST_BYTES": 1024 * 1024,
    # Messages in one chat request; refused (400) before any is read or rendered.
    "MAX_MESSAGES": MAX_MESSAGES,
    "MAX_PROMPT_CHARS": 32768,
    # How /v1/embeddings reads token arrays: "tiktoken" (cl100k_base ids, what LangChain's
    # OpenAIEmbeddings sends, decoded to text) or "model" (the model's own ids).
    "EMBEDDING_TOKEN_IDS": "tiktoken",
    # Shared secret sent to the worker (must match the worker's WORKER_TOKEN).
    "WORKER_TOKEN": "",
    # Comma-separated keys clients must present as bearer tokens (empty: no check).
    "API_KEYS": (),
    # Keys for the administrative routes (/models/*, /workers/*, /reset); with only
    # API_KEYS set, nobody may administer. Host names the store answers to when no keys
    # are set (besides its addresses, localhost and STORE_HOST): DNS rebinding.
    "ADMIN_KEYS": (),
    "DRAIN_KEYS": (),  # keys that may only POST /workers/<id>/drain (a preStop hook's)
    "ALLOWED_HOSTS": (),
    "LOG_LEVEL": "INFO",
    # text: the seed's lines; json: one JSON object per line (with the request id).
    "LOG_FORMAT": "text",
    # Serve GET /metrics without the bearer token even when tokens are configured.
    "METRICS_PUBLIC": False,
    # Serve the Ollama-compatible API (/api/tags, /api/chat, /api/embed...) beside /v1.
    "OLLAMA_API": True,
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
}


@dataclass(frozen=True)
class StoreSettings:
    """Validated settings of one model store server."""

    models_dir: Path = Path(DEFAULTS["MODELS_DIR"])
    worker_url: str = DEFAULTS["WORKER_URL"]
    worker_urls: tuple[str, ...] = DEFAULTS["WORKER_URLS"]
    discovery: str = ""  # dns+http://NAME:PORT when the workers are discovered
    discovery_interval: float = DEFAULTS["DISCOVERY_INTERVAL"]
    worker_networks: tuple[str, ...] = DEFAULTS["WORKER_NETWORKS"]
    max_discovered_workers: int = DEFAULTS["MAX_DISCOVERED_WORKERS"]
    health_interval: float = DEFAULTS["HEALTH_INTERVAL"]
    replicate_after: int = DEFAULTS["REPLICATE_AFTER"]
    max_cache_size: int = DEFAULTS["MAX_CACHE_SIZE"]
    max_cache_bytes: int = DEFAULTS["MAX_CACHE_BYTES"]
    max_loaded_models: int = DEFAULTS["MAX_LOADED_MODELS"]
    max_loaded_bytes: int = DEFAULTS["MAX_LOADED_BYTES"]
    preload_models: tuple[str, ...] = DEFAULTS["PRELOAD_MODELS"]
    loading_comments_after: float = DEFAULTS["LOADING_COMMENTS_AFTER"]
    ttl_seconds: float = DEFAULTS["TTL_SECONDS"]
    freq_half_life: float = DEFAULTS["FREQ_HALF_LIFE"]
    cache_policy: str = DEFAULTS["CACHE_POLICY"]
    prewarm: str = DEFAULTS["PREWARM"]
    prewarm_margin: float = DEFAULTS["PREWARM_MARGIN"]
    prewarm_bin_seconds: float = DEFAULTS["PREWARM_BIN_SECONDS"]
    state_dir: str = DEFAULTS["STATE_DIR"]
    transport: str = DEFAULTS["TRANSPORT"]
    allow_fallback: bool = DEFAULTS["ALLOW_FALLBACK"]
    worker_rdma_host: str = DEFAULTS["WORKER_RDMA_HOST"]
    worker_rdma_port: int = DEFAULTS["WORKER_RDMA_PORT"]
    rdma_device: str = DEFAULTS["RDMA_DEVICE"]
    rdma_device_port: int = DEFAULTS["RDMA_DEVICE_PORT"]
    rdma_gid_index: int = DEFAULTS["RDMA_GID_INDEX"]
    store_host: str = DEFAULTS["STORE_HOST"]
    store_port: int = DEFAULTS["STORE_PORT"]
    worker_connect_timeout: float = DEFAULTS["WORKER_CONNECT_TIMEOUT"]
    worker_read_timeout: float = DEFAULTS["WORKER_READ_TIMEOUT"]
    swap_wait_timeout: float = DEFAULTS["SWAP_WAIT_TIMEOUT"]
    scheduler_max_wait: float = DEFAULTS["SCHEDULER_MAX_WAIT"]
    worker_pool_size: int = DEFAULTS["WORKER_POOL_SIZE"]
    max_request_bytes: int = DEFAULTS["MAX_REQUEST_BYTES"]
    max_prompt_chars: int = DEFAULTS["MAX_PROMPT_CHARS"]
    embedding_token_ids: str = DEFAULTS["EMBEDDING_TOKEN_IDS"]
    max_messages: int = DEFAULTS["MAX_MESSAGES"]
    worker_token: str = field(default=DEFAULTS["WORKER_TOKEN"], repr=False)
    api_keys: tuple[str, ...] = field(default=DEFAULTS["API_KEYS"], repr=False)
    admin_keys: tuple[str, ...] = field(default=DEFAULTS["ADMIN_KEYS"], repr=False)
    drain_keys: tuple[str, ...] = field(default=DEFAULTS["DRAIN_KEYS"], repr=False)
    allowed_hosts: tuple[str, ...] = DEFAULTS["ALLOWED_HOSTS"]
    log_level: str = DEFAULTS["LOG_LEVEL"]
    log_format: str = DEFAULTS["LOG_FORMAT"]
    metrics_public: bool = DEFAULTS["METRICS_PUBLIC"]
    ollama_api: bool = DEFAULTS["OLLAMA_API"]
    server_threads: int = DEFAULTS["SERVER_THREADS"]
    shutdown_grace_seconds: float = DEFAULTS["SHUTDOWN_GRACE_SECONDS"]
    stream_write_timeout: float = DEFAULTS["STREAM_WRITE_TIMEOUT"]
    header_timeout: float = DEFAULTS["HEADER_TIMEOUT"]
    keepalive_timeout: float = DEFAULTS["KEEPALIVE_TIMEOUT"]
    max_connections: int = DEFAULTS["MAX_CONNECTIONS"]
    min_upload_rate: float = DEFAULTS["MIN_UPLOAD_RATE"]
    min_download_rate: float = DEFAULTS["MIN_DOWNLOAD_RATE"]
    max_queued_requests: int = DEFAULTS["MAX_QUEUED_REQUESTS"]

    def __post_init__(self) -> None:
        if not self.worker_urls and not self.discovery:
            object.__setattr__(self, "worker_urls", (self.worker_url,))
        elif self.worker_urls:
            object.__setattr__(self, "worker_url", self.worker_urls[0])
        if self.transport == "rdma" and (self.discovery or len(self.worker_urls) > 1):
            raise SettingsError(
                "TRANSPORT: rdma drives one worker (WORKER_RDMA_HOST); with several workers "
                "use auto or http"
            )
        if self.scheduler_max_wait < 0:
            raise SettingsError(
                f"SCHEDULER_MAX_WAIT: {self.scheduler_max_wait:g} is not valid "
                "(valid: a number >= 0)"
            )
        if self.loading_comments_after < 0:
            raise SettingsError(
                f"LOADING_COMMENTS_AFTER: {self.loading_comments_after:g} is not valid "
                "(valid: a number >= 0)"
            )
        if len(self.preload_models) > self.max_loaded_models:
            raise SettingsError(
                f"PRELOAD_MODELS: {len(self.preload_models)} models, but MAX_LOADED_MODELS="
                f"{self.max_loaded_models} (valid: at most MAX_LOADED_MODELS models)"
            )

    @property
    def cache_capacity(self) -> int:
        """The disk tier's count bound: at least MAX_LOADED_MODELS (a resident model's
        file stays cached, so the memory tier can never hold more than the disk tier)."""
        return max(self.max_cache_size, self.max_loaded_models)

    def tier_bounds(self, tier: Tier) -> dict[str, float]:
        """``capacity`` and ``max_bytes`` of a tier (the disk cache or resident memory), and
        ``freq_half_life``: ``create_policy``'s keyword arguments from these settings."""
        aging = {"freq_half_life": self.freq_half_life}
        if tier is Tier.RESIDENT:
            return {"capacity": self.max_loaded_models, "max_bytes": self.max_loaded_bytes, **aging}
        return {"capacity": self.cache_capacity, "max_bytes": self.max_cache_bytes, **aging}

    @property
    def residency_configured(self) -> bool:
        """Whether the memory tier differs from the seed's single loaded model."""
        return self.max_loaded_models != 1 or self.max_loaded_bytes > 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoreSettings:
        """Build settings from ``environ`` (default ``os.environ``); raises SettingsError."""
        env = EnvReader(os.environ if environ is None else environ)
        return cls(
            models_dir=env.path("MODELS_DIR", DEFAULTS["MODELS_DIR"]),
            worker_url=env.url("WORKER_URL", DEFAULTS["WORKER_URL"]),
            **worker_list(env),
            discovery_interval=env.number("DISCOVERY_INTERVAL", DEFAULTS["DISCOVERY_INTERVAL"]),
            worker_networks=networks(env),
            max_discovered_workers=env.integer(
                "MAX_DISCOVERED_WORKERS", DEFAULTS["MAX_DISCOVERED_WORKERS"], minimum=1
            ),
            health_interval=env.number("HEALTH_INTERVAL", DEFAULTS["HEALTH_INTERVAL"]),
            replicate_after=env.integer("REPLICATE_AFTER", DEFAULTS["REPLICATE_AFTER"], minimum=0),
            max_cache_size=env.integer("MAX_CACHE_SIZE", DEFAULTS["MAX_CACHE_SIZE"], minimum=1),
            max_cache_bytes=env.byte_size("MAX_CACHE_BYTES", DEFAULTS["MAX_CACHE_BYTES"]),
            max_loaded_models=env.integer(
                "MAX_LOADED_MODELS", DEFAULTS["MAX_LOADED_MODELS"], minimum=1
            ),
            max_loaded_bytes=env.byte_size("MAX_LOADED_BYTES", DEFAULTS["MAX_LOADED_BYTES"]),
            preload_models=env.model_list("PRELOAD_MODELS"),
            embedding_token_ids=env.choice(
                "EMBEDDING_TOKEN_IDS", DEFAULTS["EMBEDDING_TOKEN_IDS"], TOKEN_ID_READINGS
            ),
            loading_comments_after=env.number(
                "LOADING_COMMENTS_AFTER", DEFAULTS["LOADING_COMMENTS_AFTER"], positive=False
            ),
            ttl_seconds=env.number("TTL_SECONDS", DEFAULTS["TTL_SECONDS"]),
            freq_half_life=env.number("FREQ_HALF_LIFE", DEFAULTS["FREQ_HALF_LIFE"]),
            cache_policy=env.choice("CACHE_POLICY", DEFAULTS["CACHE_POLICY"], POLICIES),
            prewarm=env.choice("PREWARM", DEFAULTS["PREWARM"], PREWARM_MODES),
            prewarm_margin=env.number("PREWARM_MARGIN", DEFAULTS["PREWARM_MARGIN"]),
            prewarm_bin_seconds=env.number("PREWARM_BIN_SECONDS", DEFAULTS["PREWARM_BIN_SECONDS"]),
            state_dir=env.optional_text("STATE_DIR", DEFAULTS["STATE_DIR"]),
            transport=env.choice("TRANSPORT", DEFAULTS["TRANSPORT"], TRANSPORTS),
            allow_fallback=env.flag("ALLOW_FALLBACK", DEFAULTS["ALLOW_FALLBACK"]),
            worker_rdma_host=env.text("WORKER_RDMA_HOST", DEFAULTS["WORKER_RDMA_HOST"]),
            store_host=env.text("STORE_HOST", DEFAULTS["STORE_HOST"]),
            store_port=env.port("STORE_PORT", DEFAULTS["STORE_PORT"]),
            worker_connect_timeout=env.number(
                "WORKER_CONNECT_TIMEOUT", DEFAULTS["WORKER_CONNECT_TIMEOUT"]
            ),
            worker_read_timeout=env.number("WORKER_READ_TIMEOUT", DEFAULTS["WORKER_READ_TIMEOUT"]),
            swap_wait_timeout=env.number("SWAP_WAIT_TIMEOUT", DEFAULTS["SWAP_WAIT_TIMEOUT"]),
            scheduler_max_wait=env.number(
                "SCHEDULER_MAX_WAIT", DEFAULTS["SCHEDULER_MAX_WAIT"], positive=False
            ),
            worker_pool_size=env.integer(
                "WORKER_POOL_SIZE", DEFAULTS["WORKER_POOL_SIZE"], minimum=0
            ),
            max_prompt_chars=env.integer(
                "MAX_PROMPT_CHARS", DEFAULTS["MAX_PROMPT_CHARS"], minimum=1
            ),
            api_keys=env.secret_list("API_KEYS"),
            admin_keys=env.secret_list("ADMIN_KEYS"),
            drain_keys=env.secret_list("DRAIN_KEYS"),
            allowed_hosts=tuple(
                h.strip().lower()
                for h in env.optional_text("ALLOWED_HOSTS", "").split(",")
                if h.strip()
            ),
            ollama_api=env.flag("OLLAMA_API", DEFAULTS["OLLAMA_API"]),
            **shared_options(env, DEFAULTS),
        )


def networks(env: EnvReader) -> tuple[str, ...]:
    """WORKER_NETWORKS: comma-separated CIDRs (``10.0.0.0/8``), each checked."""
    value = env.optional_text("WORKER_NETWORKS", "")
    found = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            found.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise SettingsError(
                f"WORKER_NETWORKS: {part!r} is not a network (valid: CIDRs like 10.0.0.0/8)"
            ) from None
    return tuple(found)


def worker_list(env: EnvReader) -> dict:
    """``worker_urls`` or ``discovery`` from WORKER_URLS (both empty: WORKER_URL alone)."""
    value = env.optional_text("WORKER_URLS", "")
    if not value:
        return {}
    if env.is_set("WORKER_URL"):
        raise SettingsError(
            "WORKER_URLS: set together with WORKER_URL (valid: one of them; WORKER_URL is "
            "the one-worker form)"
        )
    if value.startswith("dns+"):
        url = EnvReader({"WORKER_URLS": value[len("dns+") :]}).url("WORKER_URLS", "")
        if urlsplit(url).port is None:
            raise SettingsError(f"WORKER_URLS: {value!r} needs a port (dns+http://NAME:PORT)")
        return {"discovery": value}
    urls = []
    for part in value.split(","):
        url = EnvReader({"WORKER_URLS": part.strip()}).url("WORKER_URLS", "").rstrip("/")
        if url in urls:
            raise SettingsError(f"WORKER_URLS: {url} is listed twice")
        urls.append(url)
    return {"worker_urls": tuple(urls)}
