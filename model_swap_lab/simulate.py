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

from model_store_server.cache_policy import POLICIES, RecencyPolicy, Tier
from model_store_server.config import StoreSettings
from model_store_server.cost_model import CostModel
from model_store_server.decision import Action, decide
from model_store_server.policies.tiers import build_tiers
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


def _tiers(config: SimConfig, clock: SimClock, cost: CostModel, requests: Sequence[Request]):
    settings = StoreSettings(
        max_cache_size=config.max_cache_size,
        max_cache_bytes=config.max_cache_bytes,
        max_loaded_models=config.max_loaded_models,
        max_loaded_bytes=config.max_loaded_bytes,
        ttl_seconds=config.ttl_seconds,
        freq_half_life=config.freq_half_life,
    )
    if config.policy == OFFLINE:
        next_use = NextUse(requests)
        tiers = []
        for tier in (Tier.CACHE, Tier.RESIDENT):
            bounds = settings.tier_bounds(tier)
            bounds.pop("freq_half_life")
            bounds["max_bytes"] = bounds["max_bytes"] or None
            tiers.append(BeladyPolicy(next_use=next_use, clock=clock, **bounds))
        return tiers, next_use
    # Exactly as the store builds its two tiers.
    tiers = list(build_tiers(replace(settings, cache_policy=config.policy), clock, cost))
    return tiers, None


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
    (cache, resident), next_use = _tiers(config, clock, cost, requests)
    actions: list[str] = []
    waits: list[float] = []
    evicted = unloaded = pushed = 0
    for index, request in enumerate(requests):
        if next_use is not None:
            next_use.index = index
        clock.now = request.timestamp
        size = sizes[request.model]
        footprint = footprints.get(request.model, size)
        if not (cache.fits(size) and resident.fits(footprint)):
            actions.append(Action.REJECTED)  # the store answers 400 model_too_large
            continue
        outcome = decide(cache, resident, request.model, size=size, footprint=footprint)
        decision = outcome.decision
        if on_decision is not None:
            on_decision(request, decision)
        actions.append(decision.action)
        if decision.action is Action.REJECTED:
            continue
        cache, resident = outcome.cache, outcome.resident
        wait = cost.call_seconds(len(decision.evicted) + len(decision.unloaded))
        if decision.action is Action.LOAD_FROM_STORE:
            wait += cost.push_seconds(size) + cost.load_seconds(size)
            pushed += size
        elif decision.action is Action.LOAD_FROM_LOCAL_STORE:
            wait += cost.load_seconds(size)
        evicted += len(decision.evicted)
        unloaded += len(decision.unloaded)
        waits.append(wait)
        # The generation lease ends: idle time restarts (not a new use).
        clock.now = request.timestamp + wait
        for tier in (cache, resident):
            if request.model in tier:
                tier.refresh(request.model)
    result = summarize(
        actions, evicted=evicted, unloaded=unloaded, bytes_pushed=pushed, waits=waits
    )
    result["policy"] = config.policy
    if hasattr(cache, "standings"):  # adaptive: which expert led the disk tier at the end
        result["experts"] = cache.standings()
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
