"""Placement (``model_store_server/policies/placement.py``): one test per rule of its
docstring on hand-made candidates, then ``candidate`` on real tiers. No server."""

from __future__ import annotations

from model_store_server.policies import Tier, create_policy
from model_store_server.policies.placement import Candidate, candidate, place


def chosen(*candidates: Candidate, replicate_after: int = 0) -> str:
    return place(candidates, replicate_after=replicate_after).worker


# -- place: the rules, in the docstring's order -------------------------------------------------


def test_no_candidate_places_nowhere():
    assert place([]) is None


def test_a_worker_where_the_model_is_resident_comes_first():
    assert chosen(Candidate("w0", 0, cached=True), Candidate("w1", 1, resident=True)) == "w1"


def test_incoming_counts_as_holding_the_model():
    assert chosen(Candidate("w0", 0, cached=True), Candidate("w1", 1, incoming=True)) == "w1"


def test_resident_before_incoming_at_equal_queues():
    assert chosen(Candidate("w0", 0, incoming=True), Candidate("w1", 1, resident=True)) == "w1"


def test_replicas_spread_by_the_requests_for_the_model():
    busy = Candidate("w0", 0, resident=True, model_queue=3, queue=3)
    quiet = Candidate("w1", 1, resident=True, model_queue=1, queue=5)
    assert chosen(busy, quiet) == "w1"  # fewer for this model, though a longer queue


def test_replicas_at_equal_requests_for_the_model_go_to_the_shorter_queue():
    assert (
        chosen(
            Candidate("w0", 0, resident=True, model_queue=1, queue=4),
            Candidate("w1", 1, resident=True, model_queue=1, queue=2),
        )
        == "w1"
    )


def test_replicate_after_brings_a_second_copy_elsewhere():
    holder = Candidate("w0", 0, resident=True, model_queue=2, queue=2)
    other = Candidate("w1", 1)
    assert chosen(holder, other) == "w0"  # replicate_after=0: never
    assert chosen(holder, other, replicate_after=3) == "w0"  # not yet crowded
    assert chosen(holder, other, replicate_after=2) == "w1"


def test_replicate_after_needs_every_holder_crowded():
    crowded = Candidate("w0", 0, resident=True, model_queue=2)
    spare = Candidate("w1", 1, resident=True, model_queue=1)
    assert chosen(crowded, spare, Candidate("w2", 2), replicate_after=2) == "w1"


def test_replicate_after_with_no_other_worker_stays_on_the_holder():
    holder = Candidate("w0", 0, resident=True, model_queue=5)
    refusing = Candidate("w1", 1, refused=True)
    assert chosen(holder, refusing, replicate_after=2) == "w0"


def test_the_second_copy_goes_where_bringing_it_in_costs_least():
    holder = Candidate("w0", 0, resident=True, model_queue=2)
    evicts = Candidate("w1", 1, taken_away=1)
    cached = Candidate("w2", 2, cached=True, taken_away=1)
    assert chosen(holder, evicts, cached, replicate_after=2) == "w2"


def test_cached_before_free_room():
    assert chosen(Candidate("w0", 0), Candidate("w1", 1, cached=True, taken_away=1)) == "w1"


def test_free_room_before_evictions():
    assert (
        chosen(Candidate("w0", 0, taken_away=1, victim_priority=-100), Candidate("w1", 1)) == "w1"
    )


def test_fewer_victims_first():
    assert chosen(Candidate("w0", 0, taken_away=2), Candidate("w1", 1, taken_away=1)) == "w1"


def test_lower_victim_priority_first():
    assert (
        chosen(
            Candidate("w0", 0, taken_away=1, victim_priority=5.0),
            Candidate("w1", 1, taken_away=1, victim_priority=2.0),
        )
        == "w1"
    )


def test_shorter_queue_first():
    assert chosen(Candidate("w0", 0, queue=3), Candidate("w1", 1, queue=1)) == "w1"


def test_fleet_order_breaks_the_last_tie():
    assert chosen(Candidate("w1", 1), Candidate("w0", 0)) == "w0"


def test_a_refusing_worker_ranks_last():
    refusing = Candidate("w0", 0, refused=True, cached=True)
    assert chosen(refusing, Candidate("w1", 1, taken_away=3, queue=9)) == "w1"
    assert chosen(Candidate("w0", 0, resident=True, refused=True), Candidate("w1", 1)) == "w1"
    # When every worker refuses, one is still named (it answers the refusal).
    assert chosen(refusing, Candidate("w1", 1, refused=True)) == "w0"


# -- candidate: a worker's own tiers through decide ----------------------------------------------


def tiers(policy: str = "lru", cache_size: int = 1, loaded: int = 1, clock=lambda: 0.0):
    return tuple(
        create_policy(policy, capacity=capacity, ttl=5.0, clock=clock, tier=tier)
        for tier, capacity in ((Tier.CACHE, cache_size), (Tier.RESIDENT, loaded))
    )


def test_candidate_reads_resident_cached_and_victims_from_the_tiers():
    cache, resident = tiers(cache_size=2)
    cache.admit("a", 10)
    cache.admit("b", 10)
    resident.admit("a", 10)
    assert candidate("w", cache, resident, "a", size=10, footprint=10).resident
    on_disk = candidate("w", cache, resident, "b", size=10, footprint=10)
    assert (on_disk.resident, on_disk.cached, on_disk.taken_away) == (False, True, 1)
    new = candidate("w", cache, resident, "c", size=10, footprint=10)
    assert (new.cached, new.taken_away) == (False, 1)  # "a" evicted: its file and its load
    assert cache.members() == ["a", "b"] and resident.members() == ["a"]  # nothing changed


def test_candidate_is_refused_by_a_full_no_evict_worker_or_a_model_too_large():
    cache, resident = tiers("no-evict")
    cache.admit("a", 10)
    resident.admit("a", 10)
    assert candidate("w", cache, resident, "b", size=10, footprint=10).refused
    assert not candidate("w", cache, resident, "a", size=10, footprint=10).refused
    cache, resident = (
        create_policy("lru", capacity=2, ttl=5.0, max_bytes=100, tier=tier)
        for tier in (Tier.CACHE, Tier.RESIDENT)
    )
    assert candidate("w", cache, resident, "big", size=101, footprint=101).refused


def test_candidate_carries_queue_and_incoming_through():
    cache, resident = tiers()
    c = candidate("w", cache, resident, "a", order=2, queue=4, model_queue=1, incoming=True)
    assert (c.order, c.queue, c.model_queue, c.holds) == (2, 4, 1, True)


def test_fewer_busy_models_before_a_cached_file():
    # A burst: the worker already busy with two other models loses to one busy with one,
    # even though it caches the file (each busy model is a group served in turn).
    crowded = Candidate("w0", 0, cached=True, busy_models=2, queue=2)
    lighter = Candidate("w1", 1, taken_away=1, busy_models=1, queue=3)
    assert chosen(crowded, lighter) == "w1"
    # Idle workers: the cached file decides as before.
    assert chosen(Candidate("w0", 0, cached=True), Candidate("w1", 1)) == "w0"
