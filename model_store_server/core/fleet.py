"""The store's workers: one ``WorkerNode`` each, placement among them, health, discovery.

A ``WorkerNode`` is everything the store keeps for one worker: its view (tiers, versions,
gate, queues), its HTTP client and its executor, plus whether it is healthy, down or
draining. ``Fleet`` owns the nodes, asks ``policies.placement`` which one serves a request,
and runs one thread that probes each worker's ``/health`` every HEALTH_INTERVAL and
re-resolves a ``dns+`` WORKER_URLS every DISCOVERY_INTERVAL (by its clock). Discovery admits only
addresses inside WORKER_NETWORKS (or loopback), at most MAX_DISCOVERED_WORKERS, and only
once the worker there has proved it holds WORKER_TOKEN (``WorkerClient.prove``). A node
that fails a probe or a call is marked down: the requests waiting at its view leave it
(``WorkerDown``) and are placed elsewhere; one that answers again is re-read
(``on_recovered``). A lone worker is never marked down (nowhere else to place), only
re-read; its ``reachable`` is what the store's ``GET /ready`` reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit

from model_store_server.config import StoreSettings
from model_store_server.core import events as ev
from model_store_server.core.admission import Resolver, admissible, resolve_ipv4
from model_store_server.core.executor import Executor
from model_store_server.core.worker_view import WorkerView
from model_store_server.policies.cost_model import CostModel
from model_store_server.policies.placement import place
from model_store_server.policies.tiers import build_tiers
from model_store_server.transport.factory import build_transport
from model_store_server.worker_client import WorkerClient
from model_swap.errors import ApiError, NotFound, Unavailable
from model_swap.progress import Transfers

logger = logging.getLogger(__name__)

HEALTHY, DOWN, DRAINING = "healthy", "down", "draining"


class WorkerNotFound(NotFound):
    """No worker has that id, URL or index."""

    type = "worker_not_found"


def worker_id(url: str) -> str:
    """A worker's id: ``host:port`` of its URL (what a pod can compute from its own IP)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class WorkerNode:
    """One worker: its view, client and executor, and its health. Thread-safe reads."""

    def __init__(self, url: str, order: int, view: WorkerView, client, executor: Executor):
        self.url = url
        self.id = worker_id(url)
        self.order = order
        self.view = view
        self.client = client
        self.executor = executor
        self.healthy = True
        self.draining = False
        self.gone = False  # no longer in the discovered addresses
        self.reachable = True  # its last probe or call reached it (the store's GET /ready)
        self.rereading = threading.Lock()  # held while a re-read runs off a request
        self.last_error: str | None = None
        self.changed_at = time.time()  # when it was last marked down or up (wall clock)
        # Requests placed here and not yet granted, per model, and those models' (size,
        # footprint): what this worker's tiers will hold (under the fleet's lock).
        self.pending: Counter[str] = Counter()
        self.pending_sizes: dict[str, tuple[int, int]] = {}

    @property
    def state(self) -> str:
        if not self.healthy:
            return DOWN
        return DRAINING if self.draining or self.gone else HEALTHY

    @property
    def placeable(self) -> bool:
        return self.healthy and not self.draining and not self.gone


