"""``build_tiers``: the worker's two tiers as the settings ask, for the store and the simulator.

One construction, so the simulator's tiers are the store's: the policy named
by CACHE_POLICY, its TTL, the disk tier bounded by MAX_CACHE_SIZE and
MAX_CACHE_BYTES, the resident tier by MAX_LOADED_MODELS and MAX_LOADED_BYTES.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from model_store_server.policies import CachePolicy, Tier, create_policy
from model_store_server.policies.cost_model import CostModel

if TYPE_CHECKING:
    from model_store_server.config import StoreSettings


def build_tiers(
    settings: StoreSettings, clock: Callable[[], float], cost: CostModel
) -> tuple[CachePolicy, CachePolicy]:
    """(disk tier, resident tier) for ``settings``, timed by ``clock``, costed by ``cost``."""
    cache, resident = (
        create_policy(
            settings.cache_policy,
            ttl=settings.ttl_seconds,
            clock=clock,
            tier=tier,
            cost_model=cost,
            **settings.tier_bounds(tier),
        )
        for tier in (Tier.CACHE, Tier.RESIDENT)
    )
    return cache, resident
