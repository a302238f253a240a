"""Whether the store can do its job (``GET /ready``): a worker it can place requests on.

Answered by the front server's loop itself (model_swap/http_front.py), so it must be
quick and never wait: it reads the fleet's health (probed every HEALTH_INTERVAL
seconds, and marked down by a failed swap or stream) and nothing else.
"""

from __future__ import annotations

from collections import Counter

from model_store_server.core.fleet import Fleet


def store_readiness(fleet: Fleet) -> tuple[bool, dict]:
    """(ready, details): ready when at least one worker is reachable and takes requests
    (healthy, not draining, still discovered); details count the workers by state."""
    nodes = fleet.nodes
    states = Counter(node.state for node in nodes)
    return any(node.placeable for node in nodes), {"workers": dict(states)}
