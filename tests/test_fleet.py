"""Several workers behind one store: placement, hits that stick, failover, drain, discovery.

Real workers (threads, or processes where a test kills one) with tiny models;
the store places each request with ``policies.placement``.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from model_store_server.config import StoreSettings
from model_swap.probes import free_port
from model_swap.settings import SettingsError
from tests.conftest import A, B, C, ask, store_status, worker_status


def workers_by_id(store) -> dict[str, dict]:
    return {entry["id"]: entry for entry in store_status(store)["workers"]}


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def host_port(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture
def three_workers(start_worker, tmp_path):
    return [start_worker(model_cache_dir=tmp_path / f"cache-{i}") for i in range(3)]


def test_models_spread_over_free_workers_and_hits_stick(three_workers, start_store):
    store = start_store(worker_urls=tuple(w.url for w in three_workers), max_loaded_models=1)
    placed = {}
    for model in (A, B, C):
        r = ask(store, model)
        assert r.status_code == 200, r.text
        assert r.headers["X-Cache-Action"] == "load_from_store"
        placed[model] = r.headers["X-Worker"]
    # Free room first: each model on its own worker, nothing evicted anywhere.
    assert sorted(placed.values()) == sorted(w.url for w in three_workers)
    for _ in range(2):
        for model in (A, B, C):
            r = ask(store, model)
            assert r.headers["X-Cache-Action"] == "already_loaded"
            assert r.headers["X-Worker"] == placed[model]
            assert r.headers["X-Evicted"] == ""
    workers = workers_by_id(store)
    for model, url in placed.items():
        entry = workers[host_port(url)]
        assert entry["resident"] == [model] and entry["state"] == "healthy"
        assert entry["budgets"]["resident"]["max_models"] == 1
        assert worker_status(next(w for w in three_workers if w.url == url))["loaded"] == model
    # The seed's top-level fields describe the first worker.
    status = store_status(store)
    assert status["worker_url"] == three_workers[0].url
    assert status["loaded"] == workers[host_port(three_workers[0].url)]["resident"][0]


def test_a_cached_model_goes_where_its_file_is(three_workers, start_store):
    store = start_store(worker_urls=tuple(w.url for w in three_workers[:2]), max_loaded_models=1)
    first = ask(store, A).headers["X-Worker"]
    ask(store, B)  # the other worker (free room)
    ask(store, C)  # needs room somewhere: unloads one model, its file stays cached there
    again = ask(store, A)
    assert again.status_code == 200
    if again.headers["X-Cache-Action"] != "already_loaded":
        assert again.headers["X-Cache-Action"] == "load_from_local_store"
        assert again.headers["X-Worker"] == first


def test_log_line_names_the_worker_only_with_several(three_workers, start_store, caplog):
    caplog.set_level("INFO", logger="model_swap.console")
    single = start_store(three_workers[0])
    ask(single, A)
    several = start_store(worker_urls=tuple(w.url for w in three_workers[1:]))
    ask(several, A)
    lines = [r.getMessage() for r in caplog.records if "[/user_request]" in r.getMessage()]
    assert len(lines) == 2
    assert "worker=" not in lines[0]
    assert lines[1].endswith(f"worker={host_port(three_workers[1].url)}")


def test_metrics_carry_a_worker_label(three_workers, start_store):
    store = start_store(worker_urls=tuple(w.url for w in three_workers[:2]))
    ask(store, A)
    text = requests.get(f"{store.url}/metrics", timeout=10).text
    for worker in three_workers[:2]:
        assert f'model_swap_worker_up{{worker="{host_port(worker.url)}"}} 1.0' in text
    assert 'model_swap_worker_models{tier="resident",worker=' in text


def test_replicas_when_a_model_queue_is_long(three_workers, start_store):
    store = start_store(worker_urls=tuple(w.url for w in three_workers[:2]), replicate_after=1)
    first = ask(store, A).headers["X-Worker"]
    # One generation in flight on A there (held by the test): the next request brings a copy.
    node = store.app.extensions["swap_service"].fleet.find(host_port(first))
    hit = node.view.admit(A, time.monotonic() + 10)
    try:
        second = ask(store, A)
        assert second.status_code == 200
        assert second.headers["X-Worker"] != first
        assert second.headers["X-Cache-Action"] == "load_from_store"
    finally:
        hit.release()
    holders = [w for w in store_status(store)["workers"] if A in w["resident"]]
    assert len(holders) == 2


def test_drain_waits_for_generations_and_places_elsewhere(three_workers, start_store):
    urls = tuple(w.url for w in three_workers[:2])
    store = start_store(worker_urls=urls)
    busy = host_port(ask(store, A).headers["X-Worker"])
    # A generation running on A there, held by the test (as a slow client would hold it).
    node = store.app.extensions["swap_service"].fleet.find(busy)
    hit = node.view.admit(A, time.monotonic() + 10)
    answer: dict = {}
    drain = threading.Thread(
        target=lambda: answer.update(
            requests.post(f"{store.url}/workers/{busy}/drain", timeout=60).json()
        )
    )
    drain.start()
    try:
        wait_for(lambda: workers_by_id(store)[busy]["state"] == "draining", what="draining")
        time.sleep(0.3)
        assert not answer  # the drain waits for the generation
        other = ask(store, A)  # placed on the other worker, though A is resident here
        assert host_port(other.headers["X-Worker"]) != busy
    finally:
        hit.release()
    drain.join(timeout=30)
    assert answer["drained"] is True and answer["worker"] == busy
    undrained = requests.post(f"{store.url}/workers/{busy}/undrain", timeout=10).json()
    assert undrained["state"] == "healthy"
    assert requests.post(f"{store.url}/workers/nope:1/drain", timeout=10).status_code == 404
    assert requests.post(f"{store.url}/workers/0/drain?timeout=x", timeout=10).status_code == 400


def test_killed_worker_traffic_moves_and_it_comes_back_without_a_push(
    worker_process, start_store, tmp_path
):
    first = worker_process(cache_dir=tmp_path / "w0")
    second = worker_process(cache_dir=tmp_path / "w1")
    store = start_store(worker_urls=(first.url, second.url), health_interval=0.3)
    r = ask(store, A)
    assert r.status_code == 200 and r.headers["X-Worker"] == first.url
    first.kill()
    killed = time.monotonic()
    # Right away (before any probe): the request is placed again and served by the other.
    moved = ask(store, A)
    assert moved.status_code == 200, moved.text
    assert moved.headers["X-Worker"] == second.url
    down = wait_for(
        lambda: workers_by_id(store)[host_port(first.url)]["state"] == "down", what="down"
    )
    assert down and time.monotonic() - killed < 5
    statuses = [ask(store, model).status_code for model in (A, B, A, B)]
    assert statuses == [200, 200, 200, 200]
    pushed_before = worker_status(second)["received"]["bytes"]
    # Restarted on its port with its disk cache: re-read from its own /status, used again.
    restarted = worker_process(port=first.port, cache_dir=tmp_path / "w0")
    entry = wait_for(
        lambda: (
            (e := workers_by_id(store)[host_port(first.url)])["state"] == "healthy"
            and e["synced"]
            and e
        ),
        what="the worker back and synced",
    )
    assert A in entry["cached"]
    requests.post(f"{store.url}/workers/{host_port(second.url)}/drain", timeout=30)
    back = ask(store, A)
    assert back.status_code == 200
    assert back.headers["X-Worker"] == restarted.url
    assert back.headers["X-Cache-Action"] == "load_from_local_store"  # nothing pushed
    assert worker_status(restarted)["received"]["bytes"] == 0
    assert worker_status(second)["received"]["bytes"] == pushed_before


def test_all_workers_draining_is_a_503(three_workers, start_store):
    store = start_store(worker_urls=tuple(w.url for w in three_workers[:2]))
    for index in (0, 1):
        assert requests.post(f"{store.url}/workers/{index}/drain", timeout=30).ok
    r = ask(store, A)
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "worker_unavailable"


def test_dns_discovery_adds_and_drops_workers(start_worker, start_store, tmp_path):
    from inference_worker.app import create_app
    from inference_worker.config import WorkerSettings
    from model_swap.serving import ServerThread

    port = free_port()
    started = []
    for i, host in enumerate(("127.0.0.2", "127.0.0.3")):
        settings = WorkerSettings(
            worker_host=host, worker_port=port, model_cache_dir=tmp_path / f"dns-{i}"
        )
        started.append(ServerThread(create_app(settings), host=host, port=port).start())
    addresses = ["127.0.0.2"]
    try:
        store = start_store(
            worker_url="",
            discovery=f"dns+http://workers.test:{port}",
            discovery_interval=0.2,
            health_interval=0.2,
            resolver=lambda host, _port: list(addresses) if host == "workers.test" else [],
        )
        assert [w["id"] for w in store_status(store)["workers"]] == [f"127.0.0.2:{port}"]
        assert ask(store, A).headers["X-Worker"] == f"http://127.0.0.2:{port}"
        addresses.append("127.0.0.3")
        wait_for(lambda: len(store_status(store)["workers"]) == 2, what="the second worker")
        assert ask(store, B).headers["X-Worker"] == f"http://127.0.0.3:{port}"
        addresses.remove("127.0.0.2")
        wait_for(
            lambda: [w["id"] for w in store_status(store)["workers"]] == [f"127.0.0.3:{port}"],
            what="the first worker dropped",
        )
        r = ask(store, A)
        assert r.status_code == 200 and r.headers["X-Worker"] == f"http://127.0.0.3:{port}"
    finally:
        for server in started:
            server.stop()


def test_worker_urls_settings():
    settings = StoreSettings.from_env({"WORKER_URLS": "http://127.0.0.2:1, http://127.0.0.3:1/"})
    assert settings.worker_urls == ("http://127.0.0.2:1", "http://127.0.0.3:1")
    assert settings.worker_url == "http://127.0.0.2:1"
    assert StoreSettings.from_env({}).worker_urls == ("http://localhost:8080",)
    discovered = StoreSettings.from_env({"WORKER_URLS": "dns+http://workers:8080"})
    assert discovered.discovery == "dns+http://workers:8080" and discovered.worker_urls == ()
    for bad, message in (
        ({"WORKER_URLS": "dns+http://workers"}, "needs a port"),
        ({"WORKER_URLS": "http://a:1,http://a:1"}, "listed twice"),
        ({"WORKER_URLS": "http://a:1", "WORKER_URL": "http://b:1"}, "WORKER_URL"),
        ({"WORKER_URLS": "http://a:1,http://b:1", "TRANSPORT": "rdma"}, "rdma"),
        ({"REPLICATE_AFTER": "-1"}, "REPLICATE_AFTER"),
        ({"HEALTH_INTERVAL": "0"}, "HEALTH_INTERVAL"),
    ):
        with pytest.raises(SettingsError, match=message):
            StoreSettings.from_env(bad)


def test_each_placement_is_judged_with_its_own_workers_settings(
    start_worker, start_store, tmp_path
):
    """The store estimates a model's memory with the N_CTX and PARALLEL of the worker it is
    placed on, not the first worker's: the tiny model needs about
    23.4 MB with one sequence of 2048 tokens and 26.6 MB with four."""
    # No prompt cache on either (its KV_CACHE_BYTES would count in both estimates).
    one = start_worker(model_cache_dir=tmp_path / "one", parallel=1, kv_cache_bytes=0)
    four = start_worker(model_cache_dir=tmp_path / "four", parallel=4, kv_cache_bytes=0)
    store = start_store(
        worker_urls=(one.url, four.url), max_loaded_bytes=25_000_000, health_interval=3600
    )
    assert requests.post(f"{store.url}/workers/0/drain", timeout=30).ok  # only `four` is left
    r = ask(store, A)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "model_too_large"
    assert "MAX_LOADED_BYTES" in r.json()["error"]["message"]
    assert requests.post(f"{store.url}/workers/0/undrain", timeout=30).ok
    assert requests.post(f"{store.url}/workers/1/drain", timeout=30).ok  # only `one`
    r = ask(store, A)
    assert r.status_code == 200, r.text
    assert r.headers["X-Worker"] == one.url


def test_a_worker_answering_again_is_re_read_off_the_probe_pool(
    start_worker, start_store, tmp_path
):
    """The health round marks a worker up and goes on; the re-read, which waits for the
    slot, runs on its own thread (before: inside the probe, stalling every worker's probe
    and DNS discovery until SWAP_WAIT_TIMEOUT, then marking the worker down again)."""
    workers = [start_worker(model_cache_dir=tmp_path / f"w{i}") for i in range(2)]
    store = start_store(
        worker_urls=tuple(w.url for w in workers), health_interval=3600, swap_wait_timeout=2
    )
    placed = host_port(ask(store, A).headers["X-Worker"])
    fleet = store.app.extensions["swap_service"].fleet
    node = fleet.find(placed)
    fleet.mark_down(node, "a test took it down")
    slot = node.view.hold(A, time.monotonic() + 10)  # a swap on it, as a long push would
    try:
        fleet.probe(node)  # what the probe pool runs: it answers, it is up again
        assert node.healthy and workers_by_id(store)[placed]["state"] == "healthy"
        assert not node.view.synced
    finally:
        slot.commit(hit=False)
    wait_for(lambda: node.view.synced, what="the re-read after the swap")
    assert node.healthy


def test_a_worker_leaving_discovery_is_never_dropped_under_a_request_placed_on_it(models_dir):
    """Discovery decides to drop a vanished worker under the lock that placement holds: a
    request placed on it before it vanished keeps it until its generation is over."""
    from model_store_server.core.events import Events
    from model_store_server.core.fleet import Fleet
    from model_store_server.policies.cost_model import CostModel

    addresses = ["127.0.0.2"]
    settings = StoreSettings(
        models_dir=models_dir, worker_url="", discovery="dns+http://workers.test:9"
    )
    fleet = Fleet(settings, Events(), CostModel(), resolver=lambda host, port: list(addresses))
    (node,) = fleet.nodes
    placed, go, started = threading.Event(), threading.Event(), threading.Event()
    grants = []

    def request():
        with fleet.placed(A, 1, lambda node: 0) as chosen:
            placed.set()
            go.wait(10)
            grants.append(chosen.view.admit(A, time.monotonic() + 10))  # its swap starts
        started.set()

    real_quiet = node.view.quiet

    def quiet():
        # The moment discovery looks at the view: the request now moves from "placed" to
        # "started" (it leaves the placement's count as its swap begins).
        result = real_quiet()
        go.set()
        started.wait(2)
        return result

    node.view.quiet = quiet
    thread = threading.Thread(target=request)
    thread.start()
    assert placed.wait(10)
    addresses.clear()  # the worker leaves DNS
    fleet.discover()
    go.set()
    thread.join(10)
    assert node in fleet.nodes  # a request was placed on it: kept, draining
    assert node.state == "draining"
    grants[0].abort()
    fleet.discover()  # nothing placed or running any more: dropped
    assert node not in fleet.nodes
