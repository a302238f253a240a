"""DNS discovery while a vanished worker still has work: it takes no new request but stays
until its generations end, then is dropped (the end-to-end test drops only idle workers).
A ``Fleet`` with a resolver the test controls; no worker is called."""

from __future__ import annotations

import threading
import time

from model_store_server.config import StoreSettings
from model_store_server.core import events as ev
from model_store_server.core.fleet import DOWN, DRAINING, HEALTHY, Fleet, WorkerNotFound, worker_id
from model_store_server.core.grants import Swap
from model_store_server.core.worker_view import WorkerDown
from model_store_server.policies.cost_model import CostModel
from model_swap.errors import Unavailable
from tests.conftest import wait_for

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


# -- the fleet's values, one at a time (no worker answers: 127.0.0.1:9 refuses) ---------------


CLOSED = "http://127.0.0.1:9"


def listed(*urls: str, **settings) -> Fleet:
    return Fleet(
        StoreSettings(worker_url="", worker_urls=urls, **settings), ev.Events(), CostModel()
    )


def test_a_worker_id_is_host_and_port_with_the_schemes_default():
    assert worker_id("http://10.0.0.1:8080") == "10.0.0.1:8080"
    assert worker_id("http://w.test") == "w.test:80"
    assert worker_id("https://w.test") == "w.test:443"
    assert worker_id("https://w.test:8443/x") == "w.test:8443"


def test_find_by_id_url_or_index_and_an_unknown_key_names_the_workers():
    fleet = listed("http://127.0.0.1:9", "http://127.0.0.1:10")
    first, second = fleet.nodes
    assert [first.order, second.order] == [0, 1]
    assert fleet.find("127.0.0.1:10") is second
    assert fleet.find("http://127.0.0.1:9") is first
    assert fleet.find("0") is first and fleet.find("1") is second
    for key in ("2", "127.0.0.1:11", "x"):
        try:
            fleet.find(key)
        except WorkerNotFound as err:
            assert err.message == f"no worker {key!r} (workers: 127.0.0.1:9, 127.0.0.1:10)"
        else:
            raise AssertionError(f"{key} found")


def test_with_no_worker_find_says_none_and_first_is_the_first():
    try:
        discovered([]).find("0")
    except WorkerNotFound as err:
        assert err.message == "no worker '0' (workers: none)"
    else:
        raise AssertionError("found a worker in an empty fleet")
    fleet = listed("http://127.0.0.1:9", "http://127.0.0.1:10")
    assert fleet.first() is fleet.nodes[0]


def test_several_means_discovery_or_more_than_one_url():
    assert not listed(CLOSED).several
    assert listed(CLOSED, "http://127.0.0.1:10").several
    assert discovered([]).several


def test_before_any_worker_is_discovered_first_is_a_down_stand_in():
    fleet = discovered([])
    stand_in = fleet.first()
    assert fleet.nodes == [] and fleet.first() is stand_in
    assert stand_in.state == DOWN and not stand_in.placeable
    assert stand_in.last_error == "no worker discovered yet"
    assert stand_in.id == f"workers.test:{PORT}"
    assert stand_in.url == f"http://workers.test:{PORT}"


def test_on_added_sees_the_workers_there_and_those_discovered_later():
    addresses = ["10.0.0.1"]
    fleet = discovered(addresses)
    seen = []
    fleet.on_added(lambda node: seen.append((node.id, node.order)))
    assert seen == [(f"10.0.0.1:{PORT}", 0)]
    addresses += ["10.0.0.3", "10.0.0.2"]
    fleet.discover()
    assert seen[1:] == [(f"10.0.0.2:{PORT}", 1), (f"10.0.0.3:{PORT}", 2)]  # new ones in order


def test_discovery_admits_listed_networks_and_at_most_max_discovered_workers():
    addresses = ["10.0.0.5", "192.168.1.1", "127.0.0.2", "not-an-ip"]
    settings = StoreSettings(
        worker_url="",
        discovery=f"dns+http://workers.test:{PORT}",
        worker_networks=("10.0.0.0/8",),
        max_discovered_workers=3,
    )
    fleet = Fleet(settings, ev.Events(), CostModel(), resolver=lambda _h, _p: list(addresses))
    assert ids(fleet) == [f"10.0.0.5:{PORT}", f"127.0.0.2:{PORT}"]  # loopback always
    addresses[:] = ["10.0.0.5", "127.0.0.2", "10.0.0.9", "10.0.0.7"]
    fleet.discover()  # room for one more: the first in order
    assert ids(fleet) == [f"10.0.0.5:{PORT}", f"127.0.0.2:{PORT}", f"10.0.0.7:{PORT}"]
    fleet.discover()
    assert len(fleet.nodes) == 3


def test_a_resolver_failure_keeps_the_workers_known():
    answers = [["10.0.0.1"]]

    def resolver(_host, _port):
        if not answers:
            raise OSError("no DNS")
        return answers.pop()

    fleet = Fleet(
        StoreSettings(
            worker_url="",
            discovery=f"dns+http://workers.test:{PORT}",
            worker_networks=("10.0.0.0/8",),
        ),
        ev.Events(),
        CostModel(),
        resolver=resolver,
    )
    fleet.discover()
    assert ids(fleet) == [f"10.0.0.1:{PORT}"] and fleet.nodes[0].state == HEALTHY


def test_a_failed_probe_marks_one_of_several_down_and_its_waiting_requests_leave():
    fleet = listed(CLOSED, "http://127.0.0.1:10", health_interval=0.2)
    node, other = fleet.nodes
    fleet.probe(node)
    assert node.state == DOWN and not node.placeable and node.last_error
    assert other.state == HEALTHY
    try:
        node.view.admit("m.gguf", time.monotonic() + 1)
    except WorkerDown:
        pass
    else:
        raise AssertionError("a down worker's view admitted a request")
    with fleet.placed("m.gguf", 0, lambda _node: 0) as chosen:
        assert chosen is other


