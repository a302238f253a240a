"""The adaptive policy: it evicts as the expert with the least modelled cost lately."""

from __future__ import annotations

import pytest

from model_store_server.policies import AdaptivePolicy, CacheFull, Tier, create_policy
from model_store_server.policies.adaptive import EXPERTS
from model_store_server.policies.cost_model import CostModel
from model_swap_lab.generate import assign_sizes, generate, model_names, spec_for
from tests.conftest import FakeClock

COST = CostModel()


def adaptive(capacity=2, max_bytes=None, window=40, clock=None) -> AdaptivePolicy:
    clock = clock or FakeClock()
    experts = {
        name: create_policy(
            name, capacity=capacity, ttl=5, max_bytes=max_bytes, clock=clock, cost_model=COST
        )
        for name in EXPERTS
    }
    return AdaptivePolicy(
        experts=experts, capacity=capacity, max_bytes=max_bytes, clock=clock, window=window
    )


def run(policy, models, size=1000, clock=None) -> int:
    """Serve ``models`` in order (one a second if ``clock``); return how many were misses."""
    misses = 0
    for model in models:
        if clock is not None:
            clock.advance(1)
        if model in policy:
            policy.touch(model)
        else:
            policy.admit(model, size)
            misses += 1
    return misses


def misses_of(name, models, **bounds) -> int:
    return run(create_policy(name, ttl=5, clock=FakeClock(), cost_model=COST, **bounds), models)


# Frequency pollution: A's 50 early uses keep it in a frequency policy's cache long after
# it stopped being asked for, while B and C alternate. lru lets A go at once.
LRU_WINS = ["A"] * 50 + ["B", "C"] * 150
# A scan: the hot H (used 5 times first) between pairs of one-off models. lru evicts H
# before each return; the frequency policies keep it.
SCAN = ["H"] * 5 + [m for i in range(150) for m in ("H", f"x{i}a", f"x{i}b")]


def test_follows_lru_where_lru_wins():
    policy = adaptive()
    misses = run(policy, LRU_WINS)
    lru, gdsf = misses_of("lru", LRU_WINS, capacity=2), misses_of("gdsf", LRU_WINS, capacity=2)
    assert lru < gdsf / 10
    assert policy.leader == "lru"
    assert misses < lru + (gdsf - lru) / 4  # it switched early, and then missed nothing
    assert run(policy, ["B", "C"] * 10) == 0


def test_stays_with_gdsf_where_gdsf_wins():
    policy = adaptive()
    misses = run(policy, SCAN)
    lru, gdsf = misses_of("lru", SCAN, capacity=2), misses_of("gdsf", SCAN, capacity=2)
    assert gdsf < lru * 0.75
    assert policy.leader == "gdsf"
    assert policy.standings()["switches"] == 0
    assert misses == gdsf
    standings = policy.standings()
    assert standings["window_swap_seconds"]["lru"] > standings["window_swap_seconds"]["gdsf"]


def test_switches_back_to_gdsf_when_a_scan_follows_lrus_phase():
    clock = FakeClock()
    policy = adaptive(clock=clock)
    run(policy, LRU_WINS, clock=clock)
    assert policy.leader == "lru"
    misses = run(policy, SCAN, clock=clock)
    assert policy.leader == "gdsf"  # the first of the experts that tie on this scan
    assert policy.standings()["switches"] == 2
    scores = policy.standings()["window_swap_seconds"]
    assert scores["gdsf"] < 0.75 * scores["lru"]
    assert misses < 0.75 * misses_of("lru", SCAN, capacity=2)


def test_does_not_flap_on_a_stationary_trace():
    spec = spec_for("skewed", requests=4000)
    names = model_names(spec.models)
    sizes = assign_sizes(names, spec)
    clock = FakeClock()
    policy = adaptive(capacity=40, max_bytes=sum(sizes.values()) // 4, window=400, clock=clock)
    for request in generate(spec, names):
        clock.now = request.timestamp
        if request.model in policy:
            policy.touch(request.model)
        else:
            policy.admit(request.model, sizes[request.model])
    assert policy.standings()["switches"] <= 2


def test_explain_names_the_leading_expert_and_its_lead():
    policy = adaptive()
    run(policy, LRU_WINS[:110])  # gdsf still pays for A's early uses
    rows = policy.explain()
    assert [row["name"] for row in rows] == policy.members()
    assert all(row["expert"] == "lru" for row in rows)
    assert rows[0]["expert_lead_percent"] > 50
    assert rows[0]["reason"].startswith("next victim, lowest in order: lru leads by")
    assert set(rows[0]["expert_swap_seconds"]) == set(EXPERTS)


def test_ghosts_are_bookkeeping_of_the_same_bounds_on_both_tiers():
    for tier in Tier:
        policy = create_policy("adaptive", capacity=3, ttl=5, max_bytes=100, tier=tier)
        assert set(policy.standings()["window_swap_seconds"]) == set(EXPERTS)
        for name in EXPERTS:
            ghost = policy.expert(name)
            assert (ghost.capacity, ghost.max_bytes) == (3, 100)
            assert getattr(ghost, "tier", tier) is tier
        policy.admit("a", 60)
        assert policy.admit("b", 60) == ["a"]  # only the real tier's budget decides


def test_refused_admission_changes_no_ghost():
    policy = adaptive(max_bytes=10)
    policy.admit("a", 6)
    policy.pin("a")
    before = policy.clone()
    assert not policy.can_admit("b", 6)
    with pytest.raises(CacheFull):
        policy.admit("b", 6)
    assert "b" not in policy.expert("lru")
    assert policy.standings() == before.standings()


def test_a_corrected_size_reaches_the_ghosts():
    policy = adaptive(max_bytes=100)
    policy.admit("a", 10)
    policy.resize("a", 60)
    assert all(policy.expert(name).size_of("a") == 60 for name in EXPERTS)
