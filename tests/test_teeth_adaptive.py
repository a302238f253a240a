"""The adaptive policy's hysteresis measured: how far apart its switches are, and that each
switch was earned by more than ``margin`` (the other tests only count switches on traces
where the leader changes rarely). Random traces with fixed seeds; pure, no server."""

from __future__ import annotations

import random

import pytest

from model_store_server.policies import AdaptivePolicy, create_policy
from model_store_server.policies.adaptive import EXPERTS
from model_store_server.policies.base import Tier
from model_store_server.policies.cost_model import CostModel
from tests.conftest import FakeClock

COST = CostModel()


def adaptive(window: int, margin: float, capacity: int = 2) -> AdaptivePolicy:
    clock = FakeClock()
    experts = {
        name: create_policy(name, capacity=capacity, ttl=5, clock=clock, cost_model=COST)
        for name in EXPERTS
    }
    return AdaptivePolicy(
        experts=experts, capacity=capacity, clock=clock, window=window, margin=margin
    )


def switches(policy: AdaptivePolicy, seed: int, requests: int = 250, models: int = 5):
    """Serve a random trace; for each switch: (request index, old leader, new leader,
    the window's scores right after it)."""
    rng = random.Random(seed)
    found = []
    for index in range(requests):
        model = f"m{rng.randrange(models)}"
        before = policy.leader
        if model in policy:
            policy.touch(model)
        else:
            policy.admit(model, rng.choice((1000, 50_000_000, 400_000_000)))
        if policy.leader != before:
            scores = policy.standings()["window_swap_seconds"]
            found.append((index, before, policy.leader, scores))
    return found


@pytest.mark.parametrize("window", [8, 12, 40])
def test_switches_are_at_least_a_quarter_window_apart(window):
    cool_down = window // 4
    seen = 0
    for seed in range(6):
        policy = adaptive(window, margin=0.0)
        found = switches(policy, seed)
        at = [index for index, *_ in found]
        assert all(b - a >= cool_down for a, b in zip(at, at[1:], strict=False)), (seed, at)
        assert not at or at[0] + 1 >= cool_down  # the first counts from the start
        assert policy.standings()["switches"] == len(found)
        seen += len(found)
    assert seen > 5  # the traces do make the leader change


@pytest.mark.parametrize("margin", [0.05, 0.3])
def test_each_switch_is_earned_by_more_than_the_margin(margin):
    seen = 0
    for seed in range(6):
        for _index, old, new, scores in switches(adaptive(12, margin), seed):
            # scores are rounded to the millisecond in standings
            assert scores[new] < scores[old] * (1 - margin) + 0.001, (seed, old, new, scores)
            assert scores[new] == min(scores.values())
            seen += 1
    assert seen > 5


def one_expert(ghost, **bounds) -> AdaptivePolicy:
    return AdaptivePolicy(experts={"lru": ghost}, window=8, **bounds)


def test_a_member_the_leader_no_longer_holds_ranks_below_every_held_one():
    clock = FakeClock()
    ghost = create_policy("lru", capacity=1, ttl=5, clock=clock)  # keeps less than the tier
    policy = one_expert(ghost, capacity=3, clock=clock)
    policy.admit("a", 1)
    clock.advance(10)
    policy.admit("b", 1)
    clock.advance(10)
    assert "a" in policy and "a" not in ghost and ghost.members() == ["b"]
    assert policy.priority("b") == ghost.priority("b") == -10.0
    assert policy.priority("a") == -11.0  # one below the lowest the leader holds
    assert policy.members() == ["a", "b"]
    rows = {row["name"]: row["reason"] for row in policy.explain()}
    assert "lru no longer holds it" in rows["a"] and "no longer" not in rows["b"]


def test_when_the_leader_holds_nothing_every_member_ranks_at_minus_one():
    clock = FakeClock()
    ghost = create_policy("lru", capacity=3, ttl=5, clock=clock, max_bytes=1)  # refuses all
    policy = one_expert(ghost, capacity=3, clock=clock)
    policy.admit("a", 5)
    assert "a" in policy and ghost.members() == []
    assert policy.priority("a") == -1.0


def test_scores_are_the_modelled_seconds_of_the_misses_in_the_window():
    clock = FakeClock()
    policy = one_expert(create_policy("lru", capacity=2, ttl=5, clock=clock), capacity=2)
    size = 123_456_789
    policy.admit("a", size)
    expected = policy.miss_seconds(size) + policy.cost_model.call_seconds(0)
    assert policy.standings()["window_swap_seconds"] == {"lru": round(expected, 3)}
    assert policy.standings()["lead_percent"] == 0.0 and policy.standings()["window_requests"] == 1


def serve(policy: AdaptivePolicy, model: str, size: int = 10_000_000) -> None:
    if model in policy:
        policy.touch(model)
    else:
        policy.admit(model, size)


def test_a_clone_keeps_scoring_over_the_same_window():
    policy = adaptive(window=8, margin=0.05)
    rng = random.Random(3)
    for _ in range(8):
        serve(policy, f"m{rng.randrange(4)}")
    copy = policy.clone()
    for _ in range(30):
        model = f"m{rng.randrange(4)}"
        serve(policy, model)
        serve(copy, model)
    assert copy.standings() == policy.standings()
    assert copy.standings()["window_requests"] == 8


