"""What the worker measures, for ``GET /metrics`` (Prometheus text format).

``WorkerMetrics`` owns one registry per app, the counters and histograms the
routes feed when an upload, load, unload or generation happens, and a
collector that reads the engine and the disk cache at scrape time (resident
and cached models and bytes, generations running and queued, the batch size
histogram, uploads in progress). The engine and the cache know nothing of it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from inference_worker.engine import Engine
from inference_worker.model_cache import ModelCache

SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RATE_BUCKETS = (1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2e9, 5e9, 1e10, 2.5e10)


class WorkerMetrics:
    """The worker's metrics. Thread-safe (prometheus_client's metrics are)."""

    def __init__(self, engine: Engine, cache: ModelCache):
        self.registry = registry = CollectorRegistry()
        self.uploads = Counter(
            "model_swap_worker_uploads",
            "Model uploads received, by result (ok, rejected, no_space)",
            ["result"],
            registry=registry,
        )
        self.receive_seconds = Histogram(
            "model_swap_worker_receive_seconds",
            "Time to receive and verify one uploaded model file",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.receive_rate = Histogram(
            "model_swap_worker_receive_bytes_per_second",
            "Throughput of each completed upload",
            buckets=RATE_BUCKETS,
            registry=registry,
        )
        self.loads = Counter(
            "model_swap_worker_loads",
            "Model loads into memory, by result (ok, failed)",
            ["result"],
            registry=registry,
        )
        self.load_seconds = Histogram(
            "model_swap_worker_load_seconds",
            "Time to load a model into memory",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.unloads = Counter(
            "model_swap_worker_unloads",
            "Models dropped from memory, by endpoint (unload keeps the file, evict deletes it)",
            ["endpoint"],
            registry=registry,
        )
        self.evictions = Counter(
            "model_swap_worker_evictions",
            "Model files deleted from the disk cache",
            registry=registry,
        )
        self.queue_wait = Histogram(
            "model_swap_worker_queue_wait_seconds",
            "Time a generation waited for its model's context (other generations on it)",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "model_swap_worker_time_to_first_token_seconds",
            "Time from a generation's start (context acquired) to its first token",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.generations = Counter(
            "model_swap_worker_generations",
            "Generations finished, by model",
            ["model"],
            registry=registry,
        )
        self.tokens = Counter(
            "model_swap_worker_tokens_generated",
            "Tokens generated, by model",
            ["model"],
            registry=registry,
        )
        # Every known label value exists from the first scrape (at 0), so increase() and
        # alerts see a series before its first event.
        for result in ("ok", "rejected", "no_space"):
            self.uploads.labels(result)
        for result in ("ok", "failed"):
            self.loads.labels(result)
        for endpoint in ("unload", "evict"):
            self.unloads.labels(endpoint)
        for cached in cache.files():
            self.model_arrived(cached.name)
        registry.register(_WorkerCollector(engine, cache))

    def model_arrived(self, name: str) -> None:
        """Create ``name``'s per-model series (at 0) when its file reaches the cache."""
        self.generations.labels(name)
        self.tokens.labels(name)


