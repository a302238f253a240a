"""Cache policies: one conformance suite over every registered policy, then per-policy traces."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from model_store_server.cache_policy import POLICIES, CacheFull, CachePolicy, create_policy
from tests.conftest import FakeClock

CAPACITY = 2
TTL = 5.0


def make(name: str, clock: FakeClock | None = None):
    return create_policy(name, capacity=CAPACITY, ttl=TTL, clock=clock or FakeClock())


# -- conformance: every policy ------------------------------------------------------------


@pytest.fixture(params=sorted(POLICIES))
def policy_name(request) -> str:
    return request.param


def test_registry_names_match_config_names():
    assert sorted(POLICIES) == ["lru", "lru-ttl", "no-evict", "ttl"]


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
    assert (policy.capacity is not None) == (policy_name in ("lru", "no-evict", "lru-ttl"))
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


class PolicyMachine(RuleBasedStateMachine):
    """Random admits, touches, sweeps and clock moves must keep every bound."""

    def __init__(self):
        super().__init__()
        self.clock = FakeClock()
        self.policy = None

    @precondition(lambda self: self.policy is None)
    @rule(name=st.sampled_from(sorted(POLICIES)))
    def choose(self, name):
        self.policy = make(name, self.clock)
        self.last_use: dict[str, float] = {}

    @precondition(lambda self: self.policy is not None)
    @rule(model=st.sampled_from("abcde"))
    def use(self, model):
        if model in self.policy:
            self.policy.touch(model)
        elif self.policy.can_admit(model):
            victims = self.policy.admit(model)
            assert model not in victims
            for victim in victims:
                assert victim not in self.policy
                self.last_use.pop(victim)
        else:
            with pytest.raises(CacheFull):
                self.policy.admit(model)
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
        # eviction order is recency order
        times = [self.last_use[m] for m in members]
        assert times == sorted(times)


TestPolicyMachine = PolicyMachine.TestCase
TestPolicyMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
