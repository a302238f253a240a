"""What the store measures: Prometheus metrics (``GET /metrics``) and its recent activity.

``StoreMetrics`` owns one registry per app (tests run several stores in one
process), the counters and histograms the swap service and model control
feed at the moments things happen, and a collector that reads the state's
snapshot at scrape time for the tiers' use against their budgets. It also
keeps the recent requests and swaps, and per-model counts, that
``GET /activity``, ``model-swap ps`` and the dashboard show. The decision
code stays pure: only the service and control layers call in here.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from model_store_server.decision import LOADS, Action, Decision
from model_store_server.worker_client import WorkerError, WorkerUnavailable

if TYPE_CHECKING:
    from model_store_server.leases import Ticket
    from model_store_server.swap_service import SwapService
    from model_store_server.transport import PushResult

SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RATE_BUCKETS = (1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2e9, 5e9, 1e10, 2.5e10)
RECENT_REQUESTS = 50
RECENT_SWAPS = 20

# Why a model left a tier (the ``reason`` label).
REASONS = ("capacity", "ttl", "explicit", "version_change", "resync")
# The transports a push can be counted under, by TRANSPORT (a fallback is an HTTP push).
PUSH_TRANSPORTS = {"auto": ("link", "http"), "http": ("http",), "rdma": ("rdma", "http")}
# The actions of an answered request (a rejection is no 200).
SERVED_ACTIONS = ("already_loaded", "load_from_local_store", "load_from_store")


def removal_reason(decision: Decision, name: str) -> str:
    """Why carrying ``decision`` out evicts or unloads ``name``."""
    if name in decision.expired:
        return "ttl"
    if decision.action in (Action.EVICT, Action.UNLOAD):
        return "explicit"
    if name == decision.model:  # a stale copy replaced by the store's new version
        return "version_change"
    return "capacity"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestRecord:
    """One request as it goes: decided, first byte, finished (for the metrics and activity).

    ``decided`` notes the decision (the swap wait is observed then); ``finish``
    counts the request once, with the status the client got: the routes finish
    it when the response ends (``Served.close``) or fails, and a response that
    already started (``response_started``) counts as the 200 it sent.
    """

    def __init__(self, metrics: StoreMetrics, route: str, model: str):
        self._metrics = metrics
        self.route = route
        self.model = model
        self.started = time.perf_counter()
        self.ticket: Ticket | None = None
        self.worker_ms = 0.0
        self.done: dict[str, list[str]] = {"evicted": [], "unloaded": []}
        self.ttfb_ms: float | None = None
        self.response_started = False
        self._lock = threading.Lock()
        self._finished = False

    def decided(self, ticket: Ticket | None, worker_ms: float, done: dict) -> None:
        self.ticket, self.worker_ms, self.done = ticket, worker_ms, done
        self._metrics.decided(ticket)

    def first_byte(self) -> None:
        self.ttfb_ms = self._metrics.first_byte(self)

    def finish(self, status: int) -> None:
        """Count the request with ``status`` (200 once the response started); once."""
        with self._lock:
            finished, self._finished = self._finished, True
        if not finished:
            self._metrics.finish_request(self, 200 if self.response_started else status)


class StoreMetrics:
    """The store's metrics and recent activity. Thread-safe."""

    def __init__(self, service: SwapService):
        self.service = service
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "model_swap_requests",
            "Generation requests answered, by route, cache action and HTTP status",
            ["route", "action", "status"],
            registry=registry,
        )
        self.model_requests = Counter(
            "model_swap_model_requests",
            "Generation requests answered with 200, by model and cache action",
            ["model", "action"],
            registry=registry,
        )
        self.swap_wait = Histogram(
            "model_swap_swap_wait_seconds",
            "Time from a request's arrival to its decision (waits for the swap slot, "
            "for running generations and for the worker's report included)",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.swap_seconds = Histogram(
            "model_swap_swap_seconds",
            "Time to carry a decision out on the worker (evictions, unloads, push or load)",
            ["action"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.push_seconds = Histogram(
            "model_swap_push_seconds",
            "Time to push a model file to the worker and load it",
            ["transport"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.push_rate = Histogram(
            "model_swap_push_bytes_per_second",
            "Throughput of each push (bytes per second, the worker's load included)",
            ["transport"],
            buckets=RATE_BUCKETS,
            registry=registry,
        )
        self.pushed_bytes = Counter(
            "model_swap_pushed_bytes",
            "Bytes of model files pushed to the worker",
            ["transport"],
            registry=registry,
        )
        self.load_seconds = Histogram(
            "model_swap_load_seconds",
            "Time the worker took to load a model from its own disk cache",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.ttfb = Histogram(
            "model_swap_time_to_first_byte_seconds",
            "Time from a request's arrival to the first generated byte relayed",
            ["route"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.evictions = Counter(
            "model_swap_evictions",
            "Model files deleted from the worker, by reason",
            ["reason"],
            registry=registry,
        )
        self.unloads = Counter(
            "model_swap_unloads",
            "Models dropped from the worker's memory with their file kept, by reason",
            ["reason"],
            registry=registry,
        )
        self.worker_failures = Counter(
            "model_swap_worker_failures",
            "Worker calls that failed (unavailable: not reachable; error: it answered "
            "with an error or broke off)",
            ["kind"],
            registry=registry,
        )
        self.resyncs = Counter(
            "model_swap_resyncs",
            "Times the store re-read the worker's report, by result",
            ["result"],
            registry=registry,
        )
        self.waiting = Gauge(
            "model_swap_requests_waiting",
            "Requests waiting for their decision (behind a swap or running generations)",
            registry=registry,
        )
        # Every known label value exists from the first scrape (at 0), so increase() and
        # alerts see a series before its first event.
        for reason in REASONS:
            self.evictions.labels(reason)
            self.unloads.labels(reason)
        for kind in ("unavailable", "error"):
            self.worker_failures.labels(kind)
        for result in ("ok", "failed"):
            self.resyncs.labels(result)
        for transport in PUSH_TRANSPORTS[service.settings.transport]:
            self.pushed_bytes.labels(transport)
        for model in service.available():
            self.model_seen(model)
        registry.register(_StateCollector(service))

        self._lock = threading.Lock()
        self._recent_requests: deque[dict] = deque(maxlen=RECENT_REQUESTS)
        self._recent_swaps: deque[dict] = deque(maxlen=RECENT_SWAPS)
        self._served: dict[str, int] = {}
        self._last_swap: dict[str, str] = {}
        self._hits = 0
        self._decided = 0
        self._pushed_total = 0

    # -- requests ------------------------------------------------------------------------

    def start_request(self, route: str, model: str) -> RequestRecord:
        """A record for one generation request; finish it exactly once."""
        return RequestRecord(self, route, model)

    def model_seen(self, model: str) -> None:
        """Create ``model``'s per-model series (at 0), before its first answered request."""
        for action in SERVED_ACTIONS:
            self.model_requests.labels(model, action)

    def decided(self, ticket: Ticket | None) -> None:
        if ticket is None:
            return
        self.model_seen(ticket.decision.model)  # a model added to MODELS_DIR since the start
        self.swap_wait.observe(ticket.decision_ms / 1000)
        with self._lock:
            if ticket.decision.action is not Action.REJECTED:
                self._decided += 1
                self._hits += ticket.decision.action is Action.ALREADY_LOADED

    def finish_request(self, record: RequestRecord, status: int) -> None:
        ticket = record.ticket
        action = str(ticket.decision.action) if ticket else "none"
        self.requests.labels(record.route, action, str(status)).inc()
        entry = {
            "ts": _now_iso(),
            "route": record.route,
            "model": record.model,
            "action": action,
            "status": status,
            "wait_ms": round(ticket.decision_ms, 3) if ticket else None,
            "worker_ms": round(record.worker_ms, 1),
            "ttfb_ms": record.ttfb_ms,
            # What the worker carried out (a failed swap may have done less than planned).
            "evicted": list(record.done["evicted"]),
            "unloaded": list(record.done["unloaded"]),
        }
        with self._lock:
            if status == 200:
                self._served[record.model] = self._served.get(record.model, 0) + 1
                self.model_requests.labels(record.model, action).inc()
            self._recent_requests.append(entry)

    def first_byte(self, record: RequestRecord) -> float:
        """Observe the time to ``record``'s first byte; returns it in milliseconds."""
        seconds = time.perf_counter() - record.started
        self.ttfb.labels(record.route).observe(seconds)
        return round(seconds * 1000, 1)

    # -- swaps -----------------------------------------------------------------------------

    def removed(self, kind: str, name: str, reason: str) -> None:
        """``name`` was evicted (``kind="evicted"``) or unloaded on the worker for ``reason``."""
        (self.evictions if kind == "evicted" else self.unloads).labels(reason).inc()

    def pushed(self, push: PushResult) -> None:
        self.push_seconds.labels(push.transport).observe(push.seconds)
        self.pushed_bytes.labels(push.transport).inc(push.nbytes)
        if push.seconds > 0:
            self.push_rate.labels(push.transport).observe(push.nbytes / push.seconds)
        with self._lock:
            self._pushed_total += push.nbytes

    def loaded_local(self, seconds: float) -> None:
        self.load_seconds.observe(seconds)

    def swapped(
        self,
        decision: Decision,
        push: PushResult | None,
        seconds: float,
        done: dict[str, list[str]],
        ok: bool,
    ) -> None:
        """A decision was carried out on the worker (``ok``) or failed midway."""
        self.swap_seconds.labels(str(decision.action)).observe(seconds)
        entry = {
            "ts": _now_iso(),
            "model": decision.model,
            "action": str(decision.action),
            "ok": ok,
            "evicted": list(done["evicted"]),
            "unloaded": list(done["unloaded"]),
            "reasons": {
                name: removal_reason(decision, name)
                for name in (*done["evicted"], *done["unloaded"])
            },
            "seconds": round(seconds, 4),
            "bytes": push.nbytes if push else 0,
            "mb_per_s": round(push.mb_per_s, 1) if push else None,
            "transport": push.transport if push else None,
        }
        with self._lock:
            self._recent_swaps.append(entry)
            if ok and decision.action in LOADS:
                self._last_swap[decision.model] = entry["ts"]

    def worker_failed(self, err: BaseException) -> None:
        """Count ``err`` if the worker caused it (other errors are the store's or the client's)."""
        if isinstance(err, WorkerUnavailable):
            self.worker_failures.labels("unavailable").inc()
        elif isinstance(err, WorkerError):
            self.worker_failures.labels("error").inc()

    def resynced(self, ok: bool) -> None:
        self.resyncs.labels("ok" if ok else "failed").inc()

    # -- reading ---------------------------------------------------------------------------

    def activity(self) -> dict:
        """``GET /activity``: recent requests and swaps (newest last) and per-model counts."""
        with self._lock:
            return {
                "requests": [dict(entry) for entry in self._recent_requests],
                "swaps": [dict(entry) for entry in self._recent_swaps],
                "models": {
                    name: {
                        "requests_served": self._served.get(name, 0),
                        "last_swap": self._last_swap.get(name),
                    }
                    for name in sorted({*self._served, *self._last_swap})
                },
                "hits": self._hits,
                "decided": self._decided,
                "pushed_bytes": self._pushed_total,
            }


class _StateCollector:
    """Reads the state's snapshot at scrape time: the tiers against their budgets."""

    def __init__(self, service: SwapService):
        self.service = service

    def describe(self):
        return []

    def collect(self):
        service = self.service
        snapshot = service.state.snapshot()
        tiers = {
            "cache": (service.state.cache, snapshot.cached),
            "resident": (service.state.resident, snapshot.resident),
        }
        models = GaugeMetricFamily(
            "model_swap_models", "Models held in each tier (cache: worker disk)", labels=["tier"]
        )
        max_models = GaugeMetricFamily(
            "model_swap_models_max", "How many models each tier may hold", labels=["tier"]
        )
        used = GaugeMetricFamily(
            "model_swap_tier_bytes",
            "Bytes held in each tier (cache: file sizes; resident: estimated memory)",
            labels=["tier"],
        )
        budget = GaugeMetricFamily(
            "model_swap_tier_max_bytes",
            "Each tier's byte budget (absent when unbounded)",
            labels=["tier"],
        )
        per_model = GaugeMetricFamily(
            "model_swap_model_bytes", "Bytes of each model in a tier", labels=["tier", "model"]
        )
        for tier_name, (tier, members) in tiers.items():
            models.add_metric([tier_name], len(members))
            if tier.capacity is not None:
                max_models.add_metric([tier_name], tier.capacity)
            used.add_metric([tier_name], sum(m.size_bytes for m in members))
            if tier.max_bytes is not None:
                budget.add_metric([tier_name], tier.max_bytes)
            for member in members:
                per_model.add_metric([tier_name, member.name], member.size_bytes)
        yield from (models, max_models, used, budget, per_model)
        yield GaugeMetricFamily(
            "model_swap_requests_generating",
            "Generations running on the worker through this store",
            value=snapshot.generating,
        )
        yield GaugeMetricFamily(
            "model_swap_swap_in_progress", "1 while a swap runs", value=int(snapshot.swapping)
        )
        yield GaugeMetricFamily(
            "model_swap_worker_synced",
            "1 when the store's view matches the worker's last report",
            value=int(snapshot.synced),
        )
        pushing = GaugeMetricFamily(
            "model_swap_push_in_progress_bytes",
            "Bytes sent so far of each push running now",
            labels=["model"],
        )
        for progress in service.transfers.running():
            pushing.add_metric([progress.model], progress.done)
        yield pushing