def test_mark_up_brings_a_worker_back_once_and_re_reads_it(caplog):
    caplog.set_level("INFO", logger="model_store_server.core.fleet")
    fleet = listed(CLOSED, "http://127.0.0.1:10")
    node = fleet.nodes[0]
    recovered = []
    fleet.on_recovered = recovered.append
    fleet.mark_up(node)
    assert recovered == []  # it was never down
    fleet.mark_down(node, "gone")
    assert node.state == DOWN and node.last_error == "gone"
    fleet.mark_up(node)
    assert node.state == HEALTHY and recovered == [node]
    assert caplog.messages == [
        "worker 127.0.0.1:9 is down: gone",
        "worker 127.0.0.1:9 answers again",
    ]
    assert not node.view.snapshot().synced
    with node.view.admit("m.gguf", time.monotonic() + 1):  # up again: admitted (a swap)
        pass


def test_one_worker_is_never_marked_down():
    fleet = listed(CLOSED)
    (node,) = fleet.nodes
    fleet.probe(node)
    assert node.last_error and node.state == HEALTHY
    with fleet.placed("m.gguf", 0, lambda _node: 0) as chosen:
        assert chosen is node


def test_placed_counts_the_request_pending_until_its_block_ends():
    fleet = listed(CLOSED, "http://127.0.0.1:10")
    with fleet.placed("m.gguf", 100, lambda _node: 300) as node:
        assert node.pending == {"m.gguf": 1} and node.pending_sizes == {"m.gguf": (100, 300)}
        with fleet.placed("m.gguf", 100, lambda _node: 300) as again:
            assert again is node and node.pending["m.gguf"] == 2  # the model is coming here
        assert node.pending["m.gguf"] == 1 and "m.gguf" in node.pending_sizes
    assert node.pending == {} and node.pending_sizes == {}


def test_with_every_worker_down_one_not_draining_is_tried_and_none_left_is_a_503():
    fleet = listed(CLOSED, "http://127.0.0.1:10", "http://127.0.0.1:11")
    first, second, third = fleet.nodes
    for node in fleet.nodes:
        fleet.mark_down(node, "down")
    first.draining = True
    with fleet.placed("m.gguf", 0, lambda _node: 0) as chosen:
        assert chosen is second  # the first not draining, though down
    with fleet.placed("m.gguf", 0, lambda _node: 0, avoid=frozenset({second.id})) as chosen:
        assert chosen is third
    try:
        with fleet.placed("m.gguf", 0, lambda _node: 0, avoid=frozenset({second.id, third.id})):
            raise AssertionError("placed on a draining worker")
    except Unavailable as err:
        assert err.type == "worker_unavailable"
        assert err.headers == {"Retry-After": "1"}
        assert err.message == "no worker is available (all down, draining or none discovered)"


def test_the_background_round_probes_every_worker_and_discovers_new_ones():
    addresses = ["127.0.0.1"]
    settings = StoreSettings(
        worker_url="",
        discovery="dns+http://workers.test:9",
        discovery_interval=0.05,
        health_interval=0.05,
    )
    fleet = Fleet(settings, ev.Events(), CostModel(), resolver=lambda _h, _p: list(addresses))
    fleet.start()
    try:
        assert wait_for(lambda: fleet.nodes[0].state == DOWN)  # port 9 refuses: probed
        addresses.append("127.0.0.2")
        assert wait_for(lambda: len(fleet.nodes) == 2)  # re-resolved in the background
        assert wait_for(lambda: fleet.nodes[1].state == DOWN)
    finally:
        fleet.stop()


def test_one_listed_worker_is_probed_for_readiness_but_never_marked_down():
    fleet = listed(CLOSED, health_interval=0.05)
    fleet.start()
    try:
        node = fleet.nodes[0]
        assert wait_for(lambda: not node.reachable)  # probed in the background: /ready reads it
        assert "unreachable" in node.last_error
        time.sleep(0.2)
        assert node.state != DOWN and node.placeable  # a lone worker is still the one to try
    finally:
        fleet.stop()


class HealthServer:
    """A worker that answers only ``GET /health`` (200), or accepts and never answers."""

    def __init__(self, silent: bool = False):
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.silent = silent
        self.stopped = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        held = []
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.silent:
                held.append(conn)  # read nothing, answer nothing
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"ok":true}\n')

    def close(self):
        self.stopped = True
        self.sock.close()


def test_a_probe_that_fails_names_the_error_and_one_that_answers_brings_the_worker_back():
    server = HealthServer()
    try:
        fleet = listed(server.url, CLOSED)
        node, closed = fleet.nodes
        fleet.probe(closed)
        assert closed.last_error == (
            "worker at http://127.0.0.1:9 is unreachable "
            "(ConnectionRefusedError(111, 'Connection refused'))"
        )
        fleet.mark_down(node, "gone")
        recovered = []
        fleet.on_recovered = recovered.append
        fleet.probe(node)
        assert node.state == HEALTHY and recovered == [node]
        fleet.probe(node)  # already up: nothing more
        assert recovered == [node]
    finally:
        server.close()


def test_a_probe_of_a_silent_worker_gives_up_after_a_second_at_least():
    server = HealthServer(silent=True)
    try:
        fleet = listed(server.url, CLOSED, health_interval=0.05)
        node = fleet.nodes[0]
        started = time.monotonic()
        fleet.probe(node)  # bounded by max(1 s, HEALTH_INTERVAL)
        assert time.monotonic() - started >= 1.0
        assert node.state == DOWN and node.last_error
    finally:
        server.close()