class _WorkerCollector:
    """Reads the engine and the disk cache at scrape time."""

    def __init__(self, engine: Engine, cache: ModelCache):
        self.engine = engine
        self.cache = cache

    def describe(self):
        return []

    def collect(self):
        resident = self.engine.resident()
        files = self.cache.files()
        yield GaugeMetricFamily(
            "model_swap_worker_resident_models", "Models loaded in memory", value=len(resident)
        )
        yield GaugeMetricFamily(
            "model_swap_worker_resident_bytes",
            "Estimated memory of the loaded models",
            value=sum(info.estimated_bytes for info in resident),
        )
        yield GaugeMetricFamily(
            "model_swap_worker_cached_models", "Model files in the disk cache", value=len(files)
        )
        yield GaugeMetricFamily(
            "model_swap_worker_cached_bytes",
            "Bytes of the model files in the disk cache",
            value=sum(f.size for f in files),
        )
        yield GaugeMetricFamily(
            "model_swap_worker_generating",
            "Generations running now",
            value=sum(info.generating for info in resident),
        )
        yield GaugeMetricFamily(
            "model_swap_worker_queued",
            "Callers waiting for a model's context (generations, unloads, reloads)",
            value=sum(info.queued for info in resident),
        )
        yield GaugeMetricFamily(
            "model_swap_worker_sequences_running",
            "Generations holding one of their model's sequences (continuous batching)",
            value=sum(info.generating for info in resident),
        )
        yield GaugeMetricFamily(
            "model_swap_worker_queue_depth",
            "Generations waiting for a free sequence of their model (PARALLEL are running)",
            value=sum(info.queued for info in resident),
        )
        buckets, _, tokens = self.engine.batch_stats.snapshot()
        yield HistogramMetricFamily(
            "model_swap_worker_batch_tokens",
            "Tokens per llama_decode call (decoding sequences plus prompt chunks)",
            buckets=buckets,
            sum_value=tokens,
        )
        yield CounterMetricFamily(
            "model_swap_worker_batch_mixed_steps",
            "llama_decode calls that carried prompt chunks beside decoding sequences' tokens",
            value=self.engine.batch_stats.mixed,
        )
        steps = CounterMetricFamily(
            "model_swap_worker_decode_steps",
            "llama_decode calls by the llama.cpp threads they ran on (the thread rule's choices)",
            labels=["threads"],
        )
        for threads, calls in sorted(self.engine.batch_stats.threads().items()):
            steps.add_metric([str(threads)], calls)
        yield steps
        yield CounterMetricFamily(
            "model_swap_worker_prompt_tokens",
            "Prompt tokens of the generations admitted to a sequence",
            value=self.engine.batch_stats.prompt_tokens,
        )
        yield CounterMetricFamily(
            "model_swap_worker_prompt_reused_tokens",
            "Prompt tokens found in a sequence's kept KV cells instead of evaluated",
            value=self.engine.batch_stats.reused_prompt_tokens,
        )
        yield GaugeMetricFamily(
            "model_swap_worker_kv_cached_tokens",
            "KV cells free sequences keep for prefix reuse",
            value=sum(info.cached_tokens for info in resident),
        )
        yield CounterMetricFamily(
            "model_swap_worker_prompt_restored_tokens",
            "Prompt tokens restored from a kept prompt state (host memory or disk)",
            value=self.engine.batch_stats.restored_prompt_tokens,
        )
        yield GaugeMetricFamily(
            "model_swap_worker_kept_prompts",
            "Prompt states the resident models' prompt caches keep (in memory or on disk)",
            value=sum(info.kept_prompts for info in resident),
        )
        yield GaugeMetricFamily(
            "model_swap_worker_kept_prompt_bytes",
            "Host memory of the kept prompt states (at most KV_CACHE_BYTES per model)",
            value=sum(info.kept_bytes for info in resident),
        )
        if self.engine.kv_disk is not None:
            prompts, nbytes = self.engine.kv_disk.usage()
            yield GaugeMetricFamily(
                "model_swap_worker_kv_disk_prompts",
                "Prompt states saved on disk (all models, KV_DISK_BYTES)",
                value=prompts,
            )
            yield GaugeMetricFamily(
                "model_swap_worker_kv_disk_bytes", "Bytes of prompt states on disk", value=nbytes
            )
        yield CounterMetricFamily(
            "model_swap_worker_received_bytes",
            "Upload body bytes read, complete or not",
            value=self.cache.bytes_received,
        )
        receiving = GaugeMetricFamily(
            "model_swap_worker_receive_in_progress_bytes",
            "Bytes received so far of each upload running now",
            labels=["model"],
        )
        for progress in self.cache.transfers.running():
            receiving.add_metric([progress.model], progress.done)
        yield receiving
