"""The prewarm decision (model_store_server/policies/prewarm.py) as a pure function: one
test per rule, on a fake clock, over the store's own tiers."""

from __future__ import annotations

import random

import pytest

from model_store_server.decision import Action
from model_store_server.policies import POLICIES, Tier, create_policy
from model_store_server.policies.arrivals import Arrivals, HistogramShape
from model_store_server.policies.prewarm import (
    Where,
    carry,
    choose,
    keep_after_use,
    keep_alive_over,
    next_event,
    next_need,
)

MARGIN = 5.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def learn(arrivals: Arrivals, model: str, period: float, last: float, n: int = 8) -> None:
    """``n`` requests of ``model`` every ``period`` seconds, the last at ``last``."""
    for k in range(n - 1, -1, -1):
        arrivals.observe(model, now=last - k * period)


def tiers(policy="lru", *, disk=4, memory=1, clock=None):
    clock = clock or FakeClock()
    cache = create_policy(policy, capacity=disk, ttl=300, clock=clock, tier=Tier.CACHE)
    resident = create_policy(policy, capacity=memory, ttl=300, clock=clock, tier=Tier.RESIDENT)
    return cache, resident


def plan_for(arrivals, cache, resident, now, **kw):
    return choose(
        arrivals,
        cache,
        resident,
        now=now,
        margin=MARGIN,
        sizes=lambda m: 100,
        footprints=lambda m: 100,
        **kw,
    )


def test_a_model_predicted_within_the_margin_is_prewarmed():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)
    cache, resident = tiers()
    # expected at about 1060: nothing at 1040, a plan from 1055 on
    assert plan_for(arrivals, cache, resident, 1040) is None
    plan = plan_for(arrivals, cache, resident, 1056)
    assert plan is not None and plan.model == "a" and plan.where is Where.MEMORY
    assert plan.expected_at == pytest.approx(1060)
    outcome = carry(plan, cache, resident, size=100, footprint=100)
    assert outcome.decision.action is Action.LOAD_FROM_STORE
    assert "a" in outcome.resident and "a" not in resident  # the caller's tiers unchanged


def test_once_per_predicted_request_and_not_past_the_window():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)
    cache, resident = tiers()
    assert plan_for(arrivals, cache, resident, 1056, done={"a": 1000}) is None
    assert plan_for(arrivals, cache, resident, 1200) is None  # the window ended


def test_never_push_out_a_model_predicted_sooner():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)  # expected at 1060
    learn(arrivals, "b", 30, last=1028)  # expected at 1058: sooner than a
    cache, resident = tiers(memory=1)
    cache.admit("b", 100)
    resident.admit("b", 100)
    plan = plan_for(arrivals, cache, resident, 1056)
    # b is needed sooner: a is not loaded in its place, only pushed to the disk
    assert plan is not None and plan.model == "a" and plan.where is Where.DISK
    outcome = carry(plan, cache, resident, size=100, footprint=100)
    assert "a" in outcome.cache and "a" not in outcome.resident
    assert outcome.resident.members() == ["b"]
    # b needed later (its next request at 1088): a takes its place
    learn(arrivals, "b", 30, last=1058)
    plan = plan_for(arrivals, cache, resident, 1056)
    assert plan.where is Where.MEMORY and plan.unload == ("b",)


def test_victims_are_the_models_needed_furthest_away():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)  # expected at 1060
    learn(arrivals, "b", 300, last=1000)  # at 1300
    learn(arrivals, "c", 120, last=1000)  # at 1120
    cache, resident = tiers(memory=3)
    for name in ("b", "c", "x"):  # x was seen once: never needed, as far as we know
        cache.admit(name, 100)
        resident.admit(name, 100)
    resident.touch("x")
    resident.touch("b")  # LRU would take c first; prewarm takes x, then b
    plan = plan_for(arrivals, cache, resident, 1058)
    assert plan.unload == ("x",)


def test_disk_only_when_the_file_is_already_there_is_nothing_to_do():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)
    learn(arrivals, "b", 30, last=1028)
    cache, resident = tiers(memory=1)
    for name in ("a", "b"):
        cache.admit(name, 100)
    resident.admit("b", 100)
    assert plan_for(arrivals, cache, resident, 1056) is None


