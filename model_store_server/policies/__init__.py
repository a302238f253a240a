"""Cache policies: which models a tier of the worker keeps, and which to let go.

The worker has two tiers: **cache** (model files on its disk) and
**resident** (models loaded by llama.cpp). The store runs one policy instance
per tier, both of the configured class (``create_policy(..., tier=...)``).

- ``base``: the interface (``CachePolicy``) and the bookkeeping every policy
  shares (members, sizes, pins, time-to-live, count and byte budgets,
  ``RecencyPolicy``);
- ``recency``: ``lru``, ``no-evict``, ``ttl``, ``lru-ttl``;
- ``greedy_dual``: the cost-aware ``gdsf``, ``lfu-da``, ``gdsf-aged``, with
  ``cost_model`` (the rates the store measures on its pushes and loads);
- ``adaptive``: follows whichever of them would have cost least lately;
- ``registry``: every policy under its config name, and ``create_policy``;
- ``tiers``: both tiers' policies assembled, for the store and the lab;
- ``placement``: which worker of a fleet takes a model;
- ``arrivals``: per-model idle-time histograms, and ``prewarm``: which model to
  bring in before its request is expected, and whose keep-alive is over.

Policies never perform I/O and never log; the store carries out what they
return. Time comes from an injected clock. The interface is re-exported here
(and, for existing imports, from ``model_store_server.cache_policy``).
"""

from model_store_server.policies.adaptive import AdaptivePolicy
from model_store_server.policies.base import CacheFull, CachePolicy, Clock, RecencyPolicy, Tier
from model_store_server.policies.greedy_dual import (
    AgedGDSFPolicy,
    GDSFPolicy,
    GreedyDualPolicy,
    LFUDAPolicy,
)
from model_store_server.policies.recency import LRUPolicy, LRUTTLPolicy, NoEvictPolicy, TTLPolicy
from model_store_server.policies.registry import POLICIES, create_policy

__all__ = [
    "POLICIES",
    "AdaptivePolicy",
    "AgedGDSFPolicy",
    "CacheFull",
    "CachePolicy",
    "Clock",
    "GDSFPolicy",
    "GreedyDualPolicy",
    "LFUDAPolicy",
    "LRUPolicy",
    "LRUTTLPolicy",
    "NoEvictPolicy",
    "RecencyPolicy",
    "TTLPolicy",
    "Tier",
    "create_policy",
]
