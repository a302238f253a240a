"""Placement's orders with the keys in conflict: for each rank of the docstring, a worker
better on it wins even when it is worse on every later one (each test elsewhere changes
one key at a time, so a swapped pair of keys passed them all). Pure, no server."""

from __future__ import annotations

import pytest

from model_store_server.policies import Tier, create_policy
from model_store_server.policies.placement import Candidate, candidate, place
from tests.conftest import FakeClock

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


# -- candidate: every field read from the tiers, with defaults, refusals and models coming ----


def lru_tiers(clock, *, cache_bytes=None, loaded_bytes=None, cache_count=5, loaded_count=5):
    return tuple(
        create_policy("lru", capacity=count, ttl=5.0, max_bytes=limit, clock=clock, tier=tier)
        for tier, count, limit in (
            (Tier.CACHE, cache_count, cache_bytes),
            (Tier.RESIDENT, loaded_count, loaded_bytes),
        )
    )


def test_a_refused_candidate_carries_the_requests_numbers():
    cache, resident = lru_tiers(FakeClock(), cache_bytes=100, loaded_bytes=50)
    numbers = {"order": 3, "queue": 4, "model_queue": 2, "busy_models": 1}
    expected = Candidate("w", 3, refused=True, queue=4, model_queue=2, busy_models=1)
    too_big_to_load = candidate("w", cache, resident, "m", size=60, footprint=60, **numbers)
    too_big_to_store = candidate("w", cache, resident, "m", size=120, footprint=10, **numbers)
    assert too_big_to_load == expected and too_big_to_store == expected
    fits = candidate("w", cache, resident, "m", size=100, footprint=50, **numbers)
    assert not fits.refused
    assert (fits.order, fits.queue, fits.model_queue, fits.busy_models) == (3, 4, 2, 1)


def test_candidate_defaults_are_a_free_model_of_no_size():
    clock = FakeClock()
    cache, resident = lru_tiers(clock, cache_bytes=10, loaded_bytes=10)
    cache.admit("x", 10)
    resident.admit("x", 10)
    assert candidate("w", cache, resident, "m") == Candidate("w", 0)
    one_byte = candidate("w", cache, resident, "m", size=1, footprint=1)
    assert one_byte.taken_away == 1


def test_the_victims_priority_is_read_from_the_tier_that_gives_each_up():
    clock = FakeClock()
    cache, resident = lru_tiers(clock, cache_count=2, loaded_count=1)
    cache.admit("a", 1)
    clock.advance(10)
    cache.admit("b", 1)
    resident.admit("b", 1)
    clock.advance(20)
    # "c" evicts "a" from the disk (idle 30 s) and unloads "b" (idle 20 s in memory).
    c = candidate("w", cache, resident, "c", size=1, footprint=1)
    assert c.taken_away == 2
    assert c.victim_priority == max(cache.priority("a"), resident.priority("b")) == -20.0
    clock.advance(30)
    resident.touch("b")  # now "b" was used just now in memory: "a" (idle 60 s) is the dearest
    c = candidate("w", cache, resident, "c", size=1, footprint=1)
    assert c.victim_priority == max(cache.priority("a"), resident.priority("b")) == 0.0
    cache, resident = lru_tiers(clock, cache_count=2, loaded_count=1)
    resident.admit("r", 1)
    clock.advance(20)
    cache.admit("a", 1)
    clock.advance(10)
    cache.admit("b", 1)
    clock.advance(10)
    # The file evicted ("a", idle 20 s) is dearer than the model unloaded ("r", 40 s).
    c = candidate("w", cache, resident, "c", size=1, footprint=1)
    assert c.victim_priority == cache.priority("a") == -20.0


def test_a_model_coming_is_that_model_not_just_its_size():
    clock = FakeClock()
    cache, resident = lru_tiers(clock, cache_count=2, loaded_count=1)
    cache.admit("x", 1)
    cache.admit("y", 1)
    resident.admit("x", 1)
    # "y" is cached: coming in only loads it (unloading "x"); "x" stays on disk.
    c = candidate("w", cache, resident, "x", size=1, footprint=1, coming=[("y", 1, 1)])
    assert (c.cached, c.resident, c.taken_away) == (True, False, 1)


def test_models_placed_but_not_yet_in_are_taken_as_admitted_first():
    clock = FakeClock()
    cache, resident = lru_tiers(clock, cache_count=2, loaded_count=1)
    cache.admit("x", 1)
    resident.admit("x", 1)
    alone = candidate("w", cache, resident, "z", size=1, footprint=1)
    assert alone.taken_away == 1  # unloads "x"; the disk has room
    coming = [("y", 1, 1)]
    after_y = candidate("w", cache, resident, "z", size=1, footprint=1, coming=coming)
    assert after_y.taken_away == 2  # "y" came in: "x" evicted from disk, "y" unloaded
    # The model itself among those coming, or one already resident, changes nothing.
    itself = candidate(
        "w", cache, resident, "z", size=1, footprint=1, coming=[*coming, ("z", 1, 1)]
    )
    assert not itself.resident and itself.taken_away == 2
    resident_one = candidate("w", cache, resident, "z", size=1, footprint=1, coming=[("x", 1, 1)])
    assert resident_one == alone
    assert cache.members() == ["x"] and resident.members() == ["x"]  # nothing changed


def test_models_coming_take_their_own_bytes():
    clock = FakeClock()
    cache, resident = lru_tiers(clock, cache_bytes=100)
    cache.admit("x", 40)
    coming = [("y", 50, 0)]
    assert candidate("w", cache, resident, "z", size=10, coming=coming).taken_away == 0
    assert candidate("w", cache, resident, "z", size=11, coming=coming).taken_away == 1
    cache, resident = lru_tiers(clock, loaded_bytes=100)
    cache.admit("x", 1)
    resident.admit("x", 40)
    coming = [("y", 0, 50)]
    assert candidate("w", cache, resident, "z", footprint=10, coming=coming).taken_away == 0
    assert candidate("w", cache, resident, "z", footprint=11, coming=coming).taken_away == 1


def test_replicas_only_when_asked_and_from_the_threshold_on():
    holder = Candidate("holder", 0, resident=True, model_queue=1)
    other = Candidate("other", 1)
    assert place([holder, other]).worker == "holder"  # replicate_after 0: never
    assert place([holder, other], replicate_after=1).worker == "other"
    assert place([holder, other], replicate_after=2).worker == "holder"
