"""What happened in the store, published once for whoever subscribes (metrics, log lines).

The orchestrator and the executor publish; ``StoreMetrics`` and the log lines
(``views.LogLines``) subscribe. Publishing calls each subscriber in turn on
the publishing thread; a subscriber that raises is logged and skipped, never
failing the request that published. ``RequestRecord`` is one request as it
goes: its steps are published as ``RequestDecided``, ``FirstByte`` and
``RequestFinished`` (once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from model_store_server.core.grants import Ticket
from model_store_server.decision import Decision

if TYPE_CHECKING:
    from model_store_server.transport.http import PushResult

logger = logging.getLogger(__name__)


def nothing_done() -> dict[str, list[str]]:
    """What a swap carried out on the worker so far (for headers and the log line)."""
    return {"evicted": [], "unloaded": []}


@dataclass(frozen=True)
class Removed:
    kind: str  # "evicted" or "unloaded"
    name: str
    reason: str


@dataclass(frozen=True)
class Pushed:
    push: PushResult


@dataclass(frozen=True)
class LoadedLocal:
    seconds: float


@dataclass(frozen=True)
class Swapped:
    """A decision was carried out on the worker (``ok``) or failed midway."""

    decision: Decision
    push: PushResult | None
    seconds: float
    done: dict
    ok: bool


@dataclass(frozen=True)
class WorkerFailed:
    error: BaseException


@dataclass(frozen=True)
class Resynced:
    ok: bool


@dataclass(frozen=True)
class RequestDecided:
    record: RequestRecord


@dataclass(frozen=True)
class FirstByte:
    record: RequestRecord
    seconds: float


@dataclass(frozen=True)
class RequestFinished:
    record: RequestRecord
    status: int


@dataclass(frozen=True)
class RequestLogged:
    """One generation request's outcome, for its log line (its last attempt's decision)."""

    model: str
    ticket: Ticket | None
    worker_ms: float
    done: dict
    route: str
    cached: tuple[str, ...]
    worker: str = ""  # the worker's id, only when the store has several


@dataclass(frozen=True)
class ControlDone:
    """One explicit operation (load, unload, evict, pin, unpin, idle unload)."""

    operation: str
    model: str
    ticket: Ticket | None
    done: dict
    ms: float
    resident: tuple[str, ...]
    cached: tuple[str, ...]
    status: int = 200  # the HTTP status the operation answered (a failure is no success)
    error: str = ""  # its error message, when it failed


class Events:
    """Subscribers and ``publish``. Thread-safe."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[object], None]] = []

    def subscribe(self, handler: Callable[[object], None]) -> None:
        self._subscribers.append(handler)

    def publish(self, event: object) -> None:
        for handler in list(self._subscribers):
            try:
                handler(event)
            except Exception:
                logger.exception("a subscriber failed on %s", type(event).__name__)


class RequestRecord:
    """One generation request: decided, first byte, finished with the client's status.

    ``finish`` publishes once; a response that already started
    (``response_started``) counts as the 200 it sent.
    """

    def __init__(self, events: Events, route: str, model: str):
        self._events = events
        self.route = route
        self.model = model
        self.started = time.perf_counter()
        self.ticket: Ticket | None = None
        self.worker_ms = 0.0
        self.done: dict[str, list[str]] = nothing_done()
        self.ttfb_ms: float | None = None
        self.response_started = False
        self._lock = threading.Lock()
        self._finished = False

    def decided(self, ticket: Ticket | None, worker_ms: float, done: dict) -> None:
        self.ticket, self.worker_ms, self.done = ticket, worker_ms, done
        self._events.publish(RequestDecided(self))

    def first_byte(self) -> None:
        seconds = time.perf_counter() - self.started
        self.ttfb_ms = round(seconds * 1000, 1)
        self._events.publish(FirstByte(self, seconds))

    def finish(self, status: int) -> None:
        """Count the request with ``status`` (200 once the response started); once."""
        with self._lock:
            finished, self._finished = self._finished, True
        if not finished:
            self._events.publish(RequestFinished(self, 200 if self.response_started else status))
