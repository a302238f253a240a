"""Placement's orders with the keys in conflict: for each rank of the docstring, a worker
better on it wins even when it is worse on every later one (each test elsewhere changes
one key at a time, so a swapped pair of keys passed them all). Pure, no server."""

from __future__ import annotations

import pytest

from model_store_server.policies.placement import Candidate, place

# Rule 3 (bringing the model in), best first, as the docstring orders it: a worker that
# would refuse ranks last; the fewest models busy; the file cached; free room, then the
# fewest models taken away; their lowest priority; the shortest queue; the fleet's order.
BRING_IN = [
    ("refused", False, True),
    ("busy_models", 0, 2),
    ("cached", True, False),
    ("taken_away", 0, 2),
    ("victim_priority", 1.0, 5.0),
    ("queue", 0, 3),
    ("order", 0, 1),
]

# Rule 1 (a worker that holds the model): the fewest requests for it, the shortest queue,
# resident before incoming, the fleet's order.
HOLDERS = [
    ("model_queue", 0, 2),
    ("queue", 0, 3),
    ("resident", True, False),
    ("order", 0, 1),
]


def rivals(ranks, index: int, base: dict) -> tuple[Candidate, Candidate]:
    """Two candidates equal on the keys before ``index``, ``better`` ahead on that key and
    behind on every later one."""
    better, worse = dict(base), dict(base)
    for position, (key, good, bad) in enumerate(ranks):
        if position < index:
            better[key] = worse[key] = good
        elif position == index:
            better[key], worse[key] = good, bad
        else:
            better[key], worse[key] = bad, good
    orders = {better.pop("order", 0), worse.pop("order", 0)}
    if len(orders) == 1:  # order is an earlier key: both equal there, names still differ
        return Candidate("better", 0, **better), Candidate("worse", 0, **worse)
    order_of_better = 0 if ranks[index][0] == "order" else 1
    return (
        Candidate("better", order_of_better, **better),
        Candidate("worse", 1 - order_of_better, **worse),
    )


@pytest.mark.parametrize("index", range(len(BRING_IN)), ids=[key for key, *_ in BRING_IN])
def test_bring_in_ranks_each_key_before_every_later_one(index):
    better, worse = rivals(BRING_IN, index, {})
    assert place([worse, better]).worker == "better"
    assert place([better, worse]).worker == "better"


@pytest.mark.parametrize("index", range(len(HOLDERS)), ids=[key for key, *_ in HOLDERS])
def test_holders_rank_each_key_before_every_later_one(index):
    # "incoming" keeps a non-resident candidate a holder (rule 1 applies to both).
    better, worse = rivals(HOLDERS, index, {"incoming": True})
    assert place([worse, better]).worker == "better"
    assert place([better, worse]).worker == "better"


def test_a_second_copy_goes_by_the_same_order():
    """Replicating (rule 2) picks among the others by rule 3's order too."""
    holder = Candidate("holder", 5, resident=True, model_queue=4)
    for index in range(1, len(BRING_IN)):
        better, worse = rivals(BRING_IN, index, {})
        assert place([holder, worse, better], replicate_after=2).worker == "better"
