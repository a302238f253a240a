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
from pathlib import Path
from typing import TypeVar

from model_store_server.config import StoreSettings
from model_store_server.core import events as ev
from model_store_server.core.attempt import (
    Attempt,
    ModelTooLarge,
    PinRefused,
    is_drift,
    is_worker_lost,
    rejected,
)
from model_store_server.core.fleet import Fleet, WorkerNode, resolve_ipv4
from model_store_server.core.gate import Busy, WorkerDown, busy
from model_store_server.core.grants import Hit, Swap, Ticket
from model_store_server.core.streams import Served, close_generation, relay, stream_error_marker
from model_store_server.core.syncing import Syncing
from model_store_server.core.view_control import PinConflict
from model_store_server.core.worker_view import Rejected, TooLarge
from model_store_server.files import ModelFiles, ModelUnloadable
from model_store_server.policies.cost_model import CostModel
from model_store_server.worker_client import InferenceStream
from model_swap.errors import ApiError, BadRequest, Unavailable

logger = logging.getLogger(__name__)

SEED_ROUTE = "/user_request"  # the seed's route: its log lines carry no ``path=`` field
# A request whose worker call finds the store's view stale is retried once after
# re-reading the worker (for example, the worker restarted and lost its model).
ATTEMPTS = 2

T = TypeVar("T")


