"""The pure two-tier decision and reconciliation, without any server."""

from __future__ import annotations

import pytest

from model_store_server.decision import Action, Decision, decide, reconcile
from model_store_server.policies import POLICIES, Tier, create_policy
from tests.conftest import FakeClock


class Tiers:
    """A disk tier and a memory tier of one policy, advanced decision by decision."""

    def __init__(
        self,
        name="lru",
        *,
        capacity=2,
        loaded=1,
        ttl=5.0,
        cache_bytes=None,
        loaded_bytes=None,
        clock=None,
    ):
        clock = clock or FakeClock()
        self.clock = clock
        self.cache = create_policy(
            name, capacity=capacity, ttl=ttl, max_bytes=cache_bytes, clock=clock
        )
        self.resident = create_policy(
            name, capacity=loaded, ttl=ttl, max_bytes=loaded_bytes, clock=clock, tier=Tier.RESIDENT
        )

    def __call__(self, model, *, size=0, footprint=0, stale=False):
        outcome = decide(
            self.cache, self.resident, model, size=size, footprint=footprint, stale=stale
        )
        self.cache, self.resident = outcome.cache, outcome.resident
        return outcome.decision

    def trace(self, models):
        return [(d.action, d.evicted, d.unloaded) for d in map(self, models)]


L, LL, LS, R = (
    Action.ALREADY_LOADED,
    Action.LOAD_FROM_LOCAL_STORE,
    Action.LOAD_FROM_STORE,
    Action.REJECTED,
)


def test_lru_seed_sequence_with_one_resident_model():
    assert Tiers().trace(["A", "A", "B", "C", "A"]) == [
        (LS, (), ()),
        (L, (), ()),
        (LS, (), ("A",)),
        (LS, ("A",), ("B",)),
        (LS, ("B",), ("C",)),
    ]


def test_cached_but_not_resident_is_load_from_local_store():
    tiers = Tiers()
    tiers("A")
    tiers("B")
    d = tiers("A")
    assert (d.action, d.evicted, d.unloaded) == (LL, (), ("B",))
    assert d.takes_away == ("B",) and d.changes_worker


def test_three_resident_models_alternate_as_hits():
    tiers = Tiers(capacity=3, loaded=3)
    trace = tiers.trace(["A", "B", "C"] * 3)
    assert [t[0] for t in trace] == [LS, LS, LS] + [L] * 6
    assert all(t[1:] == ((), ()) for t in trace)
    assert tiers.resident.members() == ["A", "B", "C"]


def test_memory_budget_in_bytes_unloads_least_recently_used():
    tiers = Tiers(capacity=3, loaded=3, loaded_bytes=100)
    tiers("A", footprint=40)
    tiers("B", footprint=40)
    d = tiers("C", footprint=40)
    assert (d.action, d.evicted, d.unloaded) == (LS, (), ("A",))
    d = tiers("A", footprint=40)
    assert (d.action, d.unloaded) == (LL, ("B",))
    assert tiers.resident.members() == ["C", "A"]


def test_disk_budget_in_bytes_evicts_and_the_evicted_is_not_also_unloaded():
    tiers = Tiers(capacity=5, loaded=2, cache_bytes=100)
    tiers("A", size=60)
    tiers("B", size=30)
    d = tiers("C", size=50)
    assert (d.action, d.evicted, d.unloaded) == (LS, ("A",), ())
    assert tiers.cache.members() == ["B", "C"]
    assert tiers.resident.members() == ["B", "C"]


def test_no_evict_rejects_without_changing_anything():
    tiers = Tiers("no-evict")
    tiers("A")
    tiers("B")
    d = tiers("C")
    assert d.action is R and d.evicted == () and d.unloaded == ()
    assert d.model == "C"  # the refused model is named (logs, the 503's message)
    assert "cache is full (2/2 models)" in d.reason
    assert not d.changes_worker
    assert tiers.cache.members() == ["A", "B"]
    assert tiers("A").action is LL  # a cached model can always be swapped in


def test_memory_tier_full_of_pinned_models_rejects():
    tiers = Tiers(capacity=3, loaded=1)
    tiers("A")
    tiers.resident.pin("A")
    d = tiers("B")
    assert d.action is R and "pinned: A" in d.reason
    assert tiers.cache.members() == ["A"]  # B was not admitted to the disk either


def test_ttl_sweep_before_hit_reloads_expired_model():
    tiers = Tiers("ttl")
    tiers("A")
    tiers.clock.advance(6)
    d = tiers("A")
    assert (d.action, d.evicted, d.unloaded) == (LS, ("A",), ())


def test_hit_with_other_expired_members_keeps_resident():
    tiers = Tiers("ttl", loaded=2)
    tiers("A")
    tiers.clock.advance(3)
    tiers("B")
    tiers.clock.advance(3)  # A idle 6s, B idle 3s
    d = tiers("B")
    assert (d.action, d.evicted, d.unloaded) == (L, ("A",), ())
    assert d.changes_worker and d.takes_away == ("A",)


