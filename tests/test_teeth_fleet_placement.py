"""Placement across a fleet's workers: what ``Fleet.placed`` hands ``place()`` for each
worker (the model, its size and footprint there, the models already placed there) and
when the one-worker store skips placement. No worker is called (127.0.0.1:9 refuses)."""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest
from flask import Flask

from model_store_server.config import StoreSettings
from model_store_server.core import events as ev
from model_store_server.core.fleet import HEALTHY, Fleet
from model_store_server.core.grants import Swap
from model_store_server.policies.cost_model import CostModel
from model_store_server.policies.greedy_dual import GDSFPolicy
from model_swap.errors import Unavailable
from model_swap.serving import ServerThread

W0, W1, W2 = "http://127.0.0.1:9", "http://127.0.0.1:10", "http://127.0.0.1:11"


def listed(*urls: str, **settings) -> Fleet:
    return Fleet(
        StoreSettings(worker_url="", worker_urls=urls, **settings), ev.Events(), CostModel()
    )


@pytest.fixture
def health_worker_url():
    """A worker that answers only ``GET /health``."""
    app = Flask(__name__)
    app.get("/health")(lambda: {"ok": True})
    with ServerThread(app) as server:
        yield server.url


def flat(footprint: int = 0):
    return lambda _node: footprint


def test_a_lone_worker_takes_a_retry_that_would_avoid_it():
    fleet = listed(W0)
    (node,) = fleet.nodes
    with fleet.placed("m.gguf", 0, flat(), avoid=frozenset({node.id})) as chosen:
        assert chosen is node  # nowhere else to go: the one-worker store as before


def test_a_lone_discovered_worker_is_still_placed_by_the_fleet():
    settings = StoreSettings(
        worker_url="", discovery="dns+http://workers.test:9", worker_networks=("10.0.0.0/8",)
    )
    addresses = ["10.0.0.1"]
    fleet = Fleet(settings, ev.Events(), CostModel(), resolver=lambda _h, _p: list(addresses))
    (node,) = fleet.nodes
    # a retry avoids the worker that failed it: with no other, a 503
    with pytest.raises(Unavailable), fleet.placed("m.gguf", 0, flat(), avoid=frozenset({node.id})):
        pass
    synced(node)
    grant = node.view.admit("m.gguf", time.monotonic() + 1)  # a generation runs there
    hit = grant.commit() if isinstance(grant, Swap) else grant
    addresses.clear()
    fleet.discover()
    assert fleet.nodes == [node]  # kept until its generation ends, but takes nothing new
    with pytest.raises(Unavailable), fleet.placed("m.gguf", 0, flat()):
        pass
    hit.release()


def test_a_second_request_for_a_model_follows_it_to_the_worker_it_was_placed_on():
    fleet = listed(W0, W1)
    first, second = fleet.nodes
    with fleet.placed("a.gguf", 10, flat(), avoid=frozenset({first.id})) as there:
        assert there is second
        with fleet.placed("a.gguf", 10, flat()) as again:
            assert again is second  # coming in there: not brought in twice
        with fleet.placed("b.gguf", 10, flat()) as other:
            assert other is first  # another model spreads to the idle worker


def test_a_request_goes_to_the_worker_where_its_model_is_loaded():
    fleet = listed(W0, W1)
    first, second = fleet.nodes
    synced(second)
    grant = second.view.admit("m.gguf", time.monotonic() + 1)  # loaded there, then idle
    (grant.commit() if isinstance(grant, Swap) else grant).release()
    with fleet.placed("m.gguf", 10, flat()) as chosen:
        assert chosen is second
    with fleet.placed("other.gguf", 10, flat()) as chosen:
        assert chosen is first  # on the second it would unload m.gguf


def test_room_on_disk_decides_with_the_sizes_of_models_already_placed():
    # Both workers take one model; the next one fits beside the small one only.
    fleet = listed(W0, W1, max_cache_size=4, max_loaded_models=4, max_cache_bytes=100)
    first, second = fleet.nodes
    with ExitStack() as held:
        assert held.enter_context(fleet.placed("big.gguf", 80, flat())) is first
        assert held.enter_context(fleet.placed("small.gguf", 30, flat())) is second
        with fleet.placed("new.gguf", 50, flat()) as chosen:
            assert chosen is second  # 30 + 50 fit in 100; 80 + 50 would evict big.gguf
        with fleet.placed("new.gguf", 10, flat()) as chosen:
            assert chosen is first  # fits on both: the first in order


