"""Every cache policy under its config name, and ``create_policy`` to build one for a tier.

The recency policies (``recency.py``) are registered with the cost-aware
``gdsf``, ``lfu-da`` and ``gdsf-aged`` (``greedy_dual.py``) and ``adaptive``
(``adaptive.py``, which follows whichever of them would have cost least
lately).
"""

from __future__ import annotations

import time

from model_store_server.policies.adaptive import EXPERTS, AdaptivePolicy
from model_store_server.policies.base import Clock, RecencyPolicy, Tier
from model_store_server.policies.cost_model import CostModel
from model_store_server.policies.greedy_dual import (
    DEFAULT_FREQ_HALF_LIFE_S,
    AgedGDSFPolicy,
    GDSFPolicy,
    GreedyDualPolicy,
    LFUDAPolicy,
)
from model_store_server.policies.recency import LRUPolicy, LRUTTLPolicy, NoEvictPolicy, TTLPolicy

POLICIES: dict[str, type[RecencyPolicy]] = {
    cls.name: cls
    for cls in (
        LRUPolicy,
        NoEvictPolicy,
        TTLPolicy,
        LRUTTLPolicy,
        GDSFPolicy,
        LFUDAPolicy,
        AgedGDSFPolicy,
        AdaptivePolicy,
    )
}


def create_policy(
    name: str,
    *,
    capacity: int,
    ttl: float,
    max_bytes: int | None = None,
    clock: Clock = time.monotonic,
    tier: Tier = Tier.CACHE,
    cost_model: CostModel | None = None,
    freq_half_life: float | None = DEFAULT_FREQ_HALF_LIFE_S,
) -> RecencyPolicy:
    """Build the policy registered as ``name`` for ``tier``.

    On the disk tier each policy uses the bounds it is defined by (``ttl`` has
    no count bound, ``lru`` no time bound, ``no-evict`` refuses when full). On
    the resident tier every policy keeps at most ``capacity`` models and
    unloads to make room (refusing is for files: a cached model can always be
    swapped in), with the policy's time bound. ``max_bytes`` (None or 0: no
    bound) applies to both tiers and every policy. ``cost_model`` feeds the
    cost-aware policies (``gdsf``), one model shared by both tiers.
    ``freq_half_life`` (seconds) is ``gdsf-aged``'s. ``adaptive`` gets one
    ghost of each of its experts, built here with the same arguments.
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown cache policy {name!r} (valid: {', '.join(POLICIES)})") from None
    resident = tier is Tier.RESIDENT
    extra = {}
    if issubclass(cls, AdaptivePolicy):
        cost_model = cost_model or CostModel()  # one for the tier and its ghosts
    if issubclass(cls, GreedyDualPolicy | AdaptivePolicy):
        extra = {"cost_model": cost_model, "tier": tier}
    if issubclass(cls, AgedGDSFPolicy):
        extra["half_life"] = freq_half_life
    if issubclass(cls, AdaptivePolicy):
        shared = dict(capacity=capacity, ttl=ttl, max_bytes=max_bytes, clock=clock, tier=tier)
        extra["experts"] = {
            expert: create_policy(
                expert, **shared, cost_model=cost_model, freq_half_life=freq_half_life
            )
            for expert in EXPERTS
        }
    return cls(
        capacity=capacity if (cls.uses_capacity or resident) else None,
        ttl=ttl if cls.uses_ttl else None,
        max_bytes=max_bytes or None,
        clock=clock,
        refuses=cls.refuses_when_full and not resident,
        **extra,
    )