def test_resident_expiry_unloads_but_keeps_the_file():
    tiers = Tiers("lru", capacity=3, loaded=3)
    tiers("A")
    tiers("B")
    tiers.resident.set_ttl("A", 0.5)  # a keep_alive of 0.5 s
    tiers.clock.advance(1)
    d = tiers("B")
    assert (d.action, d.evicted, d.unloaded) == (L, (), ("A",))
    assert tiers.cache.members() == ["A", "B"]


def test_stale_copy_is_evicted_and_pushed_again():
    tiers = Tiers(capacity=3, loaded=2)
    tiers("A")
    tiers("B")
    d = tiers("A", stale=True)
    assert (d.action, d.evicted, d.unloaded) == (LS, ("A",), ())
    assert d.touches == frozenset({"A"})


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_rejected_decision_leaves_the_callers_policies_untouched(name):
    tiers = Tiers(name, capacity=1, loaded=1, cache_bytes=10)
    tiers("A", size=5)
    before = (tiers.cache.members(), tiers.resident.members())
    outcome = decide(tiers.cache, tiers.resident, "B", size=50)
    assert outcome.decision.action is R
    assert outcome.cache is tiers.cache and outcome.resident is tiers.resident
    assert (tiers.cache.members(), tiers.resident.members()) == before


def test_headers_name_both_tiers():
    tiers = Tiers()
    tiers("A")
    assert tiers("B").headers() == {
        "X-Cache-Action": "load_from_store",
        "X-Evicted": "",
        "X-Unloaded": "A",
    }


def test_headers_list_several_models_comma_separated_in_order():
    decision = Decision("C", Action.LOAD_FROM_STORE, evicted=("A", "B"), unloaded=("D", "E"))
    assert decision.headers() == {
        "X-Cache-Action": "load_from_store",
        "X-Evicted": "A,B",
        "X-Unloaded": "D,E",
    }


# -- reconciling with the worker's report ----------------------------------------------


def test_reconcile_drops_members_the_worker_lost():
    tiers = Tiers()
    tiers("A")
    tiers("B")
    to_delete, to_unload = reconcile(tiers.cache, tiers.resident, {"B": 1}, {})
    assert (to_delete, to_unload) == ([], [])
    assert tiers.cache.members() == ["B"] and tiers.resident.members() == []


def test_reconcile_adopts_worker_files_resident_last_and_enforces_capacity():
    tiers = Tiers(capacity=2)
    to_delete, to_unload = reconcile(
        tiers.cache, tiers.resident, {"A": 1, "B": 1, "C": 1}, {"A": 10}
    )
    assert to_delete == ["B"] and to_unload == []
    assert tiers.cache.members() == ["C", "A"]
    assert tiers.resident.members() == ["A"]
    assert tiers.resident.size_of("A") == 10


def test_reconcile_unloads_beyond_the_memory_budget():
    tiers = Tiers(capacity=3, loaded=2)
    to_delete, to_unload = reconcile(
        tiers.cache, tiers.resident, {"A": 1, "B": 1, "C": 1}, {"A": 1, "B": 1, "C": 1}
    )
    assert to_delete == [] and to_unload == ["A"]
    assert tiers.resident.members() == ["B", "C"]


def test_reconcile_no_evict_refuses_extra_files():
    tiers = Tiers("no-evict", capacity=1)
    to_delete, to_unload = reconcile(tiers.cache, tiers.resident, {"A": 1, "B": 1}, {})
    assert to_delete == ["B"] and to_unload == []
    assert tiers.cache.members() == ["A"]


def test_reconcile_never_unloads_a_model_it_keeps():
    tiers = Tiers(capacity=3, loaded=1)
    tiers("B")
    to_delete, to_unload = reconcile(
        tiers.cache, tiers.resident, {"A": 1, "B": 1}, {"A": 1, "B": 1}
    )
    assert to_unload == ["A"] and tiers.resident.members() == ["B"]


def test_a_new_version_of_a_pinned_model_stays_pinned():
    tiers = Tiers(capacity=3, loaded=2)
    tiers("A")
    tiers.cache.pin("A")
    tiers.resident.pin("A")
    d = tiers("A", stale=True)
    assert d.evicted == ("A",) and tiers.cache.is_pinned("A") and tiers.resident.is_pinned("A")


def test_a_stale_copy_in_memory_is_loaded_again_and_an_unpinned_one_stays_unpinned():
    tiers = Tiers(capacity=2, loaded=2)
    tiers("A")
    d = tiers("A", stale=True)
    assert d.action is Action.LOAD_FROM_STORE and d.evicted == ("A",) and d.unloaded == ()
    assert tiers.resident.members() == ["A"]
    assert not tiers.cache.is_pinned("A") and not tiers.resident.is_pinned("A")


