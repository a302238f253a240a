"""DNS discovery's values, one at a time: what the resolver is asked, which address is
admitted after its identity proof, and the one log line each change of membership writes
(an operator's only view of it). A ``Fleet`` with a resolver the test controls; the
workers are small Flask apps that answer only the identity challenge (the network edge)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from flask import Flask, jsonify, request

from model_store_server.config import StoreSettings
from model_store_server.core import events as ev
from model_store_server.core.fleet import Fleet
from model_store_server.policies.cost_model import CostModel
from model_swap import worker_auth
from model_swap.serving import ServerThread
from tests.conftest import FakeClock, wait_for

LOG = "model_store_server.core.fleet"
PORT = 8080
TOKEN = "fleet-test-token"


def settings(**overrides) -> StoreSettings:
    values = {
        "worker_url": "",
        "discovery": f"dns+http://workers.test:{PORT}",
        "worker_networks": ("10.0.0.0/8",),
    }
    return StoreSettings(**{**values, **overrides})


def fleet_of(addresses: list[str], **overrides) -> Fleet:
    """A fleet whose resolver answers ``addresses`` for workers.test at its port only."""
    port = int(overrides["discovery"].rpartition(":")[2]) if "discovery" in overrides else PORT

    def resolver(host, asked_port):
        return list(addresses) if (host, asked_port) == ("workers.test", port) else []

    return Fleet(settings(**overrides), ev.Events(), CostModel(), resolver=resolver)


def lines(caplog) -> list[str]:
    """What the fleet logged (not the client's or the fake workers' lines)."""
    return [record.getMessage() for record in caplog.records if record.name == LOG]


def urls(fleet: Fleet) -> list[str]:
    return [node.url for node in fleet.nodes]


def test_the_resolver_is_asked_for_the_name_and_port_of_worker_urls():
    fleet = fleet_of(["10.0.0.1"])
    assert urls(fleet) == [f"http://10.0.0.1:{PORT}"]


def test_a_resolver_failure_is_logged_with_the_name_and_the_error(caplog):
    def resolver(_host, _port):
        raise OSError("no DNS")

    caplog.set_level("WARNING", logger=LOG)
    fleet = Fleet(settings(), ev.Events(), CostModel(), resolver=resolver)
    assert fleet.nodes == []
    assert lines(caplog) == ["could not resolve workers.test: no DNS"]


def test_addresses_outside_worker_networks_are_logged_eight_at_most(caplog):
    outside = [f"192.168.0.{n}" for n in range(1, 11)]
    caplog.set_level("INFO", logger=LOG)
    fleet = fleet_of(["10.0.0.1", *outside])
    assert urls(fleet) == [f"http://10.0.0.1:{PORT}"]
    assert lines(caplog) == [
        f"workers.test: refused outside WORKER_NETWORKS: {outside[:8]}",
        f"discovered worker http://10.0.0.1:{PORT}",
    ]


def test_max_discovered_workers_exactly_filled_is_no_warning_one_more_is(caplog):
    caplog.set_level("WARNING", logger=LOG)
    addresses = ["10.0.0.1", "10.0.0.2"]
    fleet = fleet_of(addresses, max_discovered_workers=3)
    addresses.append("10.0.0.3")  # room for exactly this one
    fleet.discover()
    assert len(fleet.nodes) == 3 and lines(caplog) == []
    addresses += ["10.0.0.4", "10.0.0.5"]
    fleet.discover()
    assert len(fleet.nodes) == 3
    assert lines(caplog) == [
        "workers.test resolved to 2 new workers; MAX_DISCOVERED_WORKERS=3 leaves room for 0"
    ]


def test_a_vanished_idle_worker_is_dropped_with_one_line(caplog):
    addresses = ["10.0.0.1", "10.0.0.2"]
    fleet = fleet_of(addresses)
    caplog.set_level("INFO", logger=LOG)
    addresses.remove("10.0.0.1")
    fleet.discover()
    assert urls(fleet) == [f"http://10.0.0.2:{PORT}"]
    assert lines(caplog) == [f"worker http://10.0.0.1:{PORT} is no longer in workers.test: dropped"]


# -- the identity proof (WORKER_TOKEN) -------------------------------------------------------


def identity_app(token: str) -> Flask:
    """A worker that answers only the store's identity challenge, under ``token``."""
    app = Flask(__name__)

    @app.post(worker_auth.IDENTITY_PATH)
    def identity():
        return jsonify(proof=worker_auth.proof(token, request.get_json()["nonce"]))

    return app


