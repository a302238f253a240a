"""The adaptive policy's hysteresis measured: how far apart its switches are, and that each
switch was earned by more than ``margin`` (the other tests only count switches on traces
where the leader changes rarely). Random traces with fixed seeds; pure, no server."""

from __future__ import annotations

import random

import pytest

from model_store_server.adaptive import EXPERTS
from model_store_server.cache_policy import AdaptivePolicy, create_policy
from model_store_server.cost_model import CostModel
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
