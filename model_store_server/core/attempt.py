"""How far one request got on its way, and the errors that way can end in.

``Attempt`` records the last attempt's worker, decision, what the worker did
and the generation; the helpers map the view's refusals onto the store's
errors and tell a worker that is gone from one that answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from model_store_server.core import events as ev
from model_store_server.core.fleet import WorkerNode
from model_store_server.core.grants import Hit, Ticket
from model_store_server.transport.http import PushResult
from model_store_server.worker_client import WorkerError, WorkerUnavailable
from model_swap.errors import ApiError, BadRequest, Conflict, Unavailable


class ModelTooLarge(BadRequest):
    """The model exceeds MAX_CACHE_BYTES or MAX_LOADED_BYTES on its own."""

    type = "model_too_large"


class PinRefused(Conflict):
    """Pinning would hold more than a tier can keep."""

    type = "pin_conflict"


def rejected(ticket: Ticket) -> Unavailable:
    """The 503 for a model the policy refused (``x-should-retry: false`` on the OpenAI API)."""
    return Unavailable(
        f"{ticket.decision.reason}; {ticket.decision.model} was not admitted", type="rejected"
    )


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value), never negative."""
    return max(0.0, deadline - time.monotonic())


def is_drift(err: BaseException) -> bool:
    """The worker lacks a model the store believed it held (it restarted or lost files)."""
    return isinstance(err, WorkerError) and err.worker_status in (404, 409)


def is_worker_lost(err: BaseException) -> bool:
    """The worker could not be reached or the connection broke (not an answer it gave)."""
    return isinstance(err, WorkerUnavailable) or (
        isinstance(err, WorkerError) and err.worker_status is None
    )


@dataclass
class Attempt:
    """How far a request got: its decision, what the worker did, its generation."""

    ticket: Ticket | None = None
    done: dict | None = None
    push: PushResult | None = None
    worker_ms: float = 0.0
    hit: Hit | None = None
    node: WorkerNode | None = None  # the worker it was placed on (the last attempt's)

    def __post_init__(self) -> None:
        self.done = self.done if self.done is not None else ev.nothing_done()

    def reset(self) -> None:
        self.ticket, self.push, self.worker_ms, self.done = None, None, 0.0, ev.nothing_done()

    def headers_for(self, err: ApiError) -> None:
        """A failed request tells what was decided and only what the worker did."""
        if self.node is not None:
            err.headers["X-Worker"] = self.node.url
        if self.ticket is not None:
            headers = self.ticket.decision.headers()
            headers["X-Evicted"] = ",".join(self.done["evicted"])
            headers["X-Unloaded"] = ",".join(self.done["unloaded"])
            err.headers.update(headers)
