"""Whether the store can do its job (``GET /ready``): a worker it can place requests on.

Answered by the front server's loop itself (model_swap/http_front.py), so it must be
quick and never wait: it reads the fleet's health (probed every HEALTH_INTERVAL
seconds, and marked down by a failed swap or stream) and nothing else.

With several (or discovered) workers the store is ready while at least one is
healthy, not draining and still discovered. A lone worker is never marked down
(there is nowhere else to place a request), so for it readiness asks what the
probes and calls saw: the worker was reached the last time it was asked, and the
store's view of it is synced (a worker that comes back is re-read first).
"""

from __future__ import annotations

from collections import Counter

from model_store_server.core.fleet import DOWN, HEALTHY, Fleet, WorkerNode

UNSYNCED = "unsynced"  # a lone worker that answers, while the store re-reads it


def _lone_state(node: WorkerNode) -> str:
    if not node.reachable:
        return DOWN
    if not node.view.synced:
        return UNSYNCED
    return node.state


def store_readiness(fleet: Fleet) -> tuple[bool, dict]:
    """(ready, details): ready when a worker is reachable and takes requests (healthy,
    not draining, still discovered; a lone worker also synced); details count the
    workers by state."""
    nodes = fleet.nodes
    if len(nodes) == 1 and not fleet.several:
        state = _lone_state(nodes[0])
        return state == HEALTHY, {"workers": {state: 1}}
    states = Counter(node.state for node in nodes)
    return any(node.placeable for node in nodes), {"workers": dict(states)}
