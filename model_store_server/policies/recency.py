"""The recency policies: ``lru``, ``no-evict``, ``ttl`` and ``lru-ttl``.

Each is ``RecencyPolicy`` (``base.py``) with its bounds switched on or off:
a count bound evicting the least recently used, a time-to-live swept by
``expire``, both, or a count bound that refuses instead of evicting.
"""

from __future__ import annotations

from model_store_server.policies.base import RecencyPolicy


class LRUPolicy(RecencyPolicy):
    """At most ``capacity`` members; admitting one more evicts the least recently used."""

    name = "lru"
    uses_ttl = False


class NoEvictPolicy(RecencyPolicy):
    """Admits until ``capacity`` members, then refuses every new model."""

    name = "no-evict"
    uses_ttl = False
    refuses_when_full = True


class TTLPolicy(RecencyPolicy):
    """No capacity bound; a member idle for ``ttl`` seconds is evicted at the next sweep."""

    name = "ttl"
    uses_capacity = False


class LRUTTLPolicy(RecencyPolicy):
    """Both bounds: at most ``capacity`` members, and none idle for ``ttl`` seconds."""

    name = "lru-ttl"
