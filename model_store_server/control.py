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

from model_store_server.core import events as ev
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
        self.state = service.state
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.state.on_idle = self._wake.set
        self._sweeper: threading.Thread | None = None

    def _published(
        self,
        operation: str,
        model: str,
        ticket,
        done: dict,
        ms: float,
        failure: BaseException | None = None,
    ) -> None:
        snapshot = self.state.snapshot()
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
            return self._result(attempt.ticket, attempt.done, attempt.worker_ms)
        except BaseException as err:
            failure = err
            raise
        finally:
            operation = "pin" if pin else "load"
            self._published(
                operation, model, attempt.ticket, attempt.done, attempt.worker_ms, failure
            )

    def unload(self, model: str) -> dict:
        """Drop ``model`` from memory, keeping its file (waits for its generations)."""
        return self._take_away(model, Action.UNLOAD)

    def evict(self, model: str) -> dict:
        """Delete ``model`` from the worker (unloading it first)."""
        return self._take_away(model, Action.EVICT)

    def unpin(self, model: str) -> dict:
        if not self.state.unpin(model):
            raise NotFound(f"{model} is not on the worker")
        self._published("unpin", model, None, ev.nothing_done(), 0.0)
        self._wake.set()
        return {"model": model, "pinned": False}

    def _take_away(self, model: str, action: Action) -> dict:
        service = self.service
        ticket, done, ms = None, ev.nothing_done(), 0.0
        deadline = service.deadline()
        failure = None
        try:
            service.ensure_synced(deadline)
            try:
                swap = self.state.take_away(model, action, deadline)
            except Busy as err:
                raise busy(err) from None
            if swap is None:  # nothing changed, not even a pin
                where = "on the worker" if action is Action.EVICT else "resident on the worker"
                raise NotFound(f"{model} is not {where}")
            ticket = swap.ticket
            ms = service.executor.carry_out(self.state, swap, None, done, hit=False).seconds * 1000
            return self._result(ticket, done, ms)
        except BaseException as err:
            failure = err
            raise
        finally:
            self._published(str(action), model, ticket, done, ms, failure)

    def _result(self, ticket: Ticket, done: dict[str, list[str]], ms: float) -> dict:
        snapshot = self.state.snapshot()
        model = ticket.decision.model
        return {
            "model": model,
            "action": str(ticket.decision.action),
            "evicted": done["evicted"],
            "unloaded": done["unloaded"],
            "worker_ms": round(ms, 3),
            "resident": [entry.name for entry in snapshot.resident],
            "pinned": any(e.name == model and e.pinned for e in snapshot.resident),
        }

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
        """Unload the resident models whose time is up now; returns their names."""
        swap = self.state.sweep()
        if swap is None:
            return []
        done = ev.nothing_done()
        try:
            result = self.service.executor.carry_out(self.state, swap, None, done, hit=False)
        except ApiError as err:
            logger.warning("idle unload of %s failed: %s", ",".join(swap.decision.unloaded), err)
            return done["unloaded"]
        ms = result.seconds * 1000
        self._published("idle-unload", swap.decision.model, swap.ticket, done, ms)
        return done["unloaded"]

    def _sweep_round(self, due: float | None) -> float:
        """One round of the idle sweep; returns how long to pause before a round that
        finds something due again (0 after a round that unloaded or had nothing due)."""
        try:
            if due is not None and due <= 0 and not self.state.synced:
                # The view is unconfirmed (a worker call failed): re-read the worker
                # first, or nothing could be unloaded until the next request.
                self.service.ensure_synced()
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
            try:
                self.service.ensure_synced()
            except ApiError as err:
                logger.info("worker not reachable at start (%s); will sync on first use", err)
            if preload:
                self.preload(preload)
            pause = 0.0
            while not self._stop.is_set():
                due = self.state.next_due()
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
