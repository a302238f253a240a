"""Carrying decisions out on one worker: evict, unload, push, load, and re-reading it.

``Executor`` is the one loop of effects, used by requests, ``/models``
control, resync, reset and the idle sweep. It publishes what it did
(``events``) and reports back to the view only through the grant it holds.
A failed swap keeps its slot to re-read and correct the worker, waiting only
for the generations on models it must take away; a file that changed while
it was pushed is a 503 with Retry-After; a file the store cannot read is a
500 (``files.unreadable``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from model_store_server.core import events as ev
from model_store_server.core.gate import Busy, busy
from model_store_server.core.grants import Exclusive, Hit, Swap
from model_store_server.core.worker_view import WorkerView
from model_store_server.decision import LOADS, Action, Decision
from model_store_server.files import ModelUnloadable, unreadable
from model_store_server.policies.cost_model import CostModel
from model_store_server.transport.http import PushResult, Transport
from model_store_server.worker_client import SourceChanged, WorkerClient, WorkerError
from model_swap.errors import ApiError, Unavailable
from model_swap.progress import Progress, Transfers

logger = logging.getLogger(__name__)


class PushStopped(Exception):
    """A background swap's push was stopped midway: a request needs the slot."""


class _StoppableProgress(Progress):
    """A push's progress that stops the push (raises ``PushStopped`` from the transport's
    progress report) once ``stop`` is set, while the body is not yet all sent: the
    connection is closed midway and the worker keeps no partial file."""

    def __init__(self, model: str, total: int, stop, **kwargs):
        super().__init__(model, total, **kwargs)
        self._stop = stop

    def set_done(self, nbytes: int) -> None:
        super().set_done(nbytes)
        if self._stop.is_set() and self.total is not None and nbytes < self.total:
            raise PushStopped(f"push of {self.model} stopped at {nbytes} of {self.total} bytes")


# After a failed swap, how long to wait for generations on the models the worker's report
# takes away before giving the slot back unsynced (the next request re-reads it).
RECOVER_SECONDS = 5.0


def removal_reason(decision: Decision, name: str) -> str:
    """Why carrying ``decision`` out evicts or unloads ``name``."""
    if name in decision.expired:
        return "ttl"
    if decision.action in (Action.EVICT, Action.UNLOAD):
        return "explicit"
    if name == decision.model:  # a stale copy replaced by the store's new version
        return "version_change"
    return "capacity"


@dataclass
class Done:
    """What one swap carried out (``done`` lists evictions and unloads as they happen)."""

    done: dict
    push: PushResult | None = None
    seconds: float = 0.0
    hit: Hit | None = None


