"""The lab's one result shape, shared by the simulator and the replay tool.

``summarize`` turns per-request outcomes into the JSON object both commands
print: action counts, ``evicted``, ``bytes_pushed``, ``swap_seconds`` (total
time users waited for swaps) and the wait percentiles.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from model_store_server.decision import Action

ACTIONS = (
    Action.ALREADY_LOADED,
    Action.LOAD_FROM_LOCAL_STORE,
    Action.LOAD_FROM_STORE,
    Action.REJECTED,
)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(
    actions: Iterable[str],
    *,
    evicted: int,
    unloaded: int,
    bytes_pushed: int,
    waits: Sequence[float],
) -> dict:
    """The result object: counts per action, ``hit_ratio`` (requests whose model was
    resident, over all requests: the store's and the dashboard's definition),
    ``cached_hit_ratio`` (resident or in the worker's disk cache: no push), ``misses``
    (pushes) and the waits (seconds per served request). A rejected request is no hit."""
    counts = Counter(str(action) for action in actions)
    requests = sum(counts.values())
    result = {"requests": requests}
    result.update({str(action): counts.get(str(action), 0) for action in ACTIONS})
    hits = counts.get(str(Action.ALREADY_LOADED), 0)
    cached_hits = hits + counts.get(str(Action.LOAD_FROM_LOCAL_STORE), 0)
    result.update(
        {
            "evicted": evicted,
            "unloaded": unloaded,
            "misses": counts.get(str(Action.LOAD_FROM_STORE), 0),
            "hit_ratio": round(hits / requests, 4) if requests else 0.0,
            "cached_hit_ratio": round(cached_hits / requests, 4) if requests else 0.0,
            "bytes_pushed": bytes_pushed,
            "swap_seconds": round(sum(waits), 3),
            "p50_wait_ms": round(percentile(waits, 50) * 1000, 3),
            "p95_wait_ms": round(percentile(waits, 95) * 1000, 3),
        }
    )
    return result
