"""What a worker's view grants, each a context manager from the moment it is granted.

A ``Ticket`` records a decision (what was decided, how long it took). A
``Hit`` is one generation on a model, released exactly once. A ``Swap`` is
the slot held to carry a decision out: ``commit`` (which may start the
caller's generation, returned as a ``Hit``) or ``abort``; leaving its block
any other way aborts it, and leaving never grants anything. An
``Exclusive`` holds the worker with nothing generating (a sync or reset).

Grants call back only through the plain callables their view gave them; they
know nothing of the view's insides.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from model_store_server.decision import Decision


@dataclass(frozen=True)
class Ticket:
    """A decision for one request or operation (``owns_swap``: it needs the worker changed)."""

    decision: Decision
    owns_swap: bool
    decision_ms: float
    version: str | None = None  # the digest of the model's file this ticket serves
    keep_alive: float | None = None
    pin: bool = False


class _Once:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = True

    def _close(self) -> bool:
        with self._lock:
            was_open, self._open = self._open, False
            return was_open

    @property
    def open(self) -> bool:
        return self._open


class Hit(_Once):
    """One generation on ``ticket.decision.model``; ``release`` (idempotent, thread-safe)
    ends it. While held, the model is neither unloaded nor evicted."""

    def __init__(self, ticket: Ticket, on_release: Callable[[Hit], None]):
        super().__init__()
        self.ticket = ticket
        self.decision = ticket.decision
        self.model = ticket.decision.model
        self.keep_alive = ticket.keep_alive
        self._on_release = on_release

    owns_swap = False
    # Generations granted at once with this one (itself included): the group served when
    # its model's swap commits, sent to the worker together (``TOGETHER_HEADER``).
    together = 1

    def release(self) -> None:
        if self._close():
            self._on_release(self)

    def __enter__(self) -> Hit:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Swap(_Once):
    """The slot, held to carry ``ticket.decision`` out on the worker. Thread-safe.

    ``commit(hit=True)`` records it as done and returns the caller's ``Hit``;
    ``abort(synced=...)`` gives the slot back (unsynced: the models it touched
    count as held nowhere until the worker is re-read). Leaving the block with
    the swap still open aborts it unsynced, whatever the cause.
    """

    def __init__(
        self,
        ticket: Ticket,
        on_commit: Callable[[Swap, bool], Hit | None],
        on_abort: Callable[[Swap, bool], None],
    ):
        super().__init__()
        self.ticket = ticket
        self.decision = ticket.decision
        self._on_commit = on_commit
        self._on_abort = on_abort
        # Set when a request needs the slot held by a background swap (a prewarm): its push
        # stops at the next step (``Executor``).
        self.stopping = threading.Event()

    owns_swap = True

    def commit(self, *, hit: bool = True) -> Hit | None:
        if not self._close():
            raise RuntimeError("this swap was already given back")
        return self._on_commit(self, hit)

    def detach(self) -> bool:
        """Close without giving the slot back (the view hands it on, as ``Exclusive``)."""
        return self._close()

    def abort(self, *, synced: bool = False) -> None:
        if self._close():
            self._on_abort(self, synced)

    def __enter__(self) -> Swap:
        return self

    def __exit__(self, *exc) -> None:
        self.abort(synced=False)


class Exclusive(_Once):
    """The worker held with nothing generating; ``end(synced=...)`` gives it back.

    Leaving the block with it open ends it: unsynced after an exception, else
    keeping the view's sync flag.
    """

    def __init__(self, on_end: Callable[[bool | None], None]):
        super().__init__()
        self._on_end = on_end

    def end(self, *, synced: bool | None) -> None:
        """``synced``: whether the view now matches the worker (None: unchanged)."""
        if self._close():
            self._on_end(synced)

    def __enter__(self) -> Exclusive:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end(synced=False if exc_type is not None else None)
