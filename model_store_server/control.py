"""Explicit control of what the worker holds: load, unload, evict, pin, preload, idle sweep.

``ModelControl`` goes through the same path as requests: a load is the
orchestrator's ``make_resident`` (with its retry), an unload or eviction a
``Swap`` from the view carried out by the executor. Each operation publishes
one ``ControlDone`` (the ``[/models]`` line). The idle sweep is a background
thread that unloads resident models whose time is up (the policy's TTL or a
request's ``keep_alive``) without waiting for a request.
"""

from __future__ import annotations

import logging
import threading
import time

from model_store_server.core import events as ev
from model_store_server.core.fleet import WorkerNode
from model_store_server.core.gate import Busy
from model_store_server.core.grants import Ticket
from model_store_server.core.orchestrator import Attempt, SwapService, busy
from model_store_server.decision import Action
from model_swap.errors import ApiError, NotFound

logger = logging.getLogger(__name__)


class ModelControl:
    """The ``/models/...`` operations, preload and the idle sweep. Thread-safe."""

    def __init__(self, service: SwapService):
        self.service = service
        self.fleet = service.fleet
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.fleet.on_added(self._watch)
        self._sweeper: threading.Thread | None = None

    def _watch(self, node: WorkerNode) -> None:
        node.view.on_idle = self._wake.set

    def _published(
        self,
        operation: str,
        model: str,
        ticket,
        done: dict,
        ms: float,
        failure: BaseException | None = None,
        node: WorkerNode | None = None,
    ) -> None:
        snapshot = (node or self.fleet.first()).view.snapshot()
        status, error = 200, ""
        if failure is not None:
            status = failure.status if isinstance(failure, ApiError) else 500
            error = failure.message if isinstance(failure, ApiError) else type(failure).__name__
        self.service.events.publish(
            ev.ControlDone(
                operation,
                model,
                ticket,
                done,
                ms,
                tuple(entry.name for entry in snapshot.resident),
                tuple(entry.name for entry in snapshot.cached),
                status,
                error,
            )
        )

    # -- operations -----------------------------------------------------------------

    def load(self, model: str, *, keep_alive: float | None = None, pin: bool = False) -> dict:
        """Make ``model`` resident (pushing it if needed) without generating."""
        self.service.files.path(model)  # a model the store lacks is a 404, not an operation
        attempt = Attempt()
        failure = None
        try:
            self.service.make_resident(
                model, attempt, self.service.deadline(), keep_alive=keep_alive, pin=pin
            )
            attempt.hit.release()  # nothing generates: the model's idle time starts now
            self._wake.set()
            return self._result(attempt.node, attempt.ticket, attempt.done, attempt.worker_ms)
        except BaseException as err:
            failure = err
            raise
        finally:
            operation = "pin" if pin else "load"
            self._published(
                operation,
                model,
                attempt.ticket,
                attempt.done,
                attempt.worker_ms,
                failure,
                attempt.node,
            )

    def unload(self, model: str, worker: str | None = None) -> dict:
        """Drop ``model`` from memory, keeping its file (waits for its generations); on
        ``worker`` (an id) or on every worker that has it loaded."""
        return self._on_holders(model, Action.UNLOAD, worker)

    def evict(self, model: str, worker: str | None = None) -> dict:
        """Delete ``model`` from the worker (unloading it first); on ``worker`` or on
        every worker that holds it."""
        return self._on_holders(model, Action.EVICT, worker)

    def unpin(self, model: str) -> dict:
        unpinned = [node.id for node in self.fleet.nodes if node.view.unpin(model)]
        if not unpinned:
            raise NotFound(f"{model} is not on the worker")
        self._published("unpin", model, None, ev.nothing_done(), 0.0)
        self._wake.set()
        return {"model": model, "pinned": False, "workers": unpinned}

    def _on_holders(self, model: str, action: Action, worker: str | None) -> dict:
        """``_take_away`` on the named worker, or on each worker holding ``model`` (the
        first worker when none does, which answers the 404)."""
        if worker is not None:
            nodes = [self.fleet.find(worker)]
        else:
            tier = "cache" if action is Action.EVICT else "resident"
            nodes = [n for n in self.fleet.nodes if model in getattr(n.view, tier)]
            nodes = nodes or [self.fleet.first()]
        results = [self._take_away(node, model, action) for node in nodes]
        result = results[-1]
        result["workers"] = [node.id for node in nodes]
        return result

    def _take_away(self, node: WorkerNode, model: str, action: Action) -> dict:
        service = self.service
        ticket, done, ms = None, ev.nothing_done(), 0.0
        deadline = service.deadline()
        failure = None
        try:
            service.ensure_synced(deadline, node=node)
            try:
                swap = node.view.take_away(model, action, deadline)
            except Busy as err:
                raise busy(err) from None
            if swap is None:  # nothing changed, not even a pin
                where = "on the worker" if action is Action.EVICT else "resident on the worker"
                raise NotFound(f"{model} is not {where}")
            ticket = swap.ticket
            ms = node.executor.carry_out(node.view, swap, None, done, hit=False).seconds * 1000
            return self._result(node, ticket, done, ms)
        except BaseException as err:
            failure = err
            raise
        finally:
            self._published(str(action), model, ticket, done, ms, failure, node)

    def _result(self, node: WorkerNode, ticket: Ticket, done: dict[str, list[str]], ms: float):
        snapshot = node.view.snapshot()
        model = ticket.decision.model
        return {
            "model": model,
            "worker": node.url,
            "action": str(ticket.decision.action),
            "evicted": done["evicted"],
            "unloaded": done["unloaded"],
            "worker_ms": round(ms, 3),
            "resident": [entry.name for entry in snapshot.resident],
            "pinned": any(e.name == model and e.pinned for e in snapshot.resident),
        }

    # -- draining workers ---------------------------------------------------------------

    def drain(self, worker: str, timeout: float) -> dict:
        """Place nothing new on ``worker`` and wait (up to ``timeout`` seconds) until
        nothing generates, waits or swaps there."""
        node = self.fleet.find(worker)
        if not node.draining:
            node.draining = True
            logger.info("draining worker %s: no new requests are placed on it", node.id)
        started = time.monotonic()
        while not (drained := node.view.quiet() and not node.pending):
            if time.monotonic() - started >= timeout:
                break
            time.sleep(0.05)
        snapshot = node.view.snapshot()
        return {
            "worker": node.id,
            "url": node.url,
            "state": node.state,
            "drained": drained,
            "waited_s": round(time.monotonic() - started, 3),
            "generating": snapshot.generating,
        }

    def undrain(self, worker: str) -> dict:
        """Place requests on ``worker`` again."""
        node = self.fleet.find(worker)
        if node.draining:
            node.draining = False
            logger.info("worker %s takes requests again", node.id)
        return {"worker": node.id, "url": node.url, "state": node.state}

    # -- preload ----------------------------------------------------------------------

    def preload(self, models: tuple[str, ...]) -> None:
        """Make ``models`` resident in order (after the first sync); failures are logged."""
        for model in models:
            try:
                self.load(model)
            except ApiError as err:
                logger.error("could not preload %s: %s", model, err.message)

    # -- idle sweep --------------------------------------------------------------------

    def sweep_once(self) -> list[str]:
        """Unload the resident models whose time is up now, on every worker; returns
        their names."""
        unloaded: list[str] = []
        for node in self.fleet.nodes:
            unloaded += self._sweep_node(node)
        return unloaded

    def _sweep_node(self, node: WorkerNode) -> list[str]:
        swap = node.view.sweep()
        if swap is None:
            return []
        done = ev.nothing_done()
        try:
            result = node.executor.carry_out(node.view, swap, None, done, hit=False)
        except ApiError as err:
            logger.warning("idle unload of %s failed: %s", ",".join(swap.decision.unloaded), err)
            return done["unloaded"]
        ms = result.seconds * 1000
        self._published("idle-unload", swap.decision.model, swap.ticket, done, ms, None, node)
        return done["unloaded"]

    def _next_due(self) -> float | None:
        dues = [due for node in self.fleet.nodes if (due := node.view.next_due()) is not None]
        return min(dues, default=None)

    def _sweep_round(self, due: float | None) -> float:
        """One round of the idle sweep; returns how long to pause before a round that
        finds something due again (0 after a round that unloaded or had nothing due)."""
        try:
            for node in self.fleet.nodes:
                if due is not None and due <= 0 and not node.view.synced and node.healthy:
                    # The view is unconfirmed (a worker call failed): re-read the worker
                    # first, or nothing could be unloaded until the next request.
                    self.service.ensure_synced(node=node)
            if self.sweep_once() or due is None or due > 0:
                return 0.0
        except ApiError as err:
            logger.warning("idle sweep could not run: %s", err.message)
            return 1.0
        except Exception:
            logger.exception("idle sweep failed")
            return 1.0
        return 0.25

    def start(self, preload: tuple[str, ...] = ()) -> threading.Thread:
        """Sync with the worker, preload, then sweep idle models until ``stop``."""

        def run() -> None:
            for node in self.fleet.nodes:
                try:
                    self.service.ensure_synced(node=node)
                except ApiError as err:
                    logger.info("worker not reachable at start (%s); will sync on first use", err)
                    self.fleet.mark_down(node, err)
            self.fleet.start()
            if preload:
                self.preload(preload)
            pause = 0.0
            while not self._stop.is_set():
                due = self._next_due()
                # The clock is the policy's: wake at least every second to follow it, and
                # after a round that could not sweep (a swap ran), not at once again.
                wait = 1.0 if due is None else min(max(due, pause), 1.0)
                self._wake.wait(wait)
                self._wake.clear()
                if self._stop.is_set():
                    break
                pause = self._sweep_round(due)

        self._sweeper = threading.Thread(target=run, name="store-sweeper", daemon=True)
        self._sweeper.start()
        return self._sweeper

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.fleet.stop()
