"""PREWARM=histogram in the store: learn each model's idle times, bring it in before its request.

``Prewarmer`` subscribes to the service's events: each request's arrival
(``RequestDecided``, timed from when the request arrived) teaches the
model's idle-time histogram (``policies/arrivals.py``), and ``Removed``
tells it when a prewarmed model left unused. A background thread wakes at
the moments the pure decision (``policies/prewarm.py``) may act and asks the
worker's view for the slot through ``WorkerView.background``: only
while the slot is free, no request waits and the view is synced, and never
taking away a model that is generating. The swap is carried out by the
worker's executor like any other (a request for the model that arrives
meanwhile waits for that load and is then served as ``already_loaded``). A
resident model whose predicted window ended ``PREWARM_MARGIN`` seconds ago
is unloaded the same way (keep-alive from the histogram's tail); where the
policy has a time-to-live, a model whose request ended stays loaded until
its histogram's tail instead (``idle_keep``, the view's hook).

A prewarm is *dropped* when a request for another model needs the slot: it
is not started while one waits, and one under way stops: its push is cut
at the next step (16 MiB over HTTP; the worker keeps nothing partial) or
its load is not started; a load already running in llama.cpp (or a push
whose last byte was sent) cannot be interrupted and runs to its end, after
which the request goes first. Dropped prewarms are tried again once the
slot is free (``model_swap_prewarm_dropped_total``).

With several workers, each prewarm goes to the worker the placement policy
would give the model's request (``Fleet.placed``; the model counts as
coming there while it is brought in, so its request follows it), and each
worker's keep-alive unloads are its own.

With ``STATE_DIR`` the histograms are written to ``arrivals.json`` there
(atomically, at most once a minute and at stop) and read at start.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from model_store_server.config import StoreSettings
from model_store_server.core import events as ev
from model_store_server.core.executor import PushStopped
from model_store_server.decision import Action, Decision, Outcome
from model_store_server.policies.arrivals import Arrivals, HistogramShape
from model_store_server.policies.prewarm import (
    Where,
    candidates,
    carry,
    choose,
    keep_after_use,
    keep_alive_over,
    next_event,
    next_need,
)
from model_swap.errors import ApiError

logger = logging.getLogger(__name__)

STATE_FILE = "arrivals.json"
SAVE_EVERY_S = 60.0
RECENT = 20  # prewarms remembered for /status


class Prewarmer:
    """See the module docstring. Thread-safe; ``start`` once, ``stop`` once."""

    def __init__(
        self,
        service,
        settings: StoreSettings,
        *,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.service = service
        self.settings = settings
        self.margin = settings.prewarm_margin
        self.clock = clock
        self.arrivals = Arrivals(HistogramShape(bin_seconds=settings.prewarm_bin_seconds), clock)
        self._lock = threading.Lock()
        self._done: dict[str, float | None] = {}  # model -> the arrival it was prewarmed for
        self._unused: dict[str, Where] = {}  # prewarmed, not yet used by a request
        self._recent: deque[dict] = deque(maxlen=RECENT)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty = False
        self._saved_at = clock()
        self.loads = Counter(
            "model_swap_prewarm_loads",
            "Models brought onto the worker before their predicted request (PREWARM)",
            ["where"],
            registry=registry,
        )
        self.hits = Counter(
            "model_swap_prewarm_hits",
            "Requests served from a model that was prewarmed for them",
            registry=registry,
        )
        self.dropped = Counter(
            "model_swap_prewarm_dropped",
            "Prewarms stopped midway (their push cut, or their load not started) because a "
            "request needed the slot",
            registry=registry,
        )
        self.wasted = Counter(
            "model_swap_prewarm_wasted",
            "Prewarmed models unloaded or evicted before any request used them",
            registry=registry,
        )
        for where in Where:
            self.loads.labels(str(where))
        self._state_path = Path(settings.state_dir) / STATE_FILE if settings.state_dir else None
        self._restore()

    # -- learning (event subscriber) ------------------------------------------------------

    def handle(self, event: object) -> None:
        match event:
            case ev.RequestDecided(record):
                waited = time.perf_counter() - record.started
                action = record.ticket.decision.action if record.ticket is not None else None
                with self._lock:
                    self.arrivals.observe(record.model, now=self.clock() - waited)
                    self._dirty = True
                    where = self._unused.pop(record.model, None)
                if where is not None and action in (
                    Action.ALREADY_LOADED,
                    Action.LOAD_FROM_LOCAL_STORE,
                ):
                    self.hits.inc()
                self._wake.set()
            case ev.Removed(kind, name, _):
                with self._lock:
                    where = self._unused.get(name)
                    if where is not None and (kind == "evicted" or where is Where.MEMORY):
                        del self._unused[name]
                        self.wasted.inc()

    # -- acting (the thread) ----------------------------------------------------------------

    def idle_keep(self, model: str) -> float | None:
        """``WorkerView.idle_keep``: seconds ``model``, whose request just ended, stays
        loaded where the policy has a time-to-live (``prewarm.keep_after_use``); None
        without a histogram's tail."""
        with self._lock:
            return keep_after_use(self.arrivals, model, now=self.clock(), margin=self.margin)

    def start(self) -> None:
        self.service.fleet.on_added(lambda node: setattr(node.view, "idle_keep", self.idle_keep))
        self._thread = threading.Thread(target=self._run, name="store-prewarm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._save()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pause = self.round()
            except Exception:
                logger.exception("prewarm round failed")
                pause = 1.0
            if self._clock_passed(SAVE_EVERY_S):
                self._save()
            self._wake.wait(pause)
            self._wake.clear()

    def round(self) -> float:
        """Unload what is over, then start at most one prewarm; returns seconds until the
        next moment worth looking again (short while the slot is busy)."""
        nodes = [node for node in self.service.fleet.nodes if node.view.synced]
        if not nodes:
            return 0.5
        if any([self._keep_alive(node) for node in nodes]) or self._prewarm():
            return 0.0
        now = self.clock()
        with self._lock:
            times = [
                t
                for node in nodes
                for t in next_event(self.arrivals, node.view.resident, self.margin, self._done)
            ]
            waiting = [
                model
                for _, model in candidates(self.arrivals, now, self.margin, self._done)
                if not any(model in node.view.resident for node in nodes)
            ]
        if waiting:  # due, but the slot or a generating model was in the way: look again soon
            return 0.1
        ahead = [t - now for t in times if t > now]
        return max(0.05, min([1.0, *ahead]))

    def _keep_alive(self, node) -> bool:
        def plan(cache, resident, busy) -> Outcome | None:
            with self._lock:
                over = keep_alive_over(
                    self.arrivals, resident, now=self.clock(), margin=self.margin, busy=busy
                )
            if not over:
                return None
            resident = resident.clone()
            for name in over:
                resident.discard(name)
            decision = Decision(over[0], Action.UNLOAD, unloaded=tuple(over))
            return Outcome(decision, cache, resident)

        swap = node.view.background(plan)
        if swap is None:
            return False
        try:
            node.executor.carry_out(node.view, swap, None, ev.nothing_done(), hit=False)
            logger.info(
                "unloaded %s: past the predicted window (keep-alive from the idle-time histogram)",
                ",".join(swap.decision.unloaded),
            )
        except ApiError as err:
            logger.warning("keep-alive unload failed: %s", err)
        return True

    def _prewarm(self) -> bool:
        """Start (and carry out) the first due prewarm that a worker takes: each model on
        the worker the placement policy would give its request (``Fleet.placed``, counted
        as coming there meanwhile, so its request follows it)."""
        files, fleet = self.service.files, self.service.fleet
        with self._lock:
            now = self.clock()
            found = [model for _, model in candidates(self.arrivals, now, self.margin, self._done)]
        for model in found:
            if any(model in node.view.resident for node in fleet.nodes):
                continue
            try:
                path = files.path(model)
                version = files.version(path)
                size = files.size(path)
                footprints = functools.partial(self._footprint, path)
                with fleet.placed(model, size, footprints) as node:
                    if not node.view.synced:
                        continue
                    chosen: dict = {}
                    plan = functools.partial(
                        self._plan, model, found, size, footprints(node), chosen
                    )
                    swap = node.view.background(plan, version)
                    if swap is None:
                        continue
                    self._carry(node, swap, path, chosen["plan"])
                    return True
            except ApiError as err:  # gone from MODELS_DIR, unreadable, or no worker
                logger.info("not prewarming %s: %s", model, err)
                with self._lock:
                    self._done[model] = self.arrivals.last(model)
        return False

    def _plan(self, model, found, size, footprint, chosen, cache, resident, busy):
        """``model``'s prewarm over the view's tiers (under the view's lock), or None."""
        with self._lock:
            others = {m: self.arrivals.last(m) for m in found if m != model}
            found_plan = choose(
                self.arrivals,
                cache,
                resident,
                now=self.clock(),
                margin=self.margin,
                sizes=lambda m: size,
                footprints=lambda m: footprint,
                busy=busy,
                done={**self._done, **others},
            )
        if found_plan is None:
            return None
        chosen["plan"] = found_plan
        return carry(found_plan, cache, resident, size=size, footprint=footprint)

    def _footprint(self, path, node) -> int:
        if not self.settings.max_loaded_bytes:
            return 0
        executor = node.executor
        return self.service.files.footprint(path, executor.worker_n_ctx, executor.worker_parallel)

    def _carry(self, node, swap, path, plan) -> None:
        with self._lock:
            previous = self._done.get(plan.model)
            self._done[plan.model] = self.arrivals.last(plan.model)
            # Before the load ends: a request served by it may be decided at once.
            self._unused[plan.model] = plan.where
        try:
            node.executor.carry_out(
                node.view,
                swap,
                path,
                ev.nothing_done(),
                hit=False,
                load=plan.where is Where.MEMORY,
            )
        except PushStopped as err:
            self.dropped.inc()
            logger.info("prewarm of %s dropped (%s): a request needs the slot", plan.model, err)
            with self._lock:
                self._unused.pop(plan.model, None)
                self._done[plan.model] = previous  # tried again once the slot is free
            return
        except ApiError as err:
            logger.warning("prewarm of %s failed: %s", plan.model, err)
            with self._lock:
                self._unused.pop(plan.model, None)
            return
        with self._lock:
            self._recent.append(
                {
                    "model": plan.model,
                    "where": str(plan.where),
                    "reason": plan.reason,
                    "at": self.clock(),
                }  # fmt: skip
            )
        self.loads.labels(str(plan.where)).inc()
        logger.info("prewarmed %s into %s: %s", plan.model, plan.where, plan.reason)

    # -- /status ---------------------------------------------------------------------------

    def explain(self) -> dict:
        """For ``/status``'s ``explain.prewarm``: each model's histogram, its predicted next
        request, and the recent prewarms with their reasons."""
        now = self.clock()
        with self._lock:
            models = {}
            for name, histogram in sorted(self.arrivals.histograms.items()):
                window = histogram.window()
                need = next_need(self.arrivals, name, now)
                models[name] = {
                    "idle_times": histogram.samples,
                    "out_of_range": histogram.out_of_range,
                    "representative": not histogram.why_not(),
                    "why_not": histogram.why_not(),
                    "window_s": None
                    if window is None
                    else [round(window.start - now, 3), round(window.end - now, 3)],
                    "next_expected_in_s": None if need == float("inf") else round(need - now, 3),
                }
            recent = [
                {**entry, "at": None, "seconds_ago": round(now - entry["at"], 3)}
                for entry in self._recent
            ]
            for entry in recent:
                del entry["at"]
            return {
                "mode": self.settings.prewarm,
                "margin_s": self.margin,
                "bin_seconds": self.arrivals.shape.bin_seconds,
                "active": True,
                "models": models,
                "prewarmed_unused": sorted(self._unused),
                "recent": recent,
            }

    # -- state over restarts -------------------------------------------------------------

    def _clock_passed(self, seconds: float) -> bool:
        return self._dirty and self.clock() - self._saved_at >= seconds

    def _restore(self) -> None:
        if self._state_path is None or not self._state_path.exists():
            return
        try:
            data = json.loads(self._state_path.read_text())
            adopted = self.arrivals.load_dict(data)
        except (OSError, ValueError, TypeError, AttributeError) as err:
            logger.warning("could not read %s (ignored): %s", self._state_path, err)
            return
        logger.info("read the idle-time histograms of %d models from %s", adopted, self._state_path)

    def _save(self) -> None:
        if self._state_path is None:
            return
        with self._lock:
            data = self.arrivals.to_dict()
            self._dirty = False
            self._saved_at = self.clock()
        try:
            self._state_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._state_path.with_suffix(".json.tmp")
            temporary.write_text(json.dumps(data))
            os.replace(temporary, self._state_path)
        except OSError as err:
            logger.warning("could not write %s: %s", self._state_path, err)
