"""Placement: which worker serves a request for a model (pure; the store and the lab).

Each available worker is described as a ``Candidate`` (``candidate`` builds
one from that worker's own tiers through ``decide``, the function its view
would run), and ``place`` picks one:

1. a worker where the model is resident, or already coming in (requests for
   it wait there, so its push or load is under way): of those, the one with
   the fewest requests for the model, then the shortest queue (hits spread
   over replicas);
2. unless those requests number at least ``replicate_after`` (> 0) on every
   such worker: then one more copy is brought in elsewhere, by rule 3;
3. else the worker with the fewest models busy (running, waiting or placed
   there: each is a group served in turn), so that a burst over several
   models spreads instead of queueing behind one worker; among those, a
   worker where the file is cached; else the one where bringing it in costs
   least: free room first, then the fewest models taken away, then the
   cheapest of them by that worker's policy's own priorities (lower goes
   sooner), then the shortest queue, then the worker's order.

A worker's tiers are read as they will be once the models already placed
there (``coming``) are in. A worker whose policy would refuse the model
ranks last. Nothing here does I/O, logs or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from model_store_server.decision import Action, decide
from model_store_server.policies import CachePolicy


@dataclass(frozen=True)
class Candidate:
    """One available worker as placement sees it, for one model."""

    worker: str  # its id (the store: host:port)
    order: int = 0  # its position in the fleet (the last tie-break)
    resident: bool = False  # the model is loaded there
    incoming: bool = False  # requests for the model already wait there
    cached: bool = False  # the model's file is on its disk
    taken_away: int = 0  # models bringing it in would evict or unload
    victim_priority: float = 0.0  # the highest policy priority among them (lower: cheaper)
    refused: bool = False  # its policy would reject the model
    queue: int = 0  # requests running or waiting there
    model_queue: int = 0  # of those, for this model
    busy_models: int = 0  # models with requests running, waiting or placed there

    @property
    def holds(self) -> bool:
        return self.resident or self.incoming


def candidate(
    worker: str,
    cache: CachePolicy,
    resident: CachePolicy,
    model: str,
    *,
    size: int = 0,
    footprint: int = 0,
    order: int = 0,
    queue: int = 0,
    model_queue: int = 0,
    busy_models: int = 0,
    incoming: bool = False,
    coming: Iterable[tuple[str, int, int]] = (),
) -> Candidate:
    """Describe one worker for ``model`` from its tiers (never changed: copies are used).

    ``coming``: (model, size, footprint) of the other models placed on this
    worker that its tiers do not hold yet; they are taken as admitted first.
    """
    if not (cache.fits(size) and resident.fits(footprint)):
        return Candidate(
            worker,
            order,
            refused=True,
            queue=queue,
            model_queue=model_queue,
            busy_models=busy_models,
        )
    for other, other_size, other_footprint in coming:
        if other != model and other not in resident:
            ahead = decide(cache, resident, other, size=other_size, footprint=other_footprint)
            cache, resident = ahead.cache, ahead.resident
    decision = decide(cache, resident, model, size=size, footprint=footprint).decision
    priorities = [_priority(cache, name) for name in decision.evicted]
    priorities += [_priority(resident, name) for name in decision.unloaded]
    return Candidate(
        worker,
        order,
        resident=decision.action is Action.ALREADY_LOADED,
        incoming=incoming,
        cached=decision.action in (Action.ALREADY_LOADED, Action.LOAD_FROM_LOCAL_STORE),
        taken_away=len(decision.takes_away),
        victim_priority=max(priorities, default=0.0),
        refused=decision.action is Action.REJECTED,
        queue=queue,
        model_queue=model_queue,
        busy_models=busy_models,
    )


def _priority(tier: CachePolicy, name: str) -> float:
    """``name``'s rank in the eviction order of ``tier``, the tier that gives it up."""
    if name in tier and hasattr(tier, "priority"):
        return float(tier.priority(name))
    return 0.0


def bring_in_key(c: Candidate) -> tuple:
    """How dear it is to bring the model onto ``c`` (rule 3; lower is better)."""
    return (
        c.refused,
        c.busy_models,
        not c.cached,
        c.taken_away > 0,
        c.taken_away,
        c.victim_priority,
        c.queue,
        c.order,
    )


def place(candidates: Sequence[Candidate], *, replicate_after: int = 0) -> Candidate | None:
    """The worker that serves the request (None when there is no candidate)."""
    if not candidates:
        return None
    holders = [c for c in candidates if c.holds and not c.refused]
    if holders:
        best = min(holders, key=lambda c: (c.model_queue, c.queue, not c.resident, c.order))
        others = [c for c in candidates if not c.holds and not c.refused]
        crowded = replicate_after > 0 and best.model_queue >= replicate_after
        if not (crowded and others):
            return best
        return min(others, key=bring_in_key)
    return min(candidates, key=bring_in_key)
