"""Prewarm in the simulator: the store's pure prewarm decision between a trace's requests.

``SimPrewarm`` learns each model's idle-time histogram from the requests as
they arrive (``policies/arrivals.py``) and, before each request, acts at
every moment the decision may answer differently (``prewarm.next_event``):
it unloads the models whose keep-alive from the histogram's tail is over
and carries out each ``prewarm.choose`` plan with ``prewarm.carry``, the
same functions the store runs. A prewarm takes the modelled time of its
calls, push and load; one that would still be running when the next request
arrives for another model is dropped (that request needs the slot), and a
request for the model being prewarmed waits for the rest of that load (it
counts as a cold start: its model was not resident on arrival).
"""

from __future__ import annotations

from dataclasses import dataclass

from model_store_server.config import DEFAULTS
from model_store_server.decision import Action
from model_store_server.policies.arrivals import Arrivals, HistogramShape
from model_store_server.policies.prewarm import (
    Where,
    carry,
    choose,
    keep_after_use,
    keep_alive_over,
    next_event,
)


@dataclass(frozen=True)
class PrewarmConfig:
    """The store's PREWARM_MARGIN and PREWARM_BIN_SECONDS."""

    margin: float = DEFAULTS["PREWARM_MARGIN"]
    bin_seconds: float = DEFAULTS["PREWARM_BIN_SECONDS"]


class SimPrewarm:
    """Prewarm for one ``SimWorker`` (see the module docstring)."""

    def __init__(self, config: PrewarmConfig, clock):
        self.config = config
        self.arrivals = Arrivals(HistogramShape(bin_seconds=config.bin_seconds), clock)
        self.done: dict[str, float] = {}
        self.unused: dict[str, Where] = {}  # prewarmed (where to), not yet requested
        self.loads = self.hits = self.wasted = self.dropped = 0
        self.busy_until = 0.0  # the last prewarm's end
        self.loading: str | None = None  # the model it brings in

    # -- between requests ---------------------------------------------------------------

    def before(self, worker, request, sizes: dict[str, int], footprints: dict[str, int]) -> None:
        """Act at each moment before ``request`` arrives (the clock is ``worker``'s). An
        event already past is acted on now; one that changed nothing is not tried again."""
        arrival, floor = request.timestamp, float("-inf")
        while True:
            times = [
                t
                for t in next_event(self.arrivals, worker.resident, self.config.margin, self.done)
                if floor < t < arrival
            ]
            if not times:
                return
            at = max(min(times), worker.clock.now, self.busy_until)
            if at >= arrival:
                return
            worker.advance(at)
            if not self._act(worker, at, request, sizes, footprints):
                floor = at

    def _act(self, worker, now: float, request, sizes, footprints) -> bool:
        """Unload what is over, then carry out one plan; False when nothing changed."""
        changed = False
        for model in keep_alive_over(
            self.arrivals, worker.resident, now=now, margin=self.config.margin
        ):
            worker.resident.discard(model)
            worker.unloaded += 1
            self.removed((model,), worker)
            changed = True
        plan = choose(
            self.arrivals,
            worker.cache,
            worker.resident,
            now=now,
            margin=self.config.margin,
            sizes=sizes.__getitem__,
            footprints=lambda m: footprints.get(m, sizes[m]),
            done=self.done,
        )
        if plan is None:
            return changed
        size = sizes[plan.model]
        footprint = footprints.get(plan.model, size)
        outcome = carry(plan, worker.cache, worker.resident, size=size, footprint=footprint)
        decision = outcome.decision
        if decision.action is Action.REJECTED:
            self.done[plan.model] = self.arrivals.last(plan.model)  # not again for this one
            return True
        cost = worker.cost
        seconds = cost.call_seconds(len(decision.evicted) + len(decision.unloaded))
        if decision.action is Action.LOAD_FROM_STORE:
            seconds += cost.push_seconds(size)
        if plan.where is Where.MEMORY:
            seconds += cost.load_seconds(size)
        if now + seconds > request.timestamp and request.model != plan.model:
            self.dropped += 1  # the next request needs the slot first: tried again after it
            return False
        self.done[plan.model] = self.arrivals.last(plan.model)
        worker.cache, worker.resident = outcome.cache, outcome.resident
        worker.evicted += len(decision.evicted)
        worker.unloaded += len(decision.unloaded)
        if decision.action is Action.LOAD_FROM_STORE:
            worker.pushed += size
        self.removed((*decision.evicted, *decision.unloaded), worker)
        self.loads += 1
        self.unused[plan.model] = plan.where
        self.busy_until = now + seconds
        self.loading = plan.model
        worker.clock.now = now + seconds
        return True

    def removed(self, names, worker) -> None:
        """``names`` left a tier: a prewarmed model that left the tier it was prewarmed
        into before any request used it was wasted."""
        for name in names:
            where = self.unused.get(name)
            tier = worker.resident if where is Where.MEMORY else worker.cache
            if where is not None and name not in tier:
                del self.unused[name]
                self.wasted += 1

    def after_use(self, worker, model: str) -> None:
        """A request for ``model`` ended (the worker's clock): where a tier has a
        time-to-live, ``model``'s becomes its keep-alive from the histogram's tail when that
        is longer (``prewarm.keep_after_use``), else the policy's again."""
        keep = keep_after_use(self.arrivals, model, now=worker.clock.now, margin=self.config.margin)
        for tier in (worker.resident, worker.cache):
            if model in tier and tier.ttl is not None:
                tier.set_ttl(model, keep if keep is not None and keep > tier.ttl else None)

    # -- at a request ----------------------------------------------------------------------

    def wait_at(self, request) -> tuple[float, bool]:
        """(seconds ``request`` waits for a prewarm still running, whether that prewarm
        was of its own model: then its model was not resident on arrival)."""
        left = max(0.0, self.busy_until - request.timestamp)
        return left, left > 0 and self.loading == request.model

    def served(self, request, action) -> None:
        """``request`` was served with ``action``: learn its arrival; count a prewarm hit."""
        self.arrivals.observe(request.model, now=request.timestamp)
        if request.model in self.unused:
            del self.unused[request.model]
            if action in (Action.ALREADY_LOADED, Action.LOAD_FROM_LOCAL_STORE):
                self.hits += 1