def test_room_in_memory_decides_with_each_workers_own_footprint():
    fleet = listed(W0, W1, max_cache_size=4, max_loaded_models=4, max_loaded_bytes=100)
    first, second = fleet.nodes
    # The model's memory estimate depends on the worker (its context, its KV cache).
    estimates = {first.id: 90, second.id: 40}

    def footprint(node):
        return estimates[node.id]

    with fleet.placed("resident.gguf", 0, flat(30), avoid=frozenset({second.id})) as there:
        assert there is first
        with fleet.placed("other.gguf", 0, flat(30), avoid=frozenset({first.id})) as there:
            assert there is second
            with fleet.placed("new.gguf", 0, footprint) as chosen:
                assert chosen is second  # 30 + 40 fit there; 30 + 90 unloads on the first
                assert second.pending_sizes["new.gguf"] == (0, 40)


def test_a_model_crowded_on_its_worker_is_replicated_after_replicate_after_requests():
    fleet = listed(W0, W1, replicate_after=2)
    first, second = fleet.nodes
    with ExitStack() as held:
        assert held.enter_context(fleet.placed("m.gguf", 0, flat())) is first
        assert held.enter_context(fleet.placed("m.gguf", 0, flat())) is first  # 1 < 2
        with fleet.placed("m.gguf", 0, flat()) as chosen:
            assert chosen is second  # 2 requests wait for it: one more copy elsewhere


def test_with_every_worker_down_only_the_first_not_draining_is_tried():
    fleet = listed(W0, W1, W2)
    first, second, third = fleet.nodes
    with fleet.placed("busy.gguf", 0, flat(), avoid=frozenset({second.id, third.id})):
        for node in fleet.nodes:
            fleet.mark_down(node, "down")
        with fleet.placed("m.gguf", 0, flat()) as chosen:
            assert chosen is first  # though busier than the second: it may be back


# -- a lone worker's re-read when it answers again ---------------------------------------


def synced(node) -> None:
    with node.view.exclusive(time.monotonic() + 1) as exclusive:
        exclusive.end(synced=True)


def test_a_lone_worker_that_answers_with_a_stale_view_is_re_read_and_a_synced_one_is_not():
    fleet = listed(W0)
    (node,) = fleet.nodes
    recovered = []
    fleet.on_recovered = recovered.append
    assert not node.view.synced
    fleet.mark_up(node)
    assert recovered == [node]  # re-read now, not at the next request
    synced(node)
    fleet.mark_up(node)
    assert recovered == [node]


# -- each node's parts, from the store's settings -------------------------------------------


def test_each_worker_is_built_from_the_stores_settings_and_shares_the_fleets_parts():
    before = time.time()
    settings = StoreSettings(
        worker_url="",
        worker_urls=(W0, W1),
        worker_connect_timeout=1.5,
        worker_read_timeout=7.0,
        worker_pool_size=3,
        scheduler_max_wait=0.25,
        cache_policy=GDSFPolicy.name,  # a cost-aware policy: it prices misses by the model
    )
    events, cost_model = ev.Events(), CostModel()
    fleet = Fleet(settings, events, cost_model)
    assert fleet.transfers.running() == []
    for node in fleet.nodes:
        assert node.client.timeout == (1.5, 7.0) and node.client.pool_size == 3
        assert node.view.scheduler.max_wait == 0.25  # SCHEDULER_MAX_WAIT
        # the costs the store measures reach every worker's tiers
        assert node.view.cache.cost_model is cost_model
        assert node.view.resident.cost_model is cost_model
        executor = node.executor
        assert executor.client is node.client
        assert executor.events is events and executor.cost_model is cost_model
        assert executor.transfers is fleet.transfers  # pushes to any worker, in one place
        # a fresh worker: healthy, reachable, no error yet, marked up when it was added
        assert node.state == HEALTHY and node.reachable and node.last_error is None
        assert before <= node.changed_at <= time.time()


def test_a_worker_comes_back_without_a_recovery_callback_set(health_worker_url):
    fleet = listed(health_worker_url, W1)
    node = fleet.nodes[0]
    fleet.mark_down(node, "gone")
    assert not node.reachable
    fleet.probe(node)  # answers: up again, reachable (GET /ready), nothing else to call
    assert node.state == HEALTHY and node.reachable is True