def test_a_generating_model_is_never_a_victim():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)
    cache, resident = tiers(memory=1)
    cache.admit("z", 100)
    resident.admit("z", 100)
    plan = plan_for(arrivals, cache, resident, 1056, busy={"z"})
    assert plan.where is Where.DISK
    assert plan_for(arrivals, cache, resident, 1056, busy={"a"}) is None  # queued already


def test_keep_alive_ends_after_the_histogram_tail():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)
    cache, resident = tiers(memory=2)
    for name in ("a", "y"):
        cache.admit(name, 100)
        resident.admit(name, 100)
    assert keep_alive_over(arrivals, resident, now=1062, margin=MARGIN) == []
    assert keep_alive_over(arrivals, resident, now=1070, margin=MARGIN) == ["a"]
    assert keep_alive_over(arrivals, resident, now=1070, margin=MARGIN, busy={"a"}) == []
    resident.pin("a")
    assert keep_alive_over(arrivals, resident, now=1070, margin=MARGIN) == []


def test_keep_after_use_is_the_tail_not_the_fixed_ttl():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)  # a timer: the next request in 60-61 s
    # Stay loaded through the window's end plus the margin (measured from now)...
    assert keep_after_use(arrivals, "a", now=1002, margin=MARGIN) == pytest.approx(64)
    assert keep_after_use(arrivals, "a", now=2000, margin=MARGIN) == 0.0  # long over
    rng = random.Random(5)
    now = 0.0
    for _ in range(300):  # ...and a Poisson model (no pattern, no prewarm) through its tail
        now += rng.expovariate(1 / 20)
        arrivals.observe("poisson", now=now)
    tail = arrivals.get("poisson").quantile(0.99, upper=True)
    assert arrivals.window("poisson") is None
    assert keep_after_use(arrivals, "poisson", now=now, margin=MARGIN) == tail + MARGIN
    learn(arrivals, "few", 60, last=1000, n=3)  # too few idle times: the policy's own TTL
    assert keep_after_use(arrivals, "few", now=1000, margin=MARGIN) is None
    assert keep_after_use(arrivals, "unknown", now=1000, margin=MARGIN) is None


def test_nothing_when_the_histogram_is_not_representative():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "few", 60, last=1000, n=3)  # two idle times
    rng = random.Random(5)
    now = 0.0
    for _ in range(300):  # Poisson: no pattern
        now += rng.expovariate(1 / 20)
        arrivals.observe("poisson", now=now)
    cache, resident = tiers(memory=2)
    cache.admit("poisson", 100)
    resident.admit("poisson", 100)
    for t in range(1000, 1100, 5):
        assert plan_for(arrivals, cache, resident, t) is None
        assert keep_alive_over(arrivals, resident, now=t + now, margin=MARGIN) == []
    assert next_event(arrivals, resident, MARGIN, {}) == []


def test_next_need():
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)
    assert next_need(arrivals, "a", 1010) == pytest.approx(1060)
    assert next_need(arrivals, "a", 1060.5) == 1060.5  # within its window: now
    assert next_need(arrivals, "nobody", 1010) == float("inf")
    arrivals.observe("once", now=5)
    assert next_need(arrivals, "once", 10) == float("inf")


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "no-evict"])
def test_composes_with_every_policy(policy):
    clock = FakeClock()
    clock.now = 1056
    arrivals = Arrivals(HistogramShape())
    learn(arrivals, "a", 60, last=1000)
    learn(arrivals, "b", 600, last=1000)
    cache, resident = tiers(policy, disk=2, memory=1, clock=clock)
    for name in ("b", "c"):
        cache.admit(name, 100)
    resident.admit("b", 100)
    plan = plan_for(arrivals, cache, resident, clock.now)
    assert plan is not None and plan.model == "a"
    outcome = carry(plan, cache, resident, size=100, footprint=100)
    assert outcome.decision.action is Action.LOAD_FROM_STORE
    assert "a" in outcome.resident and "b" not in outcome.resident
    assert outcome.cache.capacity is None or len(outcome.cache) <= 2  # ttl: no count bound
