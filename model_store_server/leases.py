"""What ``WorkerState`` grants and takes back, each returned as one object.

A ``Ticket`` is the outcome of a decision; a ``Lease`` is one generation on a
model, released exactly once; a ``SwapSlot`` is the one swap slot, committed
or ended exactly once (a context manager, so no code path can leave it held).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from model_store_server.decision import Decision

if TYPE_CHECKING:
    from model_store_server.state import WorkerState


class Lease:
    """A generation on one model, granted by the state and released exactly once.

    While held, the model is neither unloaded nor evicted, and its idle time
    does not run. ``release`` is idempotent and thread-safe.
    """

    def __init__(self, state: WorkerState, model: str, keep_alive: float | None):
        self._state = state
        self.model = model
        self.keep_alive = keep_alive
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._state._release(self)


@dataclass(frozen=True)
class Ticket:
    """The outcome of ``WorkerState.begin``.

    If ``owns_swap`` the caller holds the swap slot: it carries ``decision``
    out on the worker inside ``with state.swap(ticket) as slot:``, whose
    commit grants the lease (``slot.lease``). Otherwise an admitted request
    already holds ``lease``.
    """

    decision: Decision
    owns_swap: bool
    decision_ms: float
    version: str | None = None  # the digest of the model's file this ticket serves
    lease: Lease | None = None
    keep_alive: float | None = None
    pin: bool = False


class SwapSlot:
    """The one swap slot, held by one caller and given back exactly once.

    Granted by ``WorkerState.swap`` (to carry a ticket's decision out) or
    ``WorkerState.exclusive`` (to sync or reset). ``commit`` records the
    ticket's decision as done (a request then holds ``lease``); ``end``
    gives the slot back without a lease, after a failure or a sync. Used as
    a context manager, a slot still open when its block is left is ended:
    after an exception, as unsynced (whatever failed, the next request
    re-reads the worker); normally, by committing the ticket, or for an
    exclusive slot by keeping the current sync flag. Calls after the first
    are ignored. Thread-safe.
    """

    def __init__(self, state: WorkerState, ticket: Ticket | None):
        self._state = state
        self.ticket = ticket
        self.lease: Lease | None = None
        self._lock = threading.Lock()
        self._open = True

    def _close(self) -> bool:
        with self._lock:
            was_open, self._open = self._open, False
            return was_open

    def commit(self, *, lease: bool = True) -> Lease | None:
        """The worker carried the ticket's decision out; with ``lease``, a request
        starts generating on the model (its lease is returned and kept as ``lease``)."""
        if self.ticket is None:
            raise ValueError("an exclusive slot has no decision to commit")
        if self._close():
            self.lease = self._state._commit(self.ticket, lease=lease)
        return self.lease

    def end(self, *, synced: bool) -> None:
        """Give the slot back without a lease.

        ``synced`` says whether the state now matches the worker's own report;
        if not, the next request re-reads the worker before deciding, and
        until then the models the ticket changed are counted neither as
        cached nor as resident: the store claims nothing it has not seen the
        worker confirm.
        """
        if self._close():
            self._state._end(synced=synced, ticket=self.ticket)

    def __enter__(self) -> SwapSlot:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.end(synced=False)
        elif self.ticket is not None:
            self.commit()
        else:
            self.end(synced=self._state.synced)
