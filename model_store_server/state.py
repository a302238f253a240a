"""What the store believes its worker holds, and who may change it right now.

``WorkerState`` owns the cache policy (which models are in the worker's disk
cache), the loaded model, how many generations are running on it, and whether
a swap is in progress. It is the only place these change, always under one
condition variable, and it performs no I/O: callers carry decisions out on the
worker and report back.

Rules it enforces (thread-safe, all waits bounded by a deadline):
- one swap at a time; other requests wait for it, then decide on the new state
  (so two requests for one missing model cause one transfer);
- the loaded model is never replaced or evicted while a generation runs on it:
  a swap first stops new entrants, then waits for running ones to finish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from model_store_server.cache_policy import CachePolicy
from model_store_server.decision import (
    Action,
    Decision,
    decide,
    would_reject,
    would_replace_loaded,
)


class Busy(Exception):
    """The wait for a swap or for running generations exceeded the deadline."""


@dataclass(frozen=True)
class Ticket:
    """The outcome of ``WorkerState.begin``.

    If ``owns_swap`` the caller holds the swap slot: it carries ``decision``
    out on the worker inside ``with state.swap(ticket) as slot:``, which
    commits or ends the slot exactly once. Otherwise (and after the commit of
    an admitted request) the caller holds a generation lease on the loaded
    model and must call ``release`` once.
    """

    decision: Decision
    owns_swap: bool
    decision_ms: float
    version: str | None = None  # the digest of the model's file this ticket serves


@dataclass(frozen=True)
class CachedEntry:
    name: str
    idle_seconds: float


@dataclass(frozen=True)
class Snapshot:
    cached: tuple[CachedEntry, ...]
    loaded: str | None
    generating: int
    swapping: bool
    synced: bool


def reconcile(
    policy: CachePolicy, worker_cached: list[str], worker_loaded: str | None
) -> tuple[list[str], str | None]:
    """Make ``policy`` agree with what the worker reports; pure apart from the policy.

    Members the worker no longer holds are dropped. Files the worker holds but
    the policy does not know are admitted (the loaded one last, so it is the
    most recently used); whatever the policy evicts or refuses while admitting
    them is returned for deletion on the worker. Returns (to_delete, loaded).
    """
    on_worker = set(worker_cached)
    for member in policy.members():
        if member not in on_worker:
            policy.discard(member)
    unknown = [name for name in worker_cached if name not in policy and name != worker_loaded]
    if worker_loaded is not None and worker_loaded in on_worker and worker_loaded not in policy:
        unknown.append(worker_loaded)
    to_delete: list[str] = []
    for name in unknown:
        if policy.can_admit(name):
            to_delete += policy.admit(name)
        else:
            to_delete.append(name)
    loaded = worker_loaded if worker_loaded in policy else None
    return to_delete, loaded


class SwapSlot:
    """The one swap slot, held by one caller and given back exactly once.

    Granted by ``WorkerState.swap`` (to carry a ticket's decision out) or
    ``WorkerState.exclusive`` (to sync or reset). ``commit`` records the
    ticket's decision as done (an admitted request gets a generation lease);
    ``end`` gives the slot back without a lease, after a failure or a sync.
    Used as a context manager, a slot still open when its block is left is
    ended: after an exception, as unsynced (whatever failed, the next request
    re-reads the worker); normally, by committing the ticket, or for an
    exclusive slot by keeping the current sync flag. Calls after the first are
    ignored. Thread-safe.
    """

    def __init__(self, state: WorkerState, ticket: Ticket | None):
        self._state = state
        self.ticket = ticket
        self._lock = threading.Lock()
        self._open = True

    def _close(self) -> bool:
        with self._lock:
            was_open, self._open = self._open, False
            return was_open

    def commit(self) -> None:
        """The worker carried the ticket's decision out."""
        if self.ticket is None:
            raise ValueError("an exclusive slot has no decision to commit")
        if self._close():
            self._state._commit(self.ticket)

    def end(self, *, synced: bool) -> None:
        """Give the slot back without a lease.

        ``synced`` says whether the state now matches the worker's own report;
        if not, the next request re-reads the worker before deciding, and
        until then the ticket's model (whose load may have failed) is not
        counted as cached and no model as loaded: the store claims nothing it
        has not seen the worker confirm.
        """
        if self._close():
            unconfirmed = self.ticket.decision.model if self.ticket else None
            self._state._end(synced=synced, unconfirmed=unconfirmed)

    def __enter__(self) -> SwapSlot:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.end(synced=False)
        elif self.ticket is not None:
            self.commit()
        else:
            self.end(synced=self._state.synced)


class WorkerState:
    """The store's view of its worker; see the module docstring. Thread-safe."""

    def __init__(self, policy: CachePolicy):
        self.policy = policy
        self._cond = threading.Condition()
        self._loaded: str | None = None
        self._active = 0
        self._swapping = False
        self._synced = False
        # The digest of each cached model's copy on the worker (None: unknown, never trusted).
        self._versions: dict[str, str | None] = {}

    # -- waiting -----------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Busy(f"timed out waiting for {what}")
            self._cond.wait(remaining)

    # -- requests ----------------------------------------------------------------

    def _stale(self, model: str, version: str | None) -> bool:
        """Whether the worker's copy of ``model`` is another version than ``version``."""
        return version is not None and model in self.policy and self._versions.get(model) != version

    def begin(self, model: str, timeout: float, version: str | None = None) -> Ticket:
        """Decide how to serve ``model``, waiting (at most ``timeout`` s) for its turn.

        ``version`` is the digest of the store's file now: a worker copy of
        another version is stale, and is evicted and replaced by a push
        (``X-Evicted`` names the model itself). None skips the check.
        Raises Busy, having changed nothing, if the wait exceeds ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._wait(lambda: not self._swapping, deadline, "another model swap to finish")
            policy = self.policy
            if self._active and self._loaded in policy:
                # A model that is generating is in use, not idle: a TTL never expires it.
                policy.touch(self._loaded)
                replaces = would_replace_loaded(policy, model, self._loaded) or (
                    model == self._loaded and self._stale(model, version)
                )
                if replaces and not would_reject(policy, model):
                    # Stop new generations on the loaded model and let running ones
                    # finish before deciding; on timeout nothing has changed.
                    self._swapping = True
                    try:
                        self._wait(
                            lambda: self._active == 0,
                            deadline,
                            f"running generations on {self._loaded} to finish",
                        )
                    except Busy:
                        self._swapping = False
                        self._cond.notify_all()
                        raise
            started = time.perf_counter()
            stale = self._stale(model, version)
            if stale:
                policy.discard(model)  # decided anew: it is admitted like a missing model
            decision = decide(policy, model, self._loaded)
            if stale:
                decision = replace(decision, evicted=(model, *decision.evicted))
            decision_ms = (time.perf_counter() - started) * 1000
            if decision.changes_worker:
                self._swapping = True
                return Ticket(decision, owns_swap=True, decision_ms=decision_ms, version=version)
            self._swapping = False
            if decision.action is not Action.REJECTED:
                self._active += 1
            self._cond.notify_all()
            return Ticket(decision, owns_swap=False, decision_ms=decision_ms, version=version)

    def swap(self, ticket: Ticket) -> SwapSlot:
        """The slot ``begin`` granted with ``ticket``, for ``with state.swap(ticket) as slot:``."""
        if not ticket.owns_swap:
            raise ValueError("this ticket holds no swap slot")
        return SwapSlot(self, ticket)

    def _commit(self, ticket: Ticket) -> None:
        decision = ticket.decision
        with self._cond:
            for name in decision.evicted:
                self._versions.pop(name, None)
            if decision.action is Action.LOAD_FROM_STORE:
                self._versions[decision.model] = ticket.version
            if self._loaded in decision.evicted:
                self._loaded = None
            if decision.action in (Action.LOAD_FROM_STORE, Action.LOAD_FROM_LOCAL_STORE):
                self._loaded = decision.model
            if decision.action is not Action.REJECTED:
                self._active += 1
            self._swapping = False
            self._cond.notify_all()

    def _end(self, *, synced: bool, unconfirmed: str | None) -> None:
        with self._cond:
            self._synced = synced
            if not synced:
                self._loaded = None
                if unconfirmed is not None:
                    self.policy.discard(unconfirmed)
                    self._versions.pop(unconfirmed, None)
            self._swapping = False
            self._cond.notify_all()

    def release(self) -> None:
        """A generation on the loaded model ended (normally, by error or disconnect).

        The model's idle time starts now, not when the generation started.
        """
        with self._cond:
            self._active -= 1
            if self._loaded in self.policy:
                self.policy.touch(self._loaded)
            self._cond.notify_all()

    # -- synchronising with the worker's truth ------------------------------------

    @property
    def synced(self) -> bool:
        with self._cond:
            return self._synced

    def exclusive(self, timeout: float) -> SwapSlot:
        """Take the swap slot with nothing generating (for syncs and resets).

        Blocks; raises Busy, having changed nothing, after ``timeout`` seconds.
        Use the slot as a context manager and end it with ``end(synced=...)``;
        see ``SwapSlot``.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._wait(lambda: not self._swapping, deadline, "another model swap to finish")
            self._swapping = True
            try:
                self._wait(lambda: self._active == 0, deadline, "running generations to finish")
            except Busy:
                self._swapping = False
                self._cond.notify_all()
                raise
        return SwapSlot(self, None)

    def apply_worker_report(
        self, cached: list[str], loaded: str | None, digests: dict[str, str | None] | None = None
    ) -> list[str]:
        """Adopt the worker's report (caller holds the swap slot); returns names to delete.

        ``digests`` are the versions of the worker's files (missing: unknown).
        """
        with self._cond:
            self._versions = {name: (digests or {}).get(name) for name in cached}
            to_delete, self._loaded = reconcile(self.policy, cached, loaded)
            if self._loaded in to_delete:
                self._loaded = None
            return to_delete

    def mark_unsynced(self) -> None:
        """Something the worker said contradicts this view; re-read it before the next decision."""
        with self._cond:
            self._synced = False

    # -- reading -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._cond:
            cached = tuple(
                CachedEntry(name, round(self.policy.idle_seconds(name), 3))
                for name in self.policy.members()
            )
            return Snapshot(cached, self._loaded, self._active, self._swapping, self._synced)