def test_a_file_evicted_for_room_leaves_memory_too():
    tiers = Tiers(capacity=1, loaded=2)
    tiers("A")
    d = tiers("B")
    assert d.evicted == ("A",) and d.unloaded == ()  # listed once, as evicted
    assert tiers.cache.members() == ["B"] and tiers.resident.members() == ["B"]


def test_expired_lists_files_and_memory_whose_time_was_up():
    tiers = Tiers("lru-ttl", capacity=3, loaded=3, ttl=5.0)
    tiers("A")
    tiers.clock.advance(3)
    tiers("B")
    tiers.resident.set_ttl("B", 1.0)  # B's keep_alive: 1 s in memory
    tiers.clock.advance(3)  # A's file idle 6 s (past 5), B idle in memory 3 s (past 1)
    d = tiers("C")
    assert d.evicted == ("A",) and d.unloaded == ("B",)
    assert d.expired == ("A", "B")
    assert tiers.cache.members() == ["B", "C"] and tiers.resident.members() == ["C"]


def test_sizes_default_to_nothing():
    tiers = Tiers(capacity=3, loaded=3, cache_bytes=1, loaded_bytes=1)
    for model in ("A", "B"):
        outcome = decide(tiers.cache, tiers.resident, model)
        tiers.cache, tiers.resident = outcome.cache, outcome.resident
        assert outcome.decision.evicted == () and outcome.decision.unloaded == ()
    assert tiers.cache.members() == ["A", "B"] and tiers.resident.members() == ["A", "B"]


def test_reconcile_adopts_files_by_their_sizes_within_the_byte_budget():
    tiers = Tiers("no-evict", capacity=3, cache_bytes=100)
    to_delete, to_unload = reconcile(tiers.cache, tiers.resident, {"A": 60, "B": 60}, {})
    assert to_delete == ["B"] and to_unload == []  # B does not fit beside A: refused
    assert tiers.cache.members() == ["A"] and tiers.cache.size_of("A") == 60
    tiers = Tiers("lru", capacity=3, cache_bytes=100)
    to_delete, _ = reconcile(tiers.cache, tiers.resident, {"A": 60, "B": 30}, {})
    assert to_delete == [] and [tiers.cache.size_of(m) for m in ("A", "B")] == [60, 30]


def test_reconcile_adopts_memory_by_its_footprint_within_the_byte_budget():
    tiers = Tiers("lru", capacity=3, loaded=3, loaded_bytes=100)
    tiers.cache.admit("P", 1)
    tiers.resident.admit("P", 50)
    tiers.resident.pin("P")  # cannot be unloaded to make room
    to_delete, to_unload = reconcile(
        tiers.cache, tiers.resident, {"P": 1, "A": 1, "B": 1}, {"P": 50, "A": 40, "B": 20}
    )
    assert to_delete == [] and to_unload == ["A"]  # 50 + 40 + 20 > 100: A is the oldest
    assert tiers.resident.members() == ["P", "B"] and tiers.resident.size_of("B") == 20


def test_reconcile_unloads_a_model_whose_file_the_worker_lost():
    tiers = Tiers(capacity=2, loaded=2)
    tiers("A")
    to_delete, to_unload = reconcile(tiers.cache, tiers.resident, {}, {"A": 1})
    assert (to_delete, to_unload) == ([], ["A"])
    assert tiers.cache.members() == [] and tiers.resident.members() == []
    to_delete, to_unload = reconcile(tiers.cache, tiers.resident, {}, {"X": 5})
    assert (to_delete, to_unload) == ([], ["X"])


def test_reconcile_keeps_every_refused_file_while_admitting_later_ones():
    tiers = Tiers("no-evict", capacity=5, cache_bytes=100)
    to_delete, _ = reconcile(tiers.cache, tiers.resident, {"A": 60, "B": 60, "C": 30}, {})
    assert to_delete == ["B"]  # C fits beside A after B was refused
    assert tiers.cache.members() == ["A", "C"]


def test_reconcile_unloads_a_model_that_does_not_fit_beside_pinned_ones():
    tiers = Tiers("lru", capacity=3, loaded=3, loaded_bytes=100)
    tiers.cache.admit("P", 1)
    tiers.resident.admit("P", 50)
    tiers.resident.pin("P")
    to_delete, to_unload = reconcile(
        tiers.cache, tiers.resident, {"P": 1, "A": 1}, {"P": 50, "A": 60}
    )
    assert (to_delete, to_unload) == ([], ["A"])
    assert tiers.resident.members() == ["P"]


def test_reconcile_keeps_the_tiers_own_order_for_models_they_hold():
    tiers = Tiers(capacity=3, loaded=2)
    tiers("A")
    tiers("B")  # A is the least recently used here
    reconcile(tiers.cache, tiers.resident, {"A": 1, "B": 1}, {"B": 1, "A": 1})
    assert tiers.resident.members() == ["A", "B"]
