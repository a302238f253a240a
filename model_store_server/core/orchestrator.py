"""A request's way through the store: sync, admit, carry out, generate, with one retry.

``SwapService`` is what the routes call. ``make_resident`` is the one path
by which a request (``serve``) or an explicit load (``ModelControl.load``)
gets its model onto the worker: it re-reads the worker when the view may be
stale, waits its turn at the view (``Hit`` or ``Swap``), has the executor
carry a swap out, and retries once when the worker turns out not to hold
what the store believed (it restarted or lost files). It publishes what
happened (``events``) and formats nothing.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from model_store_server.config import StoreSettings
from model_store_server.core import events as ev
from model_store_server.core.executor import Executor
from model_store_server.core.gate import Busy
from model_store_server.core.grants import Hit, Swap, Ticket
from model_store_server.core.streams import Served, close_generation, relay, stream_error_marker
from model_store_server.core.view_control import PinConflict
from model_store_server.core.worker_view import Rejected, TooLarge, WorkerView
from model_store_server.cost_model import CostModel
from model_store_server.files import ModelFiles, ModelUnloadable
from model_store_server.policies.tiers import build_tiers
from model_store_server.transport import PushResult
from model_store_server.transport_factory import build_transport
from model_store_server.worker_client import InferenceStream, WorkerClient, WorkerError
from model_swap.errors import ApiError, BadRequest, Conflict, Unavailable

logger = logging.getLogger(__name__)

SEED_ROUTE = "/user_request"  # the seed's route: its log lines carry no ``path=`` field
# A request whose worker call finds the store's view stale is retried once after
# re-reading the worker (for example, the worker restarted and lost its model).
ATTEMPTS = 2

T = TypeVar("T")


class ModelTooLarge(BadRequest):
    """The model exceeds MAX_CACHE_BYTES or MAX_LOADED_BYTES on its own."""

    type = "model_too_large"


class PinRefused(Conflict):
    """Pinning would hold more than a tier can keep."""

    type = "pin_conflict"


def busy(err: Busy) -> Unavailable:
    """The 503 for a request whose waits ran past its deadline (retry in a second)."""
    return Unavailable(f"busy: {err}", retry_after=1, type="busy")


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


@dataclass
class Attempt:
    """How far a request got: its decision, what the worker did, its generation."""

    ticket: Ticket | None = None
    done: dict | None = None
    push: PushResult | None = None
    worker_ms: float = 0.0
    hit: Hit | None = None

    def __post_init__(self) -> None:
        self.done = self.done if self.done is not None else ev.nothing_done()

    def headers_for(self, err: ApiError) -> None:
        """A failed request tells what was decided and only what the worker did."""
        if self.ticket is not None:
            headers = self.ticket.decision.headers()
            headers["X-Evicted"] = ",".join(self.done["evicted"])
            headers["X-Unloaded"] = ",".join(self.done["unloaded"])
            err.headers.update(headers)


class SwapService:
    """Everything the store's routes call, for one worker. Thread-safe."""

    def __init__(self, settings: StoreSettings, *, clock=time.monotonic):
        self.settings = settings
        self.cost_model = CostModel()  # what pushes and loads cost here, learned (for gdsf)
        cache, resident = build_tiers(settings, clock, self.cost_model)
        self.state = WorkerView(cache, resident, max_wait=settings.scheduler_max_wait)
        self.client = WorkerClient(
            settings.worker_url,
            connect_timeout=settings.worker_connect_timeout,
            read_timeout=settings.worker_read_timeout,
            token=settings.worker_token,
            pool_size=settings.worker_pool_size,
        )
        self.events = ev.Events()
        transport = build_transport(settings, self.client)
        self.executor = Executor(self.client, transport, self.events, self.cost_model)
        self.files = ModelFiles(settings.models_dir)
        self.models_dir = self.files.models_dir
        self.model_path = self.files.path
        self.available = self.files.available

    @property
    def transport(self):
        return self.executor.transport

    @transport.setter
    def transport(self, transport) -> None:
        self.executor.transport = transport

    @property
    def transfers(self):
        return self.executor.transfers

    def start_request(self, route: str, model: str) -> ev.RequestRecord:
        """A record for one generation request; finish it exactly once."""
        return ev.RequestRecord(self.events, route, model)

    def deadline(self) -> float:
        """When a request that starts now must stop waiting: one SWAP_WAIT_TIMEOUT for
        all its waits (the sync, its turn, running generations, a retry)."""
        return time.monotonic() + self.settings.swap_wait_timeout

    # -- the one path onto the worker --------------------------------------------------------

    def make_resident(
        self,
        model: str,
        attempt: Attempt,
        deadline: float,
        *,
        keep_alive: float | None = None,
        pin: bool = False,
        on_decided: Callable[[Ticket], None] | None = None,
        start: Callable[[Hit], T] = lambda hit: None,
    ) -> T:
        """Get ``model`` resident and ``start(hit)`` on it, retrying once on drift.

        ``attempt`` is filled in as it goes (the last attempt's decision and
        what the worker did), also when this raises. On success
        ``attempt.hit`` holds the generation, which the caller releases.
        """
        path = self.files.path(model)
        version = self.files.version(path)
        self.files.check_loadable(path, version)  # before anything is decided or evicted
        for number in range(1, ATTEMPTS + 1):
            attempt.ticket, attempt.push, attempt.worker_ms = None, None, 0.0
            attempt.done = ev.nothing_done()
            try:
                self.ensure_synced(deadline)
                if self.state.is_suspect(model):
                    self.executor.confirm(self.state, model, deadline)
                grant = self._admit(model, path, version, deadline, keep_alive, pin, attempt)
                return self._carry_on(grant, path, attempt, on_decided, start)
            except ApiError as err:
                if isinstance(err, ModelUnloadable):
                    self.files.remember_unloadable(version, err.message)
                if is_drift(err) and number < ATTEMPTS:
                    logger.warning("the worker no longer holds %s as expected; retrying", model)
                    continue
                attempt.headers_for(err)
                raise
            except Busy as err:
                raise busy(err) from None
        raise AssertionError("unreachable")

    def _carry_on(self, grant: Hit | Swap, path: Path, attempt: Attempt, on_decided, start):
        """From the grant to ``start(hit)``; whatever fails on the way gives the grant back."""
        try:
            if on_decided is not None:
                on_decided(grant.ticket)
            if isinstance(grant, Swap):
                result = self.executor.carry_out(self.state, grant, path, attempt.done)
                attempt.push, attempt.worker_ms = result.push, result.seconds * 1000
                grant = result.hit
            attempt.hit = grant
            return start(grant)
        except BaseException:
            if isinstance(grant, Hit):
                grant.release()
            else:
                grant.abort(synced=False)  # does nothing once the executor gave it back
            attempt.hit = None
            raise

    def _admit(self, model, path, version, deadline, keep_alive, pin, attempt) -> Hit | Swap:
        size = self.files.size(path)
        # The memory estimate reads the file's header (~70 ms for a 250 MB model, once per
        # version): only a memory byte budget needs it before the load; otherwise the
        # worker's own figure is taken from the load's answer.
        n_ctx, n_seq = self.executor.worker_n_ctx, self.executor.worker_parallel
        footprint = (
            self.files.footprint(path, n_ctx, n_seq) if self.settings.max_loaded_bytes else 0
        )
        try:
            grant = self.state.admit(
                model,
                deadline,
                version,
                size=size,
                footprint=footprint,
                keep_alive=keep_alive,
                pin=pin,
            )
        except TooLarge as err:
            raise ModelTooLarge(str(err), param="model") from None
        except PinConflict as err:
            raise PinRefused(str(err)) from None
        except Rejected as err:
            attempt.ticket = err.ticket
            raise rejected(err.ticket) from None
        attempt.ticket = grant.ticket
        return grant

    # -- serving -----------------------------------------------------------------------------

    def serve(
        self,
        model: str,
        job: dict,
        *,
        route: str = SEED_ROUTE,
        stream_error: Callable[[ApiError], bytes] = stream_error_marker,
        keep_alive: float | None = None,
        on_decided: Callable[[Ticket], None] | None = None,
        record: ev.RequestRecord | None = None,
    ) -> Served:
        """Make ``model`` resident on the worker and start generating ``job``.

        ``job`` is the worker's /infer body without ``model``; the worker's
        bytes are relayed as they are, and a stream the worker breaks off ends
        with ``stream_error(err)``. ``route`` names the request's path for the
        log line; ``keep_alive`` (seconds; 0 unloads after the answer, -1 keeps
        the model until capacity needs its place) applies once the generation
        ends. Blocks for the request's turn. Raises NotFound, BadRequest,
        Unavailable or WorkerError; errors raised after the decision carry its
        headers. ``on_decided`` is called with each decision before it is
        carried out.
        """
        attempt = Attempt()
        record = record or self.start_request(route, model)
        try:
            deadline = self.deadline()
            self._check_context(job)
            stream = self.make_resident(
                model,
                attempt,
                deadline,
                keep_alive=keep_alive,
                on_decided=on_decided,
                start=functools.partial(self._start_inference, model, job),
            )
            record.decided(attempt.ticket, attempt.worker_ms, attempt.done)
            return Served(
                decision=attempt.ticket.decision,
                model=stream.model,
                push=attempt.push,
                stream=relay(
                    stream, attempt.hit, stream_error, record, self.events, self.state.suspect
                ),
                close=functools.partial(close_generation, stream, attempt.hit, record),
                record=record,
            )
        except BaseException as err:
            record.decided(attempt.ticket, attempt.worker_ms, attempt.done)
            record.finish(getattr(err, "status", 500))
            raise
        finally:
            # Exactly one line per request, whatever happened (the last attempt's decision).
            cached = self.state.cached_names()
            self.events.publish(
                ev.RequestLogged(
                    model, attempt.ticket, attempt.worker_ms, attempt.done, route, cached
                )
            )

    def _check_context(self, job: dict) -> None:
        n_ctx, max_tokens = self.executor.worker_n_ctx, job.get("max_tokens")
        if n_ctx is not None and max_tokens is not None and max_tokens > n_ctx:
            raise BadRequest(
                f"max_tokens {max_tokens} exceeds the worker's context size (N_CTX={n_ctx})",
                param="max_tokens",
            )

    def _start_inference(self, model: str, job: dict, hit: Hit) -> InferenceStream:
        """Open the worker's token stream under ``hit`` (released on failure)."""
        try:
            return self.client.infer(model, job)
        except BaseException as err:
            hit.release()
            status = getattr(err, "worker_status", None)
            if status in (400, 413):
                # The worker refused this request's input; its state is as we believe.
                raise BadRequest(err.worker_message) from None
            self.events.publish(ev.WorkerFailed(err))
            if is_drift(err):
                self.state.mark_unsynced()
            else:
                self.state.suspect(model)
            raise

    # -- agreeing with the worker ------------------------------------------------------------

    def ensure_synced(self, deadline: float | None = None) -> None:
        """Adopt the worker's own report if the store's view may be stale (holding the
        worker exclusively; waiting for it until ``deadline``, a monotonic time)."""
        if self.state.synced:
            return
        with self._exclusive(deadline) as exclusive:
            if self.state.synced:  # another request synced while we waited
                return
            error = self.executor.resync(self.state)
            exclusive.end(synced=error is None)
        if error is not None:
            raise error

    def _exclusive(self, deadline: float | None = None):
        try:
            return self.state.exclusive(deadline or self.deadline())
        except Busy as err:
            raise busy(err) from None

    def reset(self) -> list[str]:
        """Evict every model the worker holds, through the executor."""
        self.ensure_synced()
        with self._exclusive() as exclusive:
            try:
                names = list(self.state.cached_names())
                evicted = self.executor.evict_all(exclusive, names)
            finally:
                error = self.executor.resync(self.state)
                exclusive.end(synced=error is None)
        if error is not None:
            raise error
        return evicted
