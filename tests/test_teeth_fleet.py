"""DNS discovery while a vanished worker still has work: it takes no new request but stays
until its generations end, then is dropped (the end-to-end test drops only idle workers).
A ``Fleet`` with a resolver the test controls; no worker is called."""

from __future__ import annotations

import time

from model_store_server.config import StoreSettings
from model_store_server.core import events as ev
from model_store_server.core.fleet import DRAINING, HEALTHY, Fleet
from model_store_server.core.grants import Swap
from model_store_server.policies.cost_model import CostModel

PORT = 8080


def discovered(addresses: list[str]) -> Fleet:
    settings = StoreSettings(
        worker_url="",
        discovery=f"dns+http://workers.test:{PORT}",
        worker_networks=("10.0.0.0/8",),  # discovery admits only listed networks
    )
    return Fleet(
        settings,
        ev.Events(),
        CostModel(),
        resolver=lambda host, _port: list(addresses) if host == "workers.test" else [],
    )


def generating(node, model: str = "m.gguf"):
    """Start a generation on ``node``'s view (as the store's bookkeeping sees it)."""
    view = node.view
    with view.exclusive(time.monotonic() + 1) as exclusive:
        exclusive.end(synced=True)
    grant = view.admit(model, time.monotonic() + 1)
    return grant.commit() if isinstance(grant, Swap) else grant


def ids(fleet: Fleet) -> list[str]:
    return [node.id for node in fleet.nodes]


def test_a_vanished_worker_is_kept_while_it_generates_then_dropped():
    addresses = ["10.0.0.1", "10.0.0.2"]
    fleet = discovered(addresses)
    first, second = fleet.nodes
    hit = generating(first)
    addresses.remove("10.0.0.1")
    fleet.discover()
    assert ids(fleet) == [f"10.0.0.1:{PORT}", f"10.0.0.2:{PORT}"]  # still running work
    assert first.state == DRAINING and not first.placeable
    assert second.state == HEALTHY
    with fleet.placed("m.gguf", 0, lambda _node: 0) as node:  # new work goes elsewhere
        assert node is second
    fleet.discover()
    assert ids(fleet) == [f"10.0.0.1:{PORT}", f"10.0.0.2:{PORT}"]
    hit.release()
    fleet.discover()
    assert ids(fleet) == [f"10.0.0.2:{PORT}"]


def test_a_vanished_worker_with_a_request_placed_on_it_is_kept():
    addresses = ["10.0.0.1"]
    fleet = discovered(addresses)
    with fleet.placed("m.gguf", 0, lambda _node: 0) as node:
        assert node.id == f"10.0.0.1:{PORT}"
        addresses[:] = ["10.0.0.2"]
        fleet.discover()
        assert f"10.0.0.1:{PORT}" in ids(fleet) and not node.placeable
    fleet.discover()
    assert ids(fleet) == [f"10.0.0.2:{PORT}"]


def test_a_worker_that_comes_back_before_it_was_dropped_is_healthy_again():
    addresses = ["10.0.0.1"]
    fleet = discovered(addresses)
    (node,) = fleet.nodes
    hit = generating(node)
    addresses.clear()
    fleet.discover()
    assert node.state == DRAINING
    addresses.append("10.0.0.1")
    fleet.discover()
    assert node.state == HEALTHY and node.placeable and fleet.nodes == [node]
    hit.release()
    fleet.discover()
    assert fleet.nodes == [node]