class SwapService(Syncing):
    """Everything the store's routes call, for its workers (``fleet``). Thread-safe.

    Each worker's view, client, executor and transport are its ``WorkerNode``'s:
    ``fleet.nodes``, ``fleet.find(id or url)``, or ``fleet.first()`` for the one
    ``/status``'s top-level fields describe (the seed's one worker).
    """

    def __init__(self, settings: StoreSettings, *, clock=time.monotonic, resolver=resolve_ipv4):
        self.settings = settings
        self.cost_model = CostModel()  # what pushes and loads cost here, learned (for gdsf)
        self.events = ev.Events()
        self.fleet = Fleet(settings, self.events, self.cost_model, clock=clock, resolver=resolver)
        self.fleet.on_recovered = self._recovered
        self.files = ModelFiles(settings.models_dir)
        self.models_dir = self.files.models_dir
        self.model_path = self.files.path
        self.available = self.files.available
        # More of /status's ``explain`` (name -> report), from what runs beside the core.
        self.explain_extras: dict[str, Callable[[], dict]] = {}

    @property
    def transfers(self):
        return self.fleet.transfers

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
        check: Callable[[WorkerNode], None] = lambda node: None,
        start: Callable[[WorkerNode, Hit], T] = lambda node, hit: None,
    ) -> T:
        """Place ``model`` on a worker, get it resident and ``start(node, hit)`` there.

        Retries once on drift (the worker lost what the store believed it
        held) or when the model's file changed while it was pushed (then
        with the new version), and places the request once more elsewhere
        when its worker is lost before the generation starts. ``attempt`` is
        filled in as it goes (the last attempt's worker, decision and what
        the worker did), also when this raises. On success ``attempt.hit`` holds the generation,
        which the caller releases.
        """
        path = self.files.path(model)
        avoid: set[str] = set()  # a worker lost on the way: the request goes elsewhere once
        number = 0
        while True:
            number += 1
            attempt.reset()
            version = self.files.version(path)
            self.files.check_loadable(path, version)  # before anything is decided or evicted
            size = self.files.size(path)
            footprints = self._footprints(path)
            with self.fleet.placed(model, size, footprints, frozenset(avoid)) as node:
                attempt.node = node
                try:
                    self.ensure_synced(deadline, node=node, model=model, version=version)
                    # Judged with this worker's own N_CTX and PARALLEL, known once synced.
                    footprint = self._footprint(path, node)
                    check(node)  # the request against what this worker reported
                    if node.view.is_suspect(model):
                        node.executor.confirm(node.view, model, deadline)
                    grant = self._admit(
                        node, model, version, deadline, size, footprint, keep_alive, pin, attempt
                    )
                    return self._carry_on(node, grant, path, attempt, on_decided, start)
                except WorkerDown:
                    if not avoid:
                        avoid.add(node.id)
                        continue
                    lost = Unavailable(
                        f"worker {node.id} went down", retry_after=1, type="worker_unavailable"
                    )
                    attempt.headers_for(lost)
                    raise lost from None
                except ApiError as err:
                    if isinstance(err, ModelUnloadable):
                        self.files.remember_unloadable(version, err.message)
                    if is_worker_lost(err) and self.fleet.several and not avoid:
                        self.fleet.mark_down(node, err)
                        logger.warning("placing the request for %s again: %s", model, err)
                        avoid.add(node.id)
                        continue
                    if is_drift(err) and number < ATTEMPTS:
                        logger.warning("the worker no longer holds %s as expected; retrying", model)
                        continue
                    if number < ATTEMPTS and self._changed(path, version):
                        logger.warning("%s changed while it was pushed; retrying", model)
                        continue
                    attempt.headers_for(err)
                    raise
                except Busy as err:
                    raise busy(err) from None

    def _changed(self, path: Path, version: str) -> bool:
        """Whether ``path`` is another version now (an operator wrote it during the push:
        the worker refused bytes that did not match the announced digest)."""
        try:
            return self.files.version(path) != version
        except ApiError:
            return False

    def _footprint(self, path: Path, node: WorkerNode) -> int:
        """``path``'s estimated memory on ``node`` (its N_CTX and PARALLEL as it reported
        them). The estimate reads the file's header (~70 ms for a 250 MB model, once per
        version and worker settings): only a memory byte budget needs it before the load;
        otherwise the worker's own figure is taken from the load's answer."""
        if not self.settings.max_loaded_bytes:
            return 0
        executor = node.executor
        footprint = self.files.footprint(path, executor.worker_n_ctx, executor.worker_parallel)
        return footprint + executor.worker_kv_cache_bytes  # its prompt cache's memory

    def _footprints(self, path: Path) -> Callable[[WorkerNode], int]:
        """Each worker's estimate of ``path`` for placement, computed before the fleet's
        lock is taken (the first estimate of a version reads the file)."""
        known = {node.id: self._footprint(path, node) for node in self.fleet.nodes}
        return lambda node: known.get(node.id) or self._footprint(path, node)

    def _carry_on(self, node, grant: Hit | Swap, path: Path, attempt: Attempt, on_decided, start):
        """From the grant to ``start(hit)``; whatever fails on the way gives the grant back."""
        try:
            if on_decided is not None:
                on_decided(grant.ticket, worker=node.url)
            if isinstance(grant, Swap):
                result = node.executor.carry_out(node.view, grant, path, attempt.done)
                attempt.push, attempt.worker_ms = result.push, result.seconds * 1000
                grant = result.hit
            attempt.hit = grant
            return start(node, grant)
        except BaseException:
            if isinstance(grant, Hit):
                grant.release()
            else:
                grant.abort(synced=False)  # does nothing once the executor gave it back
            attempt.hit = None
            raise

    def _admit(
        self, node, model, version, deadline, size, footprint, keep_alive, pin, attempt
    ) -> Hit | Swap:
        try:
            grant = node.view.admit(
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
            stream = self.make_resident(
                model,
                attempt,
                deadline,
                keep_alive=keep_alive,
                on_decided=on_decided,
                check=functools.partial(self._check_context, job),
                start=functools.partial(self._start_inference, model, job),
            )
            record.decided(attempt.ticket, attempt.worker_ms, attempt.done)
            node = attempt.node
            return Served(
                decision=attempt.ticket.decision,
                model=stream.model,
                push=attempt.push,
                stream=relay(
                    stream, attempt.hit, stream_error, record, self.events, node.view.suspect
                ),
                close=functools.partial(close_generation, stream, attempt.hit, record),
                record=record,
                worker=node.url,
            )
        except BaseException as err:
            record.decided(attempt.ticket, attempt.worker_ms, attempt.done)
            record.finish(getattr(err, "status", 500))
            raise
        finally:
            # Exactly one line per request, whatever happened (the last attempt's decision).
            node = attempt.node or self.fleet.first()
            worker = node.id if self.fleet.several and attempt.node else ""
            self.events.publish(
                ev.RequestLogged(
                    model,
                    attempt.ticket,
                    attempt.worker_ms,
                    attempt.done,
                    route,
                    node.view.cached_names(),
                    worker,
                )
            )

    def _check_context(self, job: dict, node: WorkerNode) -> None:
        n_ctx, max_tokens = node.executor.worker_n_ctx, job.get("max_tokens")
        if n_ctx is not None and max_tokens is not None and max_tokens > n_ctx:
            raise BadRequest(
                f"max_tokens {max_tokens} exceeds the worker's context size (N_CTX={n_ctx})",
                param="max_tokens",
            )

    def _start_inference(
        self, model: str, job: dict, node: WorkerNode, hit: Hit
    ) -> InferenceStream:
        """Open ``node``'s token stream under ``hit`` (released on failure)."""
        try:
            return node.client.infer(model, job, together=hit.together)
        except BaseException as err:
            hit.release()
            status = getattr(err, "worker_status", None)
            if status in (400, 413):
                # The worker refused this request's input; its state is as we believe.
                raise BadRequest(err.worker_message) from None
            self.events.publish(ev.WorkerFailed(err))
            if is_drift(err):
                node.view.mark_unsynced()
            else:
                node.view.suspect(model)
            raise
