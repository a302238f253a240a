"""The fleet simulator: a trace over several workers behind one store, placed as the store places.

Each worker has its own two tiers, built as the store builds them
(``simulate.SimWorker``). Each request is placed on one worker, then served
there exactly as ``simulate`` serves it (``decide``, the same cost model and
accounting). Placement ``locality`` is the store's own pure ``place`` over a
``candidate`` per worker (``model_store_server/policies/placement.py``);
``random`` picks a worker uniformly at random (seeded), the baseline it is
compared with. Requests are sequential, as one client sends them: no
queues, nothing incoming. With one worker the result is ``simulate``'s.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from model_store_server.policies.cost_model import CostModel
from model_store_server.policies.placement import candidate, place
from model_swap_lab.simulate import (
    SimClock,
    SimConfig,
    SimWorker,
    next_use_for,
    result_object,
)
from model_swap_lab.trace import Request

PLACEMENTS = ("locality", "random")


def simulate_fleet(
    requests: Sequence[Request],
    sizes: dict[str, int],
    config: SimConfig,
    *,
    workers: int,
    placement: str = "locality",
    seed: int = 0,
    cost: CostModel | None = None,
    footprints: dict[str, int] | None = None,
) -> dict:
    """Run ``requests`` over ``workers`` workers, each with ``config``'s tiers.

    Returns ``simulate``'s result object (totals over the fleet) plus
    ``workers``, ``placement`` and ``per_worker``: for each worker (in fleet
    order) its ``requests``, ``loads`` (swaps in: from the store or from its
    disk), ``misses`` (pushes) and ``bytes_pushed``, and with ``adaptive`` its
    ``experts``. ``seed`` seeds ``random`` placement only.
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, not {workers}")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r} (valid: {', '.join(PLACEMENTS)})")
    cost = cost or CostModel()
    footprints = footprints or {}
    clock = SimClock()
    next_use = next_use_for(config, requests)  # belady: each worker looks at the whole trace
    fleet = [SimWorker(config, clock, cost, next_use) for _ in range(workers)]
    rng = random.Random(seed)
    for index, request in enumerate(requests):
        if next_use is not None:
            next_use.index = index
        clock.now = request.timestamp
        size = sizes[request.model]
        footprint = footprints.get(request.model, size)
        if placement == "random":
            chosen = rng.randrange(workers)
        else:
            chosen = place(
                [
                    candidate(
                        str(order),
                        worker.cache,
                        worker.resident,
                        request.model,
                        size=size,
                        footprint=footprint,
                        order=order,
                    )
                    for order, worker in enumerate(fleet)
                ]
            ).order
        fleet[chosen].serve(request, size, footprint)
    if requests:
        for worker in fleet:
            worker.meter(max(clock.now, requests[-1].timestamp))
    result = result_object(fleet, config, cost)
    result["workers"] = workers
    result["placement"] = placement
    result["per_worker"] = [_worker_figures(worker) for worker in fleet]
    return result


def _worker_figures(worker: SimWorker) -> dict:
    summary = worker.summary()
    figures = {
        "requests": summary["requests"],
        "loads": summary["load_from_store"] + summary["load_from_local_store"],
        "misses": summary["misses"],
        "bytes_pushed": summary["bytes_pushed"],
    }
    if hasattr(worker.cache, "standings"):
        figures["experts"] = worker.cache.standings()
    return figures
