"""Explicit control of what the worker holds: load, unload, evict, pin, preload, idle sweep.

``ModelControl`` carries these out through the same ``WorkerState`` and
``SwapService`` paths as requests (the same policies, leases and swap slot),
and logs one ``[/models]`` line per operation. The idle sweep is a
background thread that unloads resident models whose time is up (the
policy's TTL or a request's ``keep_alive``) without waiting for a request.
"""

from __future__ import annotations

import logging
import threading

from model_store_server import views
from model_store_server.decision import Action
from model_store_server.leases import Ticket
from model_store_server.state import Busy
from model_store_server.swap_service import (
    SwapService,
    busy,
    nothing_done,
    rejected,
    remaining,
)
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

    # -- operations -----------------------------------------------------------------

    def load(self, model: str, *, keep_alive: float | None = None, pin: bool = False) -> dict:
        """Make ``model`` resident (pushing it if needed) without generating."""
        service = self.service
        path = service.model_path(model)
        version = service.file_version(path)
        ticket, done, ms = None, nothing_done(), 0.0
        deadline = service.deadline()
        try:
            service.ensure_synced(deadline)
            ticket = service.take_ticket(
                model, path, version, deadline, keep_alive=keep_alive, pin=pin
            )
            if ticket.decision.action is Action.REJECTED:
                raise rejected(ticket)
            _, ms, lease = service.carry_out(ticket, path, done)
            lease.release()  # nothing generates: the model's idle time starts now
            self._wake.set()
            return self._result(ticket, done, ms)
        finally:
            views.log_control(self.service, "pin" if pin else "load", model, ticket, done, ms)

    def unload(self, model: str) -> dict:
        """Drop ``model`` from memory, keeping its file (waits for its generations)."""
        return self._take_away(model, Action.UNLOAD)

    def evict(self, model: str) -> dict:
        """Delete ``model`` from the worker (unloading it first)."""
        return self._take_away(model, Action.EVICT)

    def unpin(self, model: str) -> dict:
        if not self.state.unpin(model):
            raise NotFound(f"{model} is not on the worker")
        views.log_control(self.service, "unpin", model, None, nothing_done(), 0.0)
        self._wake.set()
        return {"model": model, "pinned": False}

    def _take_away(self, model: str, action: Action) -> dict:
        service = self.service
        ticket, done, ms = None, nothing_done(), 0.0
        deadline = service.deadline()
        try:
            service.ensure_synced(deadline)
            try:
                ticket = self.state.begin_change(model, action, remaining(deadline))
            except Busy as err:
                raise busy(err) from None
            if not ticket.owns_swap:
                where = "on the worker" if action is Action.EVICT else "resident on the worker"
                raise NotFound(f"{model} is not {where}")
            _, ms, _ = service.carry_out(ticket, None, done, lease=False)
            return self._result(ticket, done, ms)
        finally:
            views.log_control(self.service, str(action), model, ticket, done, ms)

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
        ticket = self.state.begin_sweep()
        if ticket is None:
            return []
        done = nothing_done()
        try:
            _, ms, _ = self.service.carry_out(ticket, None, done, lease=False)
        except ApiError as err:
            logger.warning("idle unload of %s failed: %s", ",".join(ticket.decision.unloaded), err)
            return done["unloaded"]
        views.log_control(self.service, "idle-unload", ticket.decision.model, ticket, done, ms)
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