def test_refresh_and_resize_reach_the_tier_and_every_ghost_that_holds_the_model():
    policy = adaptive(window=8, margin=0.05)
    policy.admit("a", 10)
    policy.admit("b", 10)
    policy.refresh("a")
    assert all(policy.expert(name).recency()[-1] == "a" for name in EXPERTS)
    policy.resize("a", 60)
    assert policy.size_of("a") == 60 and policy.used_bytes == 70


def test_the_leaders_lead_is_a_percent_of_the_runner_ups_score_to_the_tenth():
    policy = adaptive(window=40, margin=0.1)
    assert policy.standings() == {
        "leader": policy.leader,
        "window_requests": 0,
        "window_swap_seconds": dict.fromkeys(EXPERTS, 0.0),
        "lead_percent": 0.0,  # nothing seen: no lead, whatever the leader
        "switches": 0,
    }
    rng = random.Random(2)  # a trace on which lfu-da leads by a fraction of a percent
    for _ in range(120):
        model = f"m{rng.randrange(4)}"
        if model in policy:
            policy.touch(model)
        else:
            policy.admit(model, 1000)
    standings = policy.standings()
    scores = standings["window_swap_seconds"]
    leader = standings["leader"]
    runner_up = min(score for name, score in scores.items() if name != leader)
    assert 0 < scores[leader] < runner_up
    assert standings["window_requests"] == 40
    expected = (runner_up - scores[leader]) / runner_up * 100
    assert standings["lead_percent"] == round(expected, 1)
    assert standings["lead_percent"] != round(expected)  # a tenth is shown


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"experts": {}}, "adaptive needs at least one expert"),
        ({"window": 0}, "window must be at least 1 request"),
        ({"margin": 1.0}, "margin must be in [0, 1)"),
        ({"margin": -0.01}, "margin must be in [0, 1)"),
    ],
)
def test_settings_out_of_range_are_refused_naming_them(kwargs, message):
    settings = {"experts": {"lru": create_policy("lru", capacity=2, ttl=5)}, **kwargs}
    with pytest.raises(ValueError) as err:
        AdaptivePolicy(capacity=2, **settings)
    assert str(err.value) == message


def test_the_edges_of_the_settings_are_taken():
    ghost = create_policy("lru", capacity=2, ttl=5)
    for window, margin in ((1, 0.0), (1, 0.99)):
        policy = AdaptivePolicy(experts={"lru": ghost}, capacity=2, window=window, margin=margin)
        assert (policy.window, policy.margin) == (window, margin)


def test_a_miss_scores_its_load_and_one_call_per_victim():
    clock = FakeClock()
    policy = one_expert(create_policy("lru", capacity=1, ttl=5, clock=clock), capacity=1)
    policy.admit("a", 1000)
    policy.admit("b", 2000)  # the ghost evicts a: one call
    expected = (
        policy.miss_seconds(1000)
        + policy.miss_seconds(2000)
        + COST.call_seconds(1)
        + COST.call_seconds(0)
    )
    assert COST.call_seconds(1) > 0
    assert policy.standings()["window_swap_seconds"] == {"lru": round(expected, 3)}


def test_the_window_forgets_its_oldest_request_first():
    """Window 2: after a miss, a hit and a miss, the score is the last miss alone."""
    clock = FakeClock()
    ghost = create_policy("lru", capacity=1, ttl=5, clock=clock)
    policy = AdaptivePolicy(experts={"lru": ghost}, capacity=1, window=2, cost_model=COST)
    policy.admit("a", 1000)
    policy.touch("a")
    policy.admit("b", 5000)
    expected = policy.miss_seconds(5000) + COST.call_seconds(1)
    assert policy.standings()["window_swap_seconds"] == {"lru": round(expected, 3)}
    assert policy.standings()["window_requests"] == 2


@pytest.mark.parametrize(("window", "switch_at"), [(4, 1), (6, 1), (8, 2), (11, 2), (12, 3)])
def test_a_cheaper_expert_takes_the_lead_once_a_quarter_window_has_passed(window, switch_at):
    """The second expert already holds a: it pays nothing for a, the leader pays a miss.
    It leads after window // 4 requests (at least 1), not one later."""
    clock = FakeClock()
    cold = create_policy("lru", capacity=2, ttl=5, clock=clock)
    warm = create_policy("lru", capacity=2, ttl=5, clock=clock)
    warm.admit("a", 1000)
    policy = AdaptivePolicy(
        experts={"cold": cold, "warm": warm}, capacity=2, clock=clock, window=window, margin=0.0
    )
    leaders = []
    for _ in range(switch_at + 1):
        serve(policy, "a", 1000)
        leaders.append(policy.leader)
    assert leaders == ["cold"] * (switch_at - 1) + ["warm", "warm"]
    assert policy.standings()["switches"] == 1


@pytest.mark.parametrize("tier", [Tier.CACHE, Tier.RESIDENT])
def test_a_miss_costs_a_load_and_on_the_disk_tier_a_push_too(tier):
    policy = create_policy("adaptive", capacity=2, ttl=5, tier=tier, cost_model=COST)
    size = 300_000_000
    push = COST.push_seconds(size) if tier is Tier.CACHE else 0.0
    assert policy.miss_seconds(size) == pytest.approx(COST.load_seconds(size) + push)
    assert COST.push_seconds(size) > 0
