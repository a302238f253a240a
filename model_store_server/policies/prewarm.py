"""The prewarm decision: which model to bring in before its request, and which to let go.

Pure, beside the cache policies, and composed with every one of them: it
reads the arrival histograms (``arrivals.py``) and the worker's two tiers,
and returns a ``Plan`` (or the models whose keep-alive is over); the store
and the simulator carry it out with ``decide`` like any other load.

Rules, each its own test:

- **predicted within the window**: a model whose histogram is representative
  and whose next request is expected within ``margin`` seconds (and not yet
  past the window's end) is a candidate, once per predicted request;
- **never push out a model predicted sooner**: the memory it needs is taken
  from the resident models needed furthest in the future, and only from
  models needed later than it (a model generating now is never a victim);
- **disk only when memory would be taken from something busier**: if memory
  cannot be made without that, the file is pushed to the worker's disk
  (when it is not there yet and the disk tier has room by the same rule), so
  the request pays a load but no push;
- **keep-alive from the histogram's tail**: a resident model whose window
  ended ``margin`` seconds ago is unloaded (its file stays); where the policy
  has a time-to-live, a model whose request just ended stays loaded until
  its keep window (head to tail, spread or not: a Poisson model's tail too)
  ended ``margin`` seconds ago instead of the fixed TTL (``keep_after_use``):
  it stays loaded rather than being unloaded and prewarmed again, since each
  unload + prewarm costs a load per request;
- **nothing when not representative**: a model without a representative
  histogram is never prewarmed nor unloaded by these rules; the configured
  policy stays in charge of it.

When a model is needed next (``next_need``): within its window, now; before
it, the window's start; otherwise (no pattern, or past its window) now plus
its mean idle time (memoryless), or never for a model seen once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from enum import StrEnum

from model_store_server.decision import Action, Decision, Outcome, decide
from model_store_server.policies.arrivals import Arrivals
from model_store_server.policies.base import CacheFull, CachePolicy

MODES = ("off", "histogram")


class Where(StrEnum):
    MEMORY = "memory"  # pushed if needed, and loaded
    DISK = "disk"  # pushed to the worker's disk only


@dataclass(frozen=True)
class Plan:
    """Bring ``model`` in ahead of its request, into ``where``, first unloading ``unload``."""

    model: str
    where: Where
    unload: tuple[str, ...]
    reason: str
    expected_at: float  # when its request is expected (clock time)
    keep_seconds: float = 0.0  # from now until its window ended ``margin`` seconds ago


def next_need(arrivals: Arrivals, model: str, now: float) -> float:
    """When ``model`` is expected to be requested next (see the module docstring)."""
    histogram = arrivals.get(model)
    if histogram is None or histogram.last is None:
        return math.inf
    window = histogram.window()
    if window is not None and now <= window.end:
        return max(now, window.start)
    mean = histogram.mean_gap()
    return now + mean if mean is not None else math.inf


def candidates(
    arrivals: Arrivals, now: float, margin: float, done: dict[str, float]
) -> list[tuple[float, str]]:
    """(expected time, model) of the models predicted within ``margin`` of ``now``, soonest
    first; ``done`` maps each model to the last request it was already prewarmed for."""
    found = []
    for model, histogram in arrivals.histograms.items():
        window = histogram.window()
        if window is None or done.get(model) == histogram.last:
            continue
        if window.start - margin <= now <= window.end:
            found.append((max(now, window.start), model))
    return sorted(found)


def _victims(
    tier: CachePolicy,
    need_bytes: int,
    order: list[str],
    busy: Collection[str],
    gone: Collection[str] = (),
) -> list[str] | None:
    """Members of ``tier`` (from ``order``) to remove so that one more member of
    ``need_bytes`` fits; None if the members allowed in ``order`` are not enough."""
    members = [m for m in tier.recency() if m not in gone]
    count = len(members)
    used = sum(tier.size_of(m) for m in members)

    def full() -> bool:
        if tier.capacity is not None and count + 1 > tier.capacity:
            return True
        return tier.max_bytes is not None and used + need_bytes > tier.max_bytes

    chosen = []
    for name in order:
        if not full():
            break
        if name in gone or name not in tier or name in busy or tier.is_pinned(name):
            continue
        chosen.append(name)
        count -= 1
        used -= tier.size_of(name)
    return None if full() else chosen


def choose(
    arrivals: Arrivals,
    cache: CachePolicy,
    resident: CachePolicy,
    *,
    now: float,
    margin: float,
    sizes: Callable[[str], int],
    footprints: Callable[[str], int],
    busy: Collection[str] = (),
    done: dict[str, float] | None = None,
) -> Plan | None:
    """The next prewarm, or None. ``sizes``/``footprints``: a model's file and memory bytes;
    ``busy``: models generating or queued for now (never victims); ``done``: see
    ``candidates``. Reads the tiers only."""
    for expected, model in candidates(arrivals, now, margin, done or {}):
        if model in resident or model in busy:
            continue
        plan = _plan(arrivals, cache, resident, model, expected, now, sizes, footprints, busy)
        if plan is not None:
            keep = arrivals.window(model).end + margin - now
            return replace(plan, keep_seconds=max(keep, 0.0))
    return None


def _plan(arrivals, cache, resident, model, expected, now, sizes, footprints, busy):
    def later(name: str) -> bool:
        return next_need(arrivals, name, now) > expected

    def furthest(tier: CachePolicy) -> list[str]:
        names = [m for m in tier.recency() if m != model]
        names.sort(key=lambda m: (-next_need(arrivals, m, now), -tier.size_of(m)))
        return [m for m in names if later(m)]

    if not (cache.fits(sizes(model)) and resident.fits(footprints(model))):
        return None
    evicted: list[str] = []
    if model not in cache:
        trial = cache.clone()
        try:
            evicted = trial.admit(model, sizes(model))
        except CacheFull:
            return None
        if any(name in busy or not later(name) for name in evicted):
            return None  # the disk tier would delete a file needed sooner
    unload = _victims(resident, footprints(model), furthest(resident), busy, gone=evicted)
    when = f"expected in {expected - now:.1f}s"
    if unload is not None:
        why = f"{model} {when}"
        if unload:
            why += f"; unloading {','.join(unload)} (needed later)"
        return Plan(model, Where.MEMORY, tuple(unload), why, expected)
    if model in cache or any(name in resident for name in evicted):
        return None
    why = f"{model} {when}; memory only from models needed sooner: pushed to disk"
    return Plan(model, Where.DISK, (), why, expected)


def carry(
    plan: Plan, cache: CachePolicy, resident: CachePolicy, *, size: int, footprint: int
) -> Outcome:
    """``plan`` as a decision over the tiers (copies, as ``decide`` works): unload its
    victims, then decide the load (MEMORY), or admit the file only (DISK). REJECTED (nothing
    changed) if the tiers refuse. Where a tier has a time-to-live, the prewarmed model's
    is its ``keep_seconds`` (a fixed TTL would let it go before its request)."""
    outcome = _carry(plan, cache, resident, size=size, footprint=footprint)
    if outcome.decision.action is not Action.REJECTED and plan.keep_seconds > 0:
        for tier in (outcome.cache, outcome.resident):
            if plan.model in tier and tier.ttl is not None and plan.keep_seconds > tier.ttl:
                tier.set_ttl(plan.model, plan.keep_seconds)
    return outcome


def _carry(plan, cache, resident, *, size, footprint) -> Outcome:
    cache, resident = cache.clone(), resident.clone()
    for name in plan.unload:
        resident.discard(name)
    if plan.where is Where.MEMORY:
        outcome = decide(cache, resident, plan.model, size=size, footprint=footprint)
        decision = outcome.decision
        if decision.action is Action.REJECTED:
            return outcome
        unloaded = tuple(dict.fromkeys((*plan.unload, *decision.unloaded)))
        unloaded = tuple(name for name in unloaded if name not in decision.evicted)
        return Outcome(
            Decision(
                plan.model,
                decision.action,
                decision.evicted,
                unloaded,
                reason=plan.reason,
                expired=decision.expired,
            ),
            outcome.cache,
            outcome.resident,
        )
    try:
        evicted = cache.admit(plan.model, size)
    except CacheFull as err:
        return Outcome(Decision(plan.model, Action.REJECTED, reason=str(err)), cache, resident)
    for name in evicted:
        resident.discard(name)
    decision = Decision(plan.model, Action.LOAD_FROM_STORE, tuple(evicted), reason=plan.reason)
    return Outcome(decision, cache, resident)


def keep_after_use(arrivals: Arrivals, model: str, *, now: float, margin: float) -> float | None:
    """Keep-alive from the histogram's tail: how long ``model``, whose request just ended at
    ``now``, stays loaded while idle, where a policy has a time-to-live: until its next
    request's keep window (``IdleHistogram.keep_window``: head to tail, spread or not) ended
    ``margin`` seconds ago. None without enough idle times in range (the policy's own
    time-to-live stays). Staying loaded beats unload + prewarm whenever the histogram has a
    tail: the head of a timer is its period, far longer than a reload, yet each unload +
    prewarm costs one load per request (measured in the lab: benchmarks/POLICIES.md 5)."""
    histogram = arrivals.get(model)
    window = histogram.keep_window() if histogram is not None else None
    if window is None:
        return None
    return max(0.0, window.end + margin - now)


def keep_alive_over(
    arrivals: Arrivals,
    resident: CachePolicy,
    *,
    now: float,
    margin: float,
    busy: Collection[str] = (),
) -> list[str]:
    """Resident models whose predicted window ended more than ``margin`` seconds ago
    (not generating, not pinned): their keep-alive from the histogram's tail is over."""
    over = []
    for model in resident.recency():
        if model in busy or resident.is_pinned(model):
            continue
        histogram = arrivals.get(model)
        window = histogram.window() if histogram is not None else None
        if window is not None and now > window.end + margin:
            over.append(model)
    return over


def next_event(
    arrivals: Arrivals, resident: CachePolicy, margin: float, done: dict[str, float]
) -> list[float]:
    """The clock times at which ``choose`` or ``keep_alive_over`` may first answer
    differently: each window's start minus ``margin`` (not yet prewarmed) and, for
    resident models, each window's end plus ``margin``. Unsorted; may be in the past."""
    times = []
    for model, histogram in arrivals.histograms.items():
        window = histogram.window()
        if window is None:
            continue
        if model in resident:
            times.append(window.end + margin)
        elif done.get(model) != histogram.last:
            times.append(window.start - margin)
    return times
