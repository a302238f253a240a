"""The simulator: a trace through the store's own policies and ``decide``, on a simulated clock.

For each request the clock is set to its timestamp, ``decide`` (the function
the store's ``WorkerState`` calls) chooses the action on the two tiers, and
the modelled swap time (``CostModel``: worker calls, push, load) is what the
request waits; when it ends, the model's idle time restarts as when the
store's generation lease is released. Requests are served one at a time, as
one client sends them, with no queueing and no generation time modelled.
With ``--max-cache-size`` and the store's defaults for the rest, the actions
are exactly what a live store decides for the same sequence.

``belady`` (``BeladyPolicy``) is the offline optimum under count budgets:
the member whose next request is furthest in the future goes first. Under a
byte budget the same rule (ties: larger first) is an offline *reference*,
not a bound: with sizes the optimum is NP-hard, and furthest-next-use can be
beaten by evicting a large model that comes back a little sooner.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from model_store_server.config import StoreSettings
from model_store_server.decision import Action, decide
from model_store_server.policies import POLICIES, RecencyPolicy, Tier
from model_store_server.policies.cost_model import CostModel
from model_store_server.policies.tiers import build_tiers
from model_swap_lab.prewarming import PrewarmConfig, SimPrewarm
from model_swap_lab.report import summarize
from model_swap_lab.trace import Request

OFFLINE = "belady"
POLICY_CHOICES = (*POLICIES, OFFLINE)


class SimClock:
    """The simulated time: the trace's timestamps, moved by the simulator."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NextUse:
    """When each model is requested next, seen from the request being decided."""

    def __init__(self, requests: Sequence[Request]):
        self._positions: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            self._positions[request.model].append(index)
        self.index = 0

    def after_now(self, model: str) -> float:
        positions = self._positions.get(model, [])
        at = bisect.bisect_right(positions, self.index)
        return positions[at] if at < len(positions) else math.inf


class BeladyPolicy(RecencyPolicy):
    """Offline: the member requested furthest in the future is the next victim."""

    name = OFFLINE
    uses_ttl = False

    def __init__(self, *, next_use: NextUse, **bounds):
        super().__init__(**bounds)
        self.next_use = next_use

    def _eviction_order(self) -> list[str]:
        def key(model: str) -> tuple[float, int]:
            return (-self.next_use.after_now(model), -self._sizes[model])

        return sorted(self._last_used, key=key)

    def _victim_reason(self, model: str) -> str:
        return f"requested next at trace index {self.next_use.after_now(model)}"


@dataclass(frozen=True)
class SimConfig:
    """The store settings the simulator mirrors (defaults: the store's)."""

    policy: str = "lru"
    max_cache_size: int = 2
    max_cache_bytes: int = 0
    max_loaded_models: int = 1
    max_loaded_bytes: int = 0
    ttl_seconds: float = 5.0
    freq_half_life: float = StoreSettings.freq_half_life
    prewarm: str = "off"  # PREWARM: off | histogram
    prewarm_margin: float = StoreSettings.prewarm_margin
    prewarm_bin_seconds: float = StoreSettings.prewarm_bin_seconds


def next_use_for(config: SimConfig, requests: Sequence[Request]) -> NextUse | None:
    """What ``belady`` looks ahead with (None for the online policies)."""
    return NextUse(requests) if config.policy == OFFLINE else None


def _tiers(config: SimConfig, clock: SimClock, cost: CostModel, next_use: NextUse | None):
    settings = StoreSettings(
        max_cache_size=config.max_cache_size,
        max_cache_bytes=config.max_cache_bytes,
        max_loaded_models=config.max_loaded_models,
        max_loaded_bytes=config.max_loaded_bytes,
        ttl_seconds=config.ttl_seconds,
        freq_half_life=config.freq_half_life,
    )
    if next_use is not None:
        tiers = []
        for tier in (Tier.CACHE, Tier.RESIDENT):
            bounds = settings.tier_bounds(tier)
            bounds.pop("freq_half_life")
            bounds["max_bytes"] = bounds["max_bytes"] or None
            tiers.append(BeladyPolicy(next_use=next_use, clock=clock, **bounds))
        return tuple(tiers)
    # Exactly as the store builds its two tiers.
    return build_tiers(replace(settings, cache_policy=config.policy), clock, cost)