@pytest.fixture
def two_workers() -> Iterator[int]:
    """An impostor (another token) at 127.0.0.1 and the real worker at 127.0.0.2, both on
    one port (discovery dials every address at WORKER_URLS' port)."""
    impostor = ServerThread(identity_app("another-token"), host="127.0.0.1")
    impostor.start()
    try:
        real = ServerThread(identity_app(TOKEN), host="127.0.0.2", port=impostor.port)
        real.start()
        try:
            yield impostor.port
        finally:
            real.stop()
    finally:
        impostor.stop()


def test_an_address_that_fails_its_proof_is_skipped_and_the_next_admitted(two_workers, caplog):
    port = two_workers
    caplog.set_level("INFO", logger=LOG)
    fleet = fleet_of(
        ["127.0.0.2", "127.0.0.1"], discovery=f"dns+http://workers.test:{port}", worker_token=TOKEN
    )
    assert urls(fleet) == [f"http://127.0.0.2:{port}"]
    assert fleet.nodes[0].client.proven  # admitted with the client that proved it
    assert lines(caplog) == [
        f"discovered http://127.0.0.1:{port} is not admitted: "
        f"worker at http://127.0.0.1:{port} does not hold WORKER_TOKEN",
        f"discovered worker http://127.0.0.2:{port}",
    ]


# -- the background round's schedule (the fleet's clock) -------------------------------------


class HealthWorker:
    """A worker that answers only ``GET /health`` and counts the probes (one a round)."""

    def __init__(self):
        self.probes = 0
        app = Flask(__name__)

        @app.get("/health")
        def health():
            self.probes += 1
            return jsonify(ok=True)

        self.server = ServerThread(app)

    def rounds(self, count: int) -> None:
        """Wait for ``count`` more health rounds."""
        target = self.probes + count
        assert wait_for(lambda: self.probes >= target)


@pytest.fixture
def health_worker() -> Iterator[HealthWorker]:
    worker = HealthWorker()
    with worker.server:
        yield worker


@contextmanager
def background(fleet: Fleet) -> Iterator[Fleet]:
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


def test_the_background_round_re_resolves_once_per_discovery_interval(health_worker, caplog):
    clock = FakeClock()
    resolved_at = []
    answers = {1060.0: RuntimeError("a resolver bug")}

    def resolver(_host, _port):
        resolved_at.append(clock.now)
        if clock.now in answers:
            raise answers[clock.now]
        return ["127.0.0.1"]

    fleet = Fleet(
        settings(
            discovery=f"dns+http://workers.test:{health_worker.server.port}",
            health_interval=0.01,
            discovery_interval=60,
        ),
        ev.Events(),
        CostModel(),
        clock=clock,
        resolver=resolver,
    )
    caplog.set_level("INFO", logger=LOG)
    with background(fleet):
        health_worker.rounds(3)
        assert resolved_at == [1000.0]  # at start only: the interval has not passed
        clock.advance(60)
        assert wait_for(lambda: len(resolved_at) == 2)
        health_worker.rounds(2)  # a failed round is logged; the rounds go on
        failed = [r for r in caplog.records if r.name == LOG and r.levelname == "ERROR"]
        assert [r.getMessage() for r in failed] == ["the fleet's health round failed"]
        assert isinstance(failed[0].exc_info[1], RuntimeError)
        clock.advance(59.5)
        health_worker.rounds(3)
        assert resolved_at == [1000.0, 1060.0]  # the next one interval after that
        clock.advance(0.5)
        assert wait_for(lambda: len(resolved_at) == 3)


def test_listed_workers_are_probed_and_never_resolved(health_worker):
    resolved = []
    clock = FakeClock()
    fleet = Fleet(
        StoreSettings(worker_url=health_worker.server.url, health_interval=0.01),
        ev.Events(),
        CostModel(),
        clock=clock,
        resolver=lambda host, port: resolved.append((host, port)) or [],
    )
    with background(fleet):
        health_worker.rounds(2)
        clock.advance(3600)  # many DISCOVERY_INTERVALs: still no name to resolve
        health_worker.rounds(2)
    assert resolved == []