class Fleet:
    """The store's workers (see the module docstring). Thread-safe."""

    def __init__(
        self,
        settings: StoreSettings,
        events: ev.Events,
        cost_model: CostModel,
        *,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolver = resolve_ipv4,
    ):
        self.settings = settings
        self.events = events
        self.cost_model = cost_model
        self.transfers = Transfers()  # pushes running now, to any worker
        self._clock = clock
        self._resolver = resolver
        self._lock = threading.Lock()
        self._nodes: list[WorkerNode] = []
        self._stand_in: WorkerNode | None = None
        self._added = 0
        self._on_added: list[Callable[[WorkerNode], None]] = []
        self.on_recovered: Callable[[WorkerNode], None] = lambda node: None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for url in settings.worker_urls:
            self._add(url)
        if settings.discovery:
            self.discover()

    # -- membership ------------------------------------------------------------------------

    @property
    def several(self) -> bool:
        """Whether the store drives (or may discover) more than one worker."""
        return bool(self.settings.discovery) or len(self.settings.worker_urls) > 1

    @property
    def nodes(self) -> list[WorkerNode]:
        with self._lock:
            return list(self._nodes)

    def first(self) -> WorkerNode:
        """The first worker (the seed's top-level ``/status`` fields describe it); before
        any is discovered, a stand-in that holds nothing and is never placed on."""
        with self._lock:
            if self._nodes:
                return self._nodes[0]
            if self._stand_in is None:
                self._stand_in = self._build(self.settings.discovery.removeprefix("dns+"), -1)
                self._stand_in.healthy = False
                self._stand_in.last_error = "no worker discovered yet"
            return self._stand_in

    def on_added(self, callback: Callable[[WorkerNode], None]) -> None:
        """Call ``callback(node)`` for every node, now and whenever one is added."""
        with self._lock:
            self._on_added.append(callback)
            nodes = list(self._nodes)
        for node in nodes:
            callback(node)

    def _add(self, url: str, node: WorkerNode | None = None) -> WorkerNode:
        with self._lock:
            node = node or self._build(url, self._added)
            node.order = self._added
            self._added += 1
            self._nodes.append(node)
            callbacks = list(self._on_added)
        for callback in callbacks:
            callback(node)
        return node

    def _build(self, url: str, order: int) -> WorkerNode:
        settings = self.settings
        cache, resident = build_tiers(settings, self._clock, self.cost_model)
        view = WorkerView(cache, resident, max_wait=settings.scheduler_max_wait)
        client = WorkerClient(
            url,
            connect_timeout=settings.worker_connect_timeout,
            read_timeout=settings.worker_read_timeout,
            token=settings.worker_token,
            pool_size=settings.worker_pool_size,
            # dns+https: dialled by address, verified against the name it was found under.
            tls_name=urlsplit(settings.discovery.removeprefix("dns+")).hostname
            if settings.discovery
            else None,
        )
        executor = Executor(client, build_transport(settings, client), self.events, self.cost_model)
        executor.transfers = self.transfers
        return WorkerNode(url, order, view, client, executor)

    def find(self, key: str) -> WorkerNode:
        """The node named by its id (``host:port``), its URL or its index in ``/status``."""
        nodes = self.nodes
        for node in nodes:
            if key in (node.id, node.url):
                return node
        if key.isdigit() and int(key) < len(nodes):
            return nodes[int(key)]
        known = ", ".join(node.id for node in nodes) or "none"
        raise WorkerNotFound(f"no worker {key!r} (workers: {known})")

    def discover(self) -> None:
        """Re-resolve a ``dns+`` WORKER_URLS: new addresses become workers; a vanished one
        takes no new requests and is dropped once nothing runs on it."""
        target = urlsplit(self.settings.discovery[len("dns+") :])
        try:
            addresses = list(self._resolver(target.hostname, target.port))
        except OSError as err:
            logger.warning("could not resolve %s: %s", target.hostname, err)
            return
        addresses, refused = admissible(addresses, self.settings.worker_networks)
        if refused:
            logger.warning("%s: refused outside WORKER_NETWORKS: %s", target.hostname, refused[:8])
        urls = {f"{target.scheme}://{address}:{target.port}" for address in addresses}
        known = {node.url: node for node in self.nodes}
        fresh = sorted(urls - known.keys())
        room = max(0, self.settings.max_discovered_workers - len(known))
        if len(fresh) > room:
            logger.warning(
                "%s resolved to %d new workers; MAX_DISCOVERED_WORKERS=%d leaves room for %d",
                target.hostname,
                len(fresh),
                self.settings.max_discovered_workers,
                room,
            )
            fresh = fresh[:room]
        for url in fresh:
            node = self._build(url, -1)
            try:
                node.client.prove()
            except ApiError as err:
                node.client.close()
                logger.warning("discovered %s is not admitted: %s", url, err.message)
                continue
            logger.info("discovered worker %s", url)
            self._add(url, node)
        for url, node in known.items():
            # Under the lock that placement holds: a request is either placed before the node
            # is gone (and counted pending until its generation has started, so the node is
            # not quiet) or never placed on it.
            with self._lock:
                node.gone = url not in urls
                drop = node.gone and not node.pending and node.view.quiet()
                if drop:
                    self._nodes.remove(node)
            if drop:
                node.client.close()
                logger.info("worker %s is no longer in %s: dropped", url, target.hostname)

    # -- placement -------------------------------------------------------------------------

    @contextmanager
    def placed(
        self,
        model: str,
        size: int,
        footprint: Callable[[WorkerNode], int],
        avoid: frozenset[str] = frozenset(),
    ):
        """The node that serves a request for ``model``, counted as pending there until
        the block ends (so requests placed meanwhile see the model as coming in).
        ``footprint(node)``: the model's estimated memory on that worker (cheap: it is
        called under the fleet's lock)."""
        with self._lock:
            node = self._choose(model, size, footprint, avoid)
            node.pending[model] += 1
            node.pending_sizes[model] = (size, footprint(node))
        try:
            yield node
        finally:
            with self._lock:
                node.pending[model] -= 1
                if node.pending[model] <= 0:
                    del node.pending[model]
                    node.pending_sizes.pop(model, None)

    def _choose(
        self, model: str, size: int, footprint: Callable[[WorkerNode], int], avoid: frozenset[str]
    ) -> WorkerNode:
        nodes = [node for node in self._nodes if node.id not in avoid]
        if len(self._nodes) == 1 and not self.several:
            return self._nodes[0]  # the one-worker store: everything as before
        usable = [node for node in nodes if node.placeable]
        if not usable:
            # None is known healthy: try one that is not draining (it may be back).
            usable = [node for node in nodes if not (node.draining or node.gone)][:1]
        if not usable:
            raise Unavailable(
                "no worker is available (all down, draining or none discovered)",
                retry_after=1,
                type="worker_unavailable",
            )
        by_id = {node.id: node for node in usable}
        candidates = [
            node.view.candidate(
                node.id,
                node.order,
                model,
                size=size,
                footprint=footprint(node),
                pending=node.pending[model],
                placed=sum(node.pending.values()),
                coming=[(m, *node.pending_sizes[m]) for m in node.pending if m != model],
            )
            for node in usable
        ]
        chosen = place(candidates, replicate_after=self.settings.replicate_after)
        return by_id[chosen.worker]

    # -- health ----------------------------------------------------------------------------

    def mark_down(self, node: WorkerNode, error: BaseException | str) -> None:
        """``node`` failed a call or a probe: no placements, its waiting requests leave."""
        message = error.message if isinstance(error, ApiError) else str(error)
        node.last_error = message
        node.reachable = False
        if not self.several:
            return  # one worker: nothing else to place on; its view re-reads it as before
        if node.healthy:
            node.healthy, node.changed_at = False, time.time()
            logger.warning("worker %s is down: %s", node.id, message)
        node.view.mark_unsynced()
        node.view.set_down(True)

    def mark_up(self, node: WorkerNode) -> None:
        if not self.several:  # a lone worker with a stale view: re-read it now, not at a request
            return None if node.view.synced else self.on_recovered(node)
        if node.healthy:
            return
        node.view.mark_unsynced()  # re-read from its own /status before any decision
        node.view.set_down(False)
        node.healthy, node.changed_at = True, time.time()
        logger.info("worker %s answers again", node.id)
        self.on_recovered(node)

    def probe(self, node: WorkerNode) -> None:
        timeout = max(1.0, self.settings.health_interval)
        try:
            node.client.health(timeout)
        except ApiError as err:
            self.mark_down(node, err)
            return
        node.reachable = True
        self.mark_up(node)

    def start(self) -> None:
        """Probe (a lone worker too) and discover in the background."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="store-fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.settings.health_interval
        next_discovery = self._clock() + self.settings.discovery_interval
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-probe") as pool:
            while not self._stop.wait(interval):
                try:
                    if self.settings.discovery and self._clock() >= next_discovery:
                        next_discovery = self._clock() + self.settings.discovery_interval
                        self.discover()
                    list(pool.map(self.probe, self.nodes))
                except Exception:
                    logger.exception("the fleet's health round failed")

    def stop(self) -> None:
        self._stop.set()