class Executor:
    """Effects on one worker. Thread-safe (the grants serialise what changes the worker)."""

    def __init__(
        self,
        client: WorkerClient,
        transport: Transport,
        events: ev.Events,
        cost_model: CostModel,
    ):
        self.client = client
        self.transport = transport
        self.events = events
        self.cost_model = cost_model
        self.transfers = Transfers()  # pushes running now (GET /status, SSE progress)
        self.worker_n_ctx: int | None = None  # from the worker's last report
        self.worker_parallel = 1  # its sequences per model (each N_CTX tokens of KV cache)
        self.worker_kv_cache_bytes = 0  # its prompt cache per model (KV_CACHE_BYTES)

    def carry_out(
        self,
        view: WorkerView,
        swap: Swap,
        path: Path | None,
        done: dict,
        *,
        hit: bool = True,
        load: bool = True,
    ) -> Done:
        """Carry ``swap``'s decision out, then commit it (with ``hit``: the caller's ``Hit``).
        ``load=False``: a push leaves the file on the worker's disk without loading it.

        Evictions, then unloads, then the load; each is appended to ``done``
        once the worker did it. On any failure the worker is taken
        exclusively, re-read and corrected, and the error raised.
        """
        decision = swap.decision
        result = Done(done)
        estimated = None
        started = time.perf_counter()
        with swap:
            try:
                for victim in decision.evicted:
                    self.client.evict(victim)
                    self._removed(done, "evicted", victim, decision)
                    logger.info("evicted %s from the worker", victim)
                for victim in decision.unloaded:
                    self.client.unload(victim)
                    self._removed(done, "unloaded", victim, decision)
                    logger.info("unloaded %s from the worker's memory (file kept)", victim)
                if swap.stopping.is_set() and decision.action in LOADS:  # not started
                    raise PushStopped(f"{decision.model}: a request needs the slot")
                if decision.action is Action.LOAD_FROM_STORE:
                    result.push = self._push(
                        decision.model, path, swap.ticket.version, load, swap.stopping
                    )
                    estimated = result.push.estimated_bytes
                elif decision.action is Action.LOAD_FROM_LOCAL_STORE:
                    estimated = self._load_local(view, decision.model)
            except PushStopped:
                # Only a background swap stops: what it did stays done, its model is on the
                # worker nowhere (the worker drops a partial upload), the slot goes back.
                view.stopped(swap)
                raise
            except BaseException as err:
                seconds = time.perf_counter() - started
                self.events.publish(ev.WorkerFailed(err))
                self.events.publish(ev.Swapped(decision, result.push, seconds, done, False))
                if isinstance(err, ApiError):
                    logger.warning("%s for %s failed: %s", decision.action, decision.model, err)
                else:
                    logger.exception("%s for %s failed", decision.action, decision.model)
                if _load_refused(err):
                    # The worker keeps the file it could not load: drop it, so it holds no
                    # slot of the disk tier once the worker is re-read.
                    self._drop(decision.model)
                self._recover(view, swap)
                raise self._public(decision.model, err) from err
            result.hit = swap.commit(hit=hit)
        if isinstance(estimated, int):
            view.loaded_size(decision.model, estimated)
        result.seconds = time.perf_counter() - started
        self.events.publish(ev.Swapped(decision, result.push, result.seconds, done, True))
        return result

    def _removed(self, done: dict, kind: str, name: str, decision: Decision) -> None:
        done[kind].append(name)
        self.events.publish(ev.Removed(kind, name, removal_reason(decision, name)))

    def _push(
        self, model: str, path: Path, version: str | None, load: bool = True, stop=None
    ) -> PushResult:
        size = path.stat().st_size
        if stop is None:
            progress = Progress(model, size, logger=logger)
        else:
            progress = _StoppableProgress(model, size, stop, logger=logger)
        with self.transfers.track(progress):
            push = self.transport.push(model, path, digest=version, load=load)
        self.events.publish(ev.Pushed(push))
        logger.info(
            "pushed %s: %d bytes in %.3fs (%.1f MB/s) over %s, %s",
            push.model,
            push.nbytes,
            push.seconds,
            push.mb_per_s,
            push.transport,
            "loaded" if load else "kept on disk",
        )
        # Teach the cost model what this push (and the load the worker timed) took.
        if push.load_seconds is None:
            self.cost_model.observe_push(push.nbytes, push.seconds)
        else:
            self.cost_model.observe_push(push.nbytes, max(0.0, push.seconds - push.load_seconds))
            self.cost_model.observe_load(push.nbytes, push.load_seconds)
        return push

    def _load_local(self, view: WorkerView, model: str):
        loading = time.perf_counter()
        answer = self.client.load_local(model)
        self.events.publish(ev.LoadedLocal(time.perf_counter() - loading))
        logger.info("loaded %s from the worker's cache", model)
        # The size the policy admitted (the store's file may be gone by now).
        size, seconds = view.file_size(model), answer.get("load_seconds")
        if size is not None and isinstance(seconds, int | float):
            self.cost_model.observe_load(size, seconds)
        return answer.get("estimated_bytes")

    @staticmethod
    def _public(model: str, err: BaseException) -> BaseException:
        """The client's error for a failed swap."""
        if _load_refused(err):
            return ModelUnloadable(f"the worker cannot load model {model}: {err.worker_message}")
        if isinstance(err, SourceChanged):
            return Unavailable(
                f"model {model} changed while it was pushed; retry", retry_after=1, type="busy"
            )
        if isinstance(err, OSError) and not isinstance(err, ApiError):
            return unreadable(model, err)
        return err

    def _drop(self, model: str) -> None:
        try:
            self.client.evict(model)
            logger.info("deleted %s from the worker: it cannot be loaded", model)
        except WorkerError as err:
            logger.warning("could not delete the unloadable %s from the worker: %s", model, err)

    def _recover(self, view: WorkerView, swap: Swap) -> None:
        """After a failed swap: with its slot, re-read and correct the worker."""
        if self.reread(view, swap, time.monotonic() + RECOVER_SECONDS) is not None:
            logger.warning("the worker could not be re-read; it will be before the next decision")

    # -- the worker's truth -----------------------------------------------------------------

    def reread(self, view: WorkerView, slot: Swap, deadline: float) -> ApiError | None:
        """Re-read the worker holding ``slot`` (``view.sync_slot`` or a failed swap), then
        give the slot back. Waits, until ``deadline``, only for generations on the models
        the worker's report takes away; hits on every other model go on. Returns the error
        that prevented it (the view stays unsynced), or None."""
        with slot:
            error = self._adopt_report(
                view, lambda names: view.wait_ended(names, deadline) if names else None
            )
            slot.abort(synced=error is None)
        return error

    def resync(self, view: WorkerView) -> ApiError | None:
        """Read the worker's report, adopt it and restore the bounds (the caller holds the
        worker exclusively). Returns the error that prevented it, or None."""
        return self._adopt_report(view, lambda names: None)

    def _adopt_report(self, view: WorkerView, wait_ended) -> ApiError | None:
        try:
            report = self.client.status()
            self.worker_n_ctx, self.worker_parallel = report.n_ctx, report.parallel
            self.worker_kv_cache_bytes = report.kv_cache_bytes
            to_delete, to_unload = view.apply_worker_report(
                {name: report.sizes.get(name, 0) for name in report.cached},
                report.resident,
                report.digests,
            )
            wait_ended(sorted({*to_delete, *to_unload}))
            for name in to_delete:
                self.client.evict(name)
                self.events.publish(ev.Removed("evicted", name, "resync"))
                logger.info("evicted %s from the worker to restore the policy's bounds", name)
            for name in to_unload:
                self.client.unload(name)
                self.events.publish(ev.Removed("unloaded", name, "resync"))
                logger.info("unloaded %s from the worker to restore the memory budget", name)
        except Busy as err:  # a generation on a model to take away outlasted the deadline
            view.mark_unsynced()
            self.events.publish(ev.Resynced(False))
            logger.warning("could not restore the worker's bounds yet: %s", err)
            return busy(err)
        except Exception as err:
            view.mark_unsynced()
            self.events.publish(ev.Resynced(False))
            self.events.publish(ev.WorkerFailed(err))
            if isinstance(err, ApiError):
                logger.warning("could not re-read the worker's state: %s", err.message)
                return err
            logger.exception("could not re-read the worker's state")
            return WorkerError("could not re-read the worker's state")
        self.events.publish(ev.Resynced(True))
        logger.info(
            "synced with the worker: cached=%s resident=%s", report.cached, list(report.resident)
        )
        return None

    def confirm(self, view: WorkerView, model: str, deadline: float) -> None:
        """After ``model``'s stream failed: with ``model``'s generations ended (other models
        go on), ask the worker what it holds and forget what it lost."""
        with view.hold(model, deadline) as swap:
            report = self.client.status()
            view.confirm(model, report.cached, report.resident)
            swap.commit(hit=False)
        logger.info("re-read the worker about %s: resident=%s", model, list(report.resident))

    def evict_all(self, exclusive: Exclusive, names: list[str]) -> list[str]:
        """Evict ``names`` (the caller holds the worker exclusively); returns those done."""
        evicted = []
        for name in names:
            self.client.evict(name)
            evicted.append(name)
            self.events.publish(ev.Removed("evicted", name, "explicit"))
            logger.info("evicted %s from the worker (reset)", name)
        return evicted


def _load_refused(err: BaseException) -> bool:
    """The worker received the file but llama.cpp could not load it (its 422)."""
    return isinstance(err, WorkerError) and err.worker_status == 422