class SimWorker:
    """One simulated worker: its two tiers, built as the store builds them, and what
    serving requests on it cost (actions, swap waits, bytes pushed, evictions, unloads).

    The simulator runs one; the fleet simulator (``fleet.py``) one per worker.
    """

    def __init__(
        self, config: SimConfig, clock: SimClock, cost: CostModel, next_use: NextUse | None
    ):
        self.cache, self.resident = _tiers(config, clock, cost, next_use)
        self.clock = clock
        self.cost = cost
        self.actions: list[str] = []
        self.waits: list[float] = []
        self.evicted = self.unloaded = self.pushed = 0
        self.cold = 0  # requests whose model was not resident on arrival
        self.memory_byte_seconds = 0.0
        self._metered_at = 0.0
        self.prewarm: SimPrewarm | None = None
        if config.prewarm == "histogram":
            self.prewarm = SimPrewarm(
                PrewarmConfig(config.prewarm_margin, config.prewarm_bin_seconds), clock
            )
        elif config.prewarm != "off":
            raise ValueError(f"unknown prewarm {config.prewarm!r} (valid: off, histogram)")

    def advance(self, now: float) -> None:
        """Move the clock to ``now``, counting the memory held meanwhile."""
        self.meter(now)
        self.clock.now = now

    def meter(self, now: float) -> None:
        """Count the resident bytes held since the last call, until ``now``."""
        if now > self._metered_at:
            held = sum(self.resident.size_of(name) for name in self.resident.recency())
            self.memory_byte_seconds += held * (now - self._metered_at)
            self._metered_at = now

    def serve(
        self,
        request: Request,
        size: int,
        footprint: int,
        on_decision: Callable[[Request, object], None] | None = None,
    ) -> None:
        """Serve ``request`` as the store would, the clock at its timestamp; counts the cost."""
        self.meter(request.timestamp)
        extra, own = self.prewarm.wait_at(request) if self.prewarm else (0.0, False)
        cache, resident = self.cache, self.resident
        if not (cache.fits(size) and resident.fits(footprint)):
            self.actions.append(Action.REJECTED)  # the store answers 400 model_too_large
            self.cold += 1
            return
        outcome = decide(cache, resident, request.model, size=size, footprint=footprint)
        decision = outcome.decision
        if on_decision is not None:
            on_decision(request, decision)
        self.actions.append(decision.action)
        self.cold += own or decision.action is not Action.ALREADY_LOADED
        if self.prewarm is not None:
            self.prewarm.served(request, decision.action)
        if decision.action is Action.REJECTED:
            return
        self.cache, self.resident = outcome.cache, outcome.resident
        if self.prewarm is not None:
            self.prewarm.removed((*decision.evicted, *decision.unloaded), self)
        cost = self.cost
        wait = extra + cost.call_seconds(len(decision.evicted) + len(decision.unloaded))
        if decision.action is Action.LOAD_FROM_STORE:
            wait += cost.push_seconds(size) + cost.load_seconds(size)
            self.pushed += size
        elif decision.action is Action.LOAD_FROM_LOCAL_STORE:
            wait += cost.load_seconds(size)
        self.evicted += len(decision.evicted)
        self.unloaded += len(decision.unloaded)
        self.waits.append(wait)
        # The generation lease ends: idle time restarts (not a new use).
        self.clock.now = request.timestamp + wait
        for tier in (self.cache, self.resident):
            if request.model in tier:
                tier.refresh(request.model)
        if self.prewarm is not None:
            self.prewarm.after_use(self, request.model)

    def summary(self) -> dict:
        return summarize_workers([self])


def summarize_workers(workers: Sequence[SimWorker]) -> dict:
    """``report.summarize`` over every request the ``workers`` served, plus
    ``cold_starts`` (requests whose model was not resident on arrival), ``prewarm_loads``,
    ``prewarm_hits``, ``prewarm_wasted``, ``prewarm_dropped``, ``loads`` (every load and
    push, prewarm included) and ``memory_byte_seconds`` (resident bytes over time)."""
    result = summarize(
        [action for worker in workers for action in worker.actions],
        evicted=sum(worker.evicted for worker in workers),
        unloaded=sum(worker.unloaded for worker in workers),
        bytes_pushed=sum(worker.pushed for worker in workers),
        waits=[wait for worker in workers for wait in worker.waits],
    )
    prewarms = [worker.prewarm for worker in workers if worker.prewarm is not None]
    result["cold_starts"] = sum(worker.cold for worker in workers)
    for key in ("loads", "hits", "wasted", "dropped"):
        result[f"prewarm_{key}"] = sum(getattr(p, key) for p in prewarms)
    result["loads"] = (
        result["load_from_store"] + result["load_from_local_store"] + result["prewarm_loads"]
    )
    result["memory_byte_seconds"] = round(sum(w.memory_byte_seconds for w in workers), 1)
    return result


def simulate(
    requests: Sequence[Request],
    sizes: dict[str, int],
    config: SimConfig = SimConfig(),
    *,
    cost: CostModel | None = None,
    footprints: dict[str, int] | None = None,
    on_decision: Callable[[Request, object], None] | None = None,
) -> dict:
    """Run ``requests`` through ``config``'s policy; returns the result object
    (``report.summarize``) plus ``policy``, ``config`` and ``cost_model``.

    ``sizes``: each model's file bytes; ``footprints``: its memory once loaded
    (default: its size). ``on_decision(request, decision)`` sees every decision.
    """
    cost = cost or CostModel()
    footprints = footprints or {}
    clock = SimClock()
    next_use = next_use_for(config, requests)
    worker = SimWorker(config, clock, cost, next_use)
    for index, request in enumerate(requests):
        if next_use is not None:
            next_use.index = index
        if worker.prewarm is not None:
            worker.prewarm.before(worker, request, sizes, footprints)
        clock.now = request.timestamp
        size = sizes[request.model]
        worker.serve(request, size, footprints.get(request.model, size), on_decision)
    if requests:
        worker.meter(max(clock.now, requests[-1].timestamp))
    return result_object([worker], config, cost)


def result_object(workers: Sequence[SimWorker], config: SimConfig, cost: CostModel) -> dict:
    """The summary over ``workers`` plus ``policy``, ``experts`` (adaptive, one worker:
    which expert led the disk tier at the end), ``config`` and ``cost_model``."""
    result = summarize_workers(workers)
    result["policy"] = config.policy
    if len(workers) == 1 and hasattr(workers[0].cache, "standings"):
        result["experts"] = workers[0].cache.standings()
    result["config"] = asdict(config)
    result["cost_model"] = asdict(cost.rates)
    return result


def footprints_from_dir(directory: str | Path, names, n_ctx: int = 2048) -> dict[str, int]:
    """Each model's memory estimate as the store computes it (file size if unreadable)."""
    from model_swap.footprint import estimate

    result = {}
    for name in names:
        path = Path(directory) / name
        try:
            result[name] = estimate(path, n_ctx).total_bytes
        except Exception:  # not a readable GGUF: the store falls back to the file size too
            result[name] = path.stat().st_size
    return result
