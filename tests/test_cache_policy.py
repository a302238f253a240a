"""Cache policies: one conformance suite over every registered policy, then per-policy traces."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from model_store_server.policies import (
    POLICIES,
    AdaptivePolicy,
    CacheFull,
    CachePolicy,
    Tier,
    create_policy,
)
from model_store_server.policies import (
    GreedyDualPolicy as GreedyDual,
)
from model_store_server.policies.base import RecencyPolicy
from tests.conftest import FakeClock, example_counts

CAPACITY = 2
TTL = 5.0


def make(name: str, clock: FakeClock | None = None, *, tier=Tier.CACHE, max_bytes=None):
    return create_policy(
        name, capacity=CAPACITY, ttl=TTL, clock=clock or FakeClock(), tier=tier, max_bytes=max_bytes
    )


# -- conformance: every policy ------------------------------------------------------------


@pytest.fixture(params=sorted(POLICIES))
def policy_name(request) -> str:
    return request.param


def test_registry_names_match_config_names():
    assert sorted(POLICIES) == [
        "adaptive",
        "gdsf",
        "gdsf-aged",
        "lfu-da",
        "lru",
        "lru-ttl",
        "no-evict",
        "ttl",
    ]


def test_unknown_policy_lists_valid_names():
    with pytest.raises(ValueError, match="valid: lru, no-evict, ttl, lru-ttl"):
        create_policy("fifo", capacity=2, ttl=5)


def test_implements_protocol(policy_name):
    policy = make(policy_name)
    assert isinstance(policy, CachePolicy)
    assert policy.name == policy_name


def test_starts_empty(policy_name):
    policy = make(policy_name)
    assert policy.members() == []
    assert len(policy) == 0
    assert "a" not in policy


def test_admit_adds_member_without_victims(policy_name):
    policy = make(policy_name)
    assert policy.admit("a") == []
    assert "a" in policy
    assert policy.members() == ["a"]


def test_admit_existing_member_is_a_touch(policy_name):
    clock = FakeClock()
    policy = make(policy_name, clock)
    policy.admit("a")
    policy.admit("b")
    clock.advance(1)
    assert policy.admit("a") == []
    assert policy.members() == ["b", "a"]
    assert policy.idle_seconds("a") == 0


def test_touch_moves_to_most_recent(policy_name):
    policy = make(policy_name)
    policy.admit("a")
    policy.admit("b")
    policy.touch("a")
    assert policy.members() == ["b", "a"]


def test_touch_unknown_raises(policy_name):
    with pytest.raises(KeyError):
        make(policy_name).touch("ghost")


def test_discard(policy_name):
    policy = make(policy_name)
    policy.admit("a")
    assert policy.discard("a") is True
    assert policy.discard("a") is False
    assert policy.members() == []


def test_can_admit_does_not_change_anything(policy_name):
    policy = make(policy_name)
    policy.admit("a")
    policy.admit("b")
    before = policy.members()
    policy.can_admit("c")
    assert policy.members() == before


def test_idle_seconds_follows_clock(policy_name):
    clock = FakeClock()
    policy = make(policy_name, clock)
    policy.admit("a")
    clock.advance(1.5)
    assert policy.idle_seconds("a") == pytest.approx(1.5)


def test_bounds_are_the_ones_the_policy_uses(policy_name):
    policy = make(policy_name)
    counted = ("lru", "no-evict", "lru-ttl", "gdsf", "lfu-da", "gdsf-aged", "adaptive")
    assert (policy.capacity is not None) == (policy_name in counted)
    assert (policy.ttl is not None) == (policy_name in ("ttl", "lru-ttl"))


def test_never_exceeds_capacity(policy_name):
    policy = make(policy_name)
    for name in "abcdef":
        if policy.can_admit(name):
            policy.admit(name)
        if policy.capacity is not None:
            assert len(policy) <= policy.capacity


def test_refused_admission_changes_nothing(policy_name):
    policy = make(policy_name)
    for name in "abcdef":
        before = policy.members()
        if policy.can_admit(name):
            policy.admit(name)
        else:
            with pytest.raises(CacheFull):
                policy.admit(name)
            assert policy.members() == before


# -- both tiers: bytes, pins, per-member time-to-live -------------------------------------


RECENCY_POLICIES = sorted(
    name for name, cls in POLICIES.items() if not issubclass(cls, GreedyDual | AdaptivePolicy)
)


@pytest.fixture(params=RECENCY_POLICIES)
def recency_policy(request) -> str:
    """Policies whose eviction order is recency order (the cost-aware ones have their own)."""
    return request.param


@pytest.fixture(params=list(Tier))
def tier(request) -> Tier:
    return request.param


def test_resident_tier_always_bounds_count_and_never_refuses(policy_name):
    policy = make(policy_name, tier=Tier.RESIDENT)
    assert policy.capacity == CAPACITY
    policy.admit("a")
    policy.admit("b")
    assert policy.can_admit("c")
    assert policy.admit("c") == ["a"]


def test_byte_budget_evicts_least_recently_used_until_it_fits(recency_policy, tier):
    policy = make(recency_policy, tier=tier, max_bytes=10)
    policy.admit("a", 4)
    policy.admit("b", 5)
    if policy.refuses:
        assert not policy.can_admit("c", 3)
        return
    assert policy.admit("c", 2) == ["a"]  # by count, or 4+5+2 > 10 bytes
    assert policy.admit("d", 8) == ["b"]  # 5+2+8 > 10 bytes; 2+8 = 10 fits
    assert policy.members() == ["c", "d"]
    assert policy.admit("e", 9) == ["c", "d"]
    assert policy.used_bytes == 9


def test_byte_budget_evicts_in_eviction_order_until_it_fits(policy_name, tier):
    """Every policy: the victims are the first unpinned members of its own eviction
    order, exactly as many as needed for the newcomer to fit."""
    policy = make(policy_name, tier=tier, max_bytes=20)
    policy.capacity = None  # bytes only
    for name, size in (("a", 4), ("b", 7), ("c", 5), ("d", 3)):
        policy.admit(name, size)
        policy.touch("a")
    if policy.refuses:
        assert not policy.can_admit("e", 9)
        return
    order = policy.members()
    victims = policy.admit("e", 9)
    assert victims == order[: len(victims)]
    kept = sum(SIZES_BYTES[m] for m in order[len(victims) - 1 :] if m != "e")
    assert kept + 9 > 20, "no victim was evicted needlessly"
    assert policy.used_bytes <= 20


SIZES_BYTES = {"a": 4, "b": 7, "c": 5, "d": 3}


def test_larger_than_the_budget_alone_is_refused_changing_nothing(policy_name, tier):
    policy = make(policy_name, tier=tier, max_bytes=10)
    policy.admit("a", 4)
    assert not policy.fits(11)
    assert not policy.can_admit("big", 11)
    with pytest.raises(CacheFull, match="larger than the budget of 10 bytes"):
        policy.admit("big", 11)
    assert policy.members() == ["a"]


def test_pinned_member_is_never_a_victim(policy_name, tier):
    policy = make(policy_name, tier=tier)
    policy.admit("a")
    policy.admit("b")
    policy.pin("a")
    if policy.capacity is not None and not policy.refuses:
        assert policy.admit("c") == ["b"]
        assert policy.members() == ["a", "c"]
        policy.pin("c")
        assert not policy.can_admit("d")
        with pytest.raises(CacheFull, match="pinned: a,c"):
            policy.admit("d")


def test_pinned_member_never_expires(policy_name, tier):
    clock = FakeClock()
    policy = make(policy_name, clock, tier=tier)
    policy.admit("a")
    policy.pin("a")
    clock.advance(10 * TTL)
    assert policy.expire() == []
    policy.unpin("a")
    assert policy.expire() == (["a"] if policy.ttl is not None else [])


def test_per_member_ttl_overrides_the_policy(policy_name, tier):
    clock = FakeClock()
    policy = make(policy_name, clock, tier=tier)
    policy.admit("a")
    policy.admit("b")
    policy.set_ttl("a", 1.0)
    policy.set_ttl("b", math.inf)
    assert policy.next_expiry() == pytest.approx(1.0)
    clock.advance(1.0)
    assert policy.expired() == ["a"]
    clock.advance(100 * TTL)
    assert policy.expire() == ["a"]
    assert policy.members() == ["b"]
    policy.set_ttl("b", None)
    assert policy.is_expired("b") == (policy.ttl is not None)


def test_clone_is_independent(policy_name, tier):
    policy = make(policy_name, tier=tier)
    policy.admit("a", 3)
    copy = policy.clone()
    copy.admit("b", 4)
    copy.pin("a")
    assert policy.members() == ["a"] and not policy.is_pinned("a")
    assert copy.members() == ["a", "b"]


# -- traces: the seed's smoke-script sequences -----------------------------------------------


def test_lru_trace():
    policy = make("lru")
    assert policy.admit("A") == []  # A -> load_from_store
    policy.touch("A")  # A -> already_loaded
    assert policy.admit("B") == []  # B -> load_from_store
    assert policy.admit("C") == ["A"]  # C -> load_from_store, evicting A
    assert policy.members() == ["B", "C"]
    assert policy.admit("A") == ["B"]  # A -> load_from_store, evicting B
    assert policy.members() == ["C", "A"]


def test_lru_touch_protects_recently_used():
    policy = make("lru")
    policy.admit("A")
    policy.admit("B")
    policy.touch("A")
    assert policy.admit("C") == ["B"]
    assert policy.members() == ["A", "C"]


def test_no_evict_trace():
    policy = make("no-evict")
    assert policy.admit("A") == []
    assert policy.admit("B") == []
    assert policy.can_admit("C") is False
    with pytest.raises(CacheFull):
        policy.admit("C")
    assert policy.members() == ["A", "B"]
    assert policy.can_admit("A") is True  # members are still served


def test_ttl_trace():
    clock = FakeClock()
    policy = make("ttl", clock)
    policy.admit("A")
    clock.advance(2)
    policy.touch("A")  # within the window: already_loaded
    assert policy.expire() == []
    clock.advance(TTL + 0.1)  # past the TTL
    assert policy.is_expired("A")
    assert policy.admit("B") == ["A"]  # B -> load_from_store with A swept
    assert policy.members() == ["B"]


def test_ttl_has_no_capacity_bound():
    policy = make("ttl")
    for name in "abcdefgh":
        assert policy.admit(name) == []
    assert len(policy) == 8


def test_ttl_expires_exactly_at_the_ttl():
    clock = FakeClock()
    policy = make("ttl", clock)
    policy.admit("A")
    clock.advance(TTL - 0.001)
    assert policy.expire() == []
    clock.advance(0.001)
    assert policy.expire() == ["A"]


def test_ttl_expire_returns_oldest_first():
    clock = FakeClock()
    policy = make("ttl", clock)
    policy.admit("A")
    clock.advance(1)
    policy.admit("B")
    clock.advance(1)
    policy.admit("C")
    clock.advance(TTL - 0.5)
    assert policy.expire() == ["A", "B"]
    assert policy.members() == ["C"]


def test_lru_ttl_trace_capacity_then_time():
    clock = FakeClock()
    policy = make("lru-ttl", clock)
    policy.admit("A")
    clock.advance(1)
    policy.admit("B")
    clock.advance(1)
    assert policy.admit("C") == ["A"]  # capacity eviction
    clock.advance(TTL + 1)
    assert policy.admit("A") == ["B", "C"]  # time evictions, swept before admission
    assert policy.members() == ["A"]


# -- property-based: invariants over random access sequences --------------------------------


SIZES = {"a": 4, "b": 6, "c": 9, "d": 12, "e": 3}


class PolicyMachine(RuleBasedStateMachine):
    """Random admits, touches, sweeps and clock moves must keep every bound."""

    def __init__(self):
        super().__init__()
        self.clock = FakeClock()
        self.policy = None

    @precondition(lambda self: self.policy is None)
    @rule(
        name=st.sampled_from(sorted(POLICIES)),
        tier=st.sampled_from(list(Tier)),
        max_bytes=st.sampled_from([None, 10, 25]),
    )
    def choose(self, name, tier, max_bytes):
        self.policy = make(name, self.clock, tier=tier, max_bytes=max_bytes)
        self.last_use: dict[str, float] = {}

    @precondition(lambda self: self.policy is not None)
    @rule(model=st.sampled_from("abcde"))
    def pin(self, model):
        if model in self.policy:
            self.policy.pin(model)

    @precondition(lambda self: self.policy is not None)
    @rule(model=st.sampled_from("abcde"))
    def unpin(self, model):
        self.policy.unpin(model)

    @precondition(lambda self: self.policy is not None)
    @rule(model=st.sampled_from("abcde"))
    def use(self, model):
        size = SIZES[model]
        if model in self.policy:
            self.policy.touch(model)
        elif self.policy.can_admit(model, size):
            pinned = set(self.policy.pinned())
            victims = self.policy.admit(model, size)
            assert not pinned & set(victims), "a pinned member is never a victim"
            assert model not in victims
            for victim in victims:
                assert victim not in self.policy
                self.last_use.pop(victim)
        else:
            before = self.policy.members()
            with pytest.raises(CacheFull):
                self.policy.admit(model, size)
            assert self.policy.members() == before
            return
        self.last_use[model] = self.clock()

    @precondition(lambda self: self.policy is not None)
    @rule(seconds=st.floats(min_value=0, max_value=2 * TTL))
    def wait(self, seconds):
        self.clock.advance(seconds)

    @precondition(lambda self: self.policy is not None)
    @rule()
    def sweep(self):
        for victim in self.policy.expire():
            assert self.clock() - self.last_use.pop(victim) >= TTL

    @invariant()
    def bounds_hold(self):
        if self.policy is None:
            return
        members = self.policy.members()
        assert sorted(members) == sorted(self.last_use)
        if self.policy.capacity is not None:
            assert len(members) <= self.policy.capacity
        if self.policy.max_bytes is not None:
            assert sum(self.policy.size_of(m) for m in members) <= self.policy.max_bytes
        if isinstance(self.policy, AdaptivePolicy):
            # what the leading expert let go first (least recently used first), then its order
            ghost = self.policy.expert()
            recency = self.policy.recency()
            gone = [m for m in recency if m not in ghost]
            assert members == gone + [m for m in ghost.members() if m in recency]
        elif isinstance(self.policy, GreedyDual):
            # eviction order is priority order, ties least recently used first
            keys = [(self.policy.priority(m), self.policy.recency().index(m)) for m in members]
            assert keys == sorted(keys)
        else:
            # eviction order is recency order
            times = [self.last_use[m] for m in members]
            assert times == sorted(times)


@example_counts(50, 500)
def test_policy_machine(max_examples):
    run_state_machine_as_test(
        PolicyMachine,
        settings=settings(max_examples=max_examples, stateful_step_count=40, deadline=None),
    )


# -- traces: the GreedyDual family (lfu-da, gdsf) -----------------------------------------------


def test_lfu_da_trace_frequency_then_aging():
    policy = make("lfu-da")
    policy.admit("A")
    policy.touch("A")  # A: 2 uses
    policy.admit("B")  # B: 1 use
    assert policy.members() == ["B", "A"]
    assert policy.admit("C") == ["B"]  # the least frequently used goes
    assert policy.inflation == 1  # L rises to B's priority
    assert policy.priority("C") == 2  # L + 1 use: as high as A's 2 uses, newer
    assert policy.members() == ["A", "C"]
    assert policy.admit("D") == ["A"]  # tie: least recently used first
    assert policy.inflation == 2


def test_gdsf_byte_budget_keeps_what_is_dear_per_byte():
    from model_store_server.policies.cost_model import CostModel

    gib = 1024**3
    # 1 GiB/s push and load, 1 s overhead each: a 1 GiB model costs 4 s (4 s/GiB),
    # a 4 GiB one 10 s (2.5 s/GiB), so under bytes the large one goes first.
    cost = CostModel(
        push_bytes_per_s=gib, load_bytes_per_s=gib, push_overhead_s=1, load_overhead_s=1
    )
    policy = create_policy(
        "gdsf", capacity=10, ttl=TTL, max_bytes=6 * gib, clock=FakeClock(), cost_model=cost
    )
    policy.admit("small", gib)
    policy.admit("big", 4 * gib)
    assert policy.members() == ["big", "small"]
    assert policy.admit("other", 2 * gib) == ["big"]
    explained = policy.explain()
    assert policy.inflation == pytest.approx(2.5)  # big's 1 use x 2.5 s/GiB
    # small: 0 + 4 s/GiB; other: L 2.5 + 6 s / 2 GiB = 5.5
    assert [row["name"] for row in explained] == ["small", "other"]
    assert explained[0]["reason"].startswith("next victim")
    # Under a count budget only the cost counts: the cheap small model goes first.
    counted = create_policy("gdsf", capacity=2, ttl=TTL, clock=FakeClock(), cost_model=cost)
    counted.admit("small", gib)
    counted.admit("big", 4 * gib)
    assert counted.admit("other", 2 * gib) == ["small"]


def test_gdsf_resident_tier_costs_only_the_load():
    from model_store_server.policies.cost_model import CostModel

    cost = CostModel(push_overhead_s=5, load_overhead_s=1)
    cache = create_policy("gdsf", capacity=2, ttl=TTL, cost_model=cost)
    resident = create_policy("gdsf", capacity=2, ttl=TTL, cost_model=cost, tier=Tier.RESIDENT)
    for tier in (cache, resident):
        tier.admit("a", 1000)
    assert resident.cost("a") == pytest.approx(cost.load_seconds(1000))
    assert cache.cost("a") == pytest.approx(cost.load_seconds(1000) + cost.push_seconds(1000))


def test_refresh_is_not_a_use(policy_name):
    clock = FakeClock()
    policy = make(policy_name, clock)
    policy.admit("a")
    clock.advance(3)
    policy.refresh("a")
    assert policy.idle_seconds("a") == 0
    if isinstance(policy, GreedyDual):
        # still one use (gdsf-aged: one use 3 s old)
        weight = 0.5 ** (3 / policy.half_life) if policy.half_life else 1
        assert policy.priority("a") == pytest.approx(weight * policy.value("a"))


def test_explain_lists_members_in_eviction_order(policy_name, tier):
    clock = FakeClock()
    policy = make(policy_name, clock, tier=tier)
    policy.admit("a")
    policy.admit("b")
    policy.pin("b")
    rows = policy.explain()
    assert [row["name"] for row in rows] == policy.members()
    assert {row["name"]: row["reason"] for row in rows}["b"] == "pinned: never a victim"
    reason_a = rows[[r["name"] for r in rows].index("a")]["reason"]
    if policy.capacity is None and policy.max_bytes is None:  # ttl's disk tier: no size bound
        assert reason_a.startswith("no count or byte bound")
    elif not policy.refuses:
        assert reason_a.startswith("next victim")


def test_gdsf_aged_uses_halve_every_half_life():
    clock = FakeClock()
    policy = create_policy("gdsf-aged", capacity=3, ttl=TTL, clock=clock, freq_half_life=10)
    assert policy.half_life == 10
    policy.admit("a")
    clock.advance(10)
    assert policy.uses("a") == pytest.approx(0.5)
    policy.touch("a")  # 0.5 + 1
    assert policy.uses("a") == pytest.approx(1.5)
    clock.advance(20)
    assert policy.uses("a") == pytest.approx(1.5 / 4)
    assert policy.priority("a") == pytest.approx(0 + 1.5 / 4 * policy.value("a"))
    assert "half-life 10s" in policy.explain()[0]["reason"]


def test_gdsf_aged_lets_yesterdays_favourite_go():
    clock = FakeClock()
    plain = create_policy("gdsf", capacity=2, ttl=TTL, clock=clock)
    aged = create_policy("gdsf-aged", capacity=2, ttl=TTL, clock=clock, freq_half_life=10)
    for policy in (plain, aged):
        policy.admit("old")
        for _ in range(20):
            policy.touch("old")  # 21 uses, long ago
    clock.advance(100)  # ten half-lives: old's uses weigh 21/1024
    for policy in (plain, aged):
        policy.admit("new")
        policy.touch("new")
    assert plain.admit("next") == ["new"]  # gdsf: 21 uses outrank today's 2
    assert aged.admit("next") == ["old"]


# -- what /status says about each member, word for word ----------------------------------------

GIB = 1024**3
EXPLAINED = {
    "lru": [
        ("b", -5.5, "next victim, lowest in order: least recently used (idle 5.5s)"),
        ("a", -3.0, "after b: least recently used (idle 3.0s)"),
    ],
    "no-evict": [
        ("b", -5.5, "no-evict never evicts to make room; new models are refused when full"),
        ("a", -3.0, "no-evict never evicts to make room; new models are refused when full"),
    ],
    "ttl": [
        ("b", -5.5, "idle past its time-to-live: removed at the next sweep"),
        ("a", -3.0, "no count or byte bound: leaves only when idle past its time-to-live"),
    ],
    "lfu-da": [
        ("b", 1.0, "next victim, lowest in order: priority 1 = L 0 at its last use + 1 use(s) x 1"),
        ("a", 2.0, "after b: priority 2 = L 0 at its last use + 2 use(s) x 1"),
    ],
    "gdsf": [
        (
            "b",
            6.0,
            "next victim, lowest in order: priority 6 = L 0 at its last use"
            " + 1 use(s) x cost 6s / 1 slot",
        ),
        ("a", 8.0, "after b: priority 8 = L 0 at its last use + 2 use(s) x cost 4s / 1 slot"),
    ],
    "gdsf-bytes": [
        (
            "b",
            3.0,
            "next victim, lowest in order: priority 3 = L 0 at its last use"
            " + 1 use(s) x cost 6s / 2 GiB",
        ),
        ("a", 8.0, "after b: priority 8 = L 0 at its last use + 2 use(s) x cost 4s / 1 GiB"),
    ],
}


@pytest.mark.parametrize("case", sorted(EXPLAINED))
def test_explain_gives_each_members_priority_idle_time_and_reason(case):
    from model_store_server.policies.cost_model import CostModel

    cost = CostModel(
        push_bytes_per_s=GIB, load_bytes_per_s=GIB, push_overhead_s=1, load_overhead_s=1
    )
    name, extra = case, {}
    if case.startswith("gdsf"):
        name, extra = "gdsf", {"max_bytes": 8 * GIB} if case == "gdsf-bytes" else {}
    clock = FakeClock()
    policy = create_policy(name, capacity=3, ttl=5.0, clock=clock, cost_model=cost, **extra)
    policy.admit("a", GIB)
    clock.advance(1.25)
    policy.admit("b", 2 * GIB)
    clock.advance(2.5)
    policy.touch("a")
    clock.advance(3)
    rows = policy.explain()
    assert [(r["name"], r["priority"], r["reason"]) for r in rows] == EXPLAINED[case]
    assert [r["idle_seconds"] for r in rows] == [5.5, 3.0]


def test_next_expiry_is_the_soonest_member_not_pinned_nor_kept_forever():
    clock = FakeClock()
    ttl = create_policy("ttl", capacity=5, ttl=5.0, clock=clock)
    assert ttl.next_expiry() is None  # no member yet
    ttl.admit("old")
    clock.advance(1)
    ttl.admit("kept")
    ttl.admit("young")
    clock.advance(1)
    assert ttl.next_expiry() == 3.0  # old: 5 s after its use, 2 s ago
    ttl.pin("old")  # pinned, first in order: skipped, and the others still count
    assert ttl.next_expiry() == 4.0
    ttl.set_ttl("kept", math.inf)
    ttl.set_ttl("young", 10.0)
    assert ttl.next_expiry() == 9.0
    clock.advance(20)
    assert ttl.next_expiry() == 0.0  # already past: 0, never negative
    lru = create_policy("lru", capacity=5, ttl=5.0, clock=clock)
    lru.admit("a")
    assert lru.next_expiry() is None  # no time bound and no keep_alive
    lru.admit("b")
    lru.set_ttl("b", 2.0)
    assert lru.next_expiry() == 2.0  # a (no ttl) is skipped, b counts


def test_resize_of_a_stranger_names_it():
    policy = create_policy("lru", capacity=2, ttl=5.0)
    with pytest.raises(KeyError) as err:
        policy.resize("x.gguf", 5)
    assert err.value.args == ("x.gguf",)


def test_a_policy_shows_its_bounds_and_members():
    policy = create_policy("lru-ttl", capacity=2, ttl=5.0, max_bytes=100)
    policy.admit("a", 10)
    assert repr(policy) == "LRUTTLPolicy(capacity=2, max_bytes=100, ttl=5.0, members=['a'])"


# -- the shared bookkeeping (policies/base.py) at its limits --------------------------------


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({"capacity": 0}, "capacity must be at least 1"),
        ({"ttl": 0.0}, "ttl must be positive"),
        ({"ttl": -1.0}, "ttl must be positive"),
        ({"max_bytes": 0}, "max_bytes must be positive"),
    ],
)
def test_a_bound_below_its_least_is_refused_naming_it(bounds, message):
    with pytest.raises(ValueError) as err:
        RecencyPolicy(**bounds)
    assert str(err.value) == message


def test_the_least_bounds_are_taken():
    policy = RecencyPolicy(capacity=1, ttl=0.001, max_bytes=1, clock=FakeClock())
    assert (policy.capacity, policy.ttl, policy.max_bytes) == (1, 0.001, 1)
    assert policy.admit("a", 1) == [] and policy.admit("b", 1) == ["a"]


@pytest.mark.parametrize("call", ["touch", "pin", "set_ttl"])
def test_changing_a_stranger_names_it(call):
    policy = RecencyPolicy(capacity=2, ttl=5.0)
    args = ("x.gguf", 1.0) if call == "set_ttl" else ("x.gguf",)
    with pytest.raises(KeyError) as err:
        getattr(policy, call)(*args)
    assert err.value.args == ("x.gguf",)


def test_a_model_discarded_and_admitted_again_forgets_its_pin_and_keep_alive():
    clock = FakeClock()
    policy = RecencyPolicy(capacity=2, ttl=5.0, clock=clock)
    policy.admit("a")
    policy.pin("a")
    policy.set_ttl("a", math.inf)
    assert policy.discard("a") and not policy.discard("a")
    policy.admit("a")
    assert not policy.is_pinned("a") and policy.ttl_of("a") == 5.0
    clock.advance(5.0)
    assert policy.expire() == ["a"]


def test_priority_and_explain_show_idle_time_to_the_millisecond():
    clock = FakeClock()
    policy = RecencyPolicy(capacity=2, clock=clock)
    policy.admit("a")
    clock.advance(1.23456789)
    assert policy.priority("a") == -1.235
    [row] = policy.explain()
    assert (row["priority"], row["idle_seconds"]) == (-1.235, 1.235)


def test_members_past_their_ttl_make_room_by_their_bytes_first():
    """a is expired: its 60 bytes go first, and then c (50) fits beside b (30) in 100."""
    clock = FakeClock()
    policy = RecencyPolicy(capacity=5, ttl=5.0, max_bytes=100, clock=clock)
    policy.admit("a", 60)
    clock.advance(3)
    policy.admit("b", 30)
    clock.advance(2)
    assert policy.can_admit("c", 50)
    assert policy.admit("c", 50) == ["a"]
    assert policy.members() == ["b", "c"]


def test_a_full_refusing_policy_says_which_bounds_are_full():
    policy = create_policy("no-evict", capacity=2, ttl=5.0, max_bytes=100, clock=FakeClock())
    policy.admit("a", 10)
    policy.admit("b", 20)
    with pytest.raises(CacheFull) as err:
        policy.admit("c", 5)
    assert str(err.value) == "no-evict: cache is full (2/2 models, 30/100 bytes)"
    policy.pin("b")
    with pytest.raises(CacheFull) as err:
        policy.admit("c", 5)
    assert str(err.value) == "no-evict: cache is full (2/2 models, 30/100 bytes); pinned: b"


def test_a_model_admitted_without_a_size_counts_no_bytes(policy_name, tier):
    policy = make(policy_name, tier=tier, max_bytes=10)
    policy.admit("a")
    policy.admit("b", 4)
    assert (policy.size_of("a"), policy.used_bytes) == (0, 4)


@pytest.mark.parametrize("half_life", [0.0, -1.0])
def test_a_use_counts_half_life_must_be_positive(half_life):
    with pytest.raises(ValueError) as err:
        GreedyDual(capacity=2, half_life=half_life)
    assert str(err.value) == "half_life must be positive seconds"


def test_a_half_second_half_life_halves_a_use_every_half_second():
    clock = FakeClock()
    policy = GreedyDual(capacity=2, half_life=0.5, clock=clock)
    policy.admit("a")
    clock.advance(1.0)
    assert policy.uses("a") == pytest.approx(0.25)


def test_gdsf_aged_without_a_half_life_takes_the_default():
    clock = FakeClock()
    policy = create_policy("gdsf-aged", capacity=2, ttl=5.0, clock=clock, freq_half_life=None)
    assert policy.half_life == 45.0
    policy.admit("a")
    clock.advance(45.0)
    assert policy.uses("a") == pytest.approx(0.5)


@pytest.mark.parametrize("tier", [Tier.CACHE, Tier.RESIDENT])
def test_adaptive_builds_its_experts_with_the_tiers_settings(tier):
    """One cost model for the tier and every ghost (given or made), the same clock, bounds
    and gdsf-aged half-life: the ghosts score what the tier itself would pay."""
    from model_store_server.policies.adaptive import EXPERTS
    from model_store_server.policies.cost_model import CostModel

    clock = FakeClock()
    cost = CostModel()
    settings = dict(capacity=3, ttl=7.0, max_bytes=100, clock=clock, tier=tier)
    policy = create_policy("adaptive", **settings, cost_model=cost, freq_half_life=30.0)
    assert policy.cost_model is cost
    policy.admit("a", 10)
    clock.advance(4.0)
    for name in EXPERTS:
        ghost = policy.expert(name)
        assert (ghost.capacity, ghost.max_bytes) == (3, 100)
        assert ghost.idle_seconds("a") == 4.0
        assert getattr(ghost, "cost_model", cost) is cost
    assert policy.expert("gdsf-aged").half_life == 30.0
    made = create_policy("adaptive", **settings)
    assert all(made.expert(n).cost_model is made.cost_model for n in ("gdsf", "gdsf-aged"))


def test_a_refusing_policy_built_directly_refuses_when_full():
    """The simulator and replay build policies from the registry's classes too."""
    policy = POLICIES["no-evict"](capacity=1)
    policy.admit("a")
    with pytest.raises(CacheFull):
        policy.admit("b")
    assert policy.members() == ["a"]
