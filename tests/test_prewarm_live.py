"""PREWARM=histogram in a live store with a real worker and tiny models, and the view's
``background`` grant that a prewarm takes (it never delays a request)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from model_store_server.core.worker_view import WorkerView
from model_store_server.decision import Action
from model_store_server.policies import Tier, create_policy
from model_store_server.policies.arrivals import Arrivals, HistogramShape
from model_store_server.policies.prewarm import carry, choose, keep_after_use
from model_swap.tiny_models import write_tiny_model
from tests.conftest import ask, temp_files, wait_for, worker_status

A, B = "tiny-a.gguf", "tiny-b.gguf"


def metric(store, name: str) -> float:
    text = requests.get(f"{store.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def periodic_store(start_store, worker):
    """A store that learns a one-second alternation of two models quickly: one model in
    memory, prewarm on, 0.5 s ahead, 0.1 s bins."""
    return start_store(
        worker,
        max_cache_size=2,
        max_loaded_models=1,
        prewarm="histogram",
        prewarm_margin=0.5,
        prewarm_bin_seconds=0.1,
    )


@pytest.mark.slow  # a periodic client for about 25 s
def test_two_models_on_a_fixed_period_are_answered_already_loaded(start_store, worker):
    """MAX_LOADED_MODELS=1, a and b alternating every second (each every 2 s): after the
    histograms have learned, most requests find their model already loaded."""
    store = periodic_store(start_store, worker)
    step, learning, measured = 1.0, 14, 12
    actions = []
    start = time.monotonic()
    for index in range(learning + measured):
        time.sleep(max(0.0, start + index * step - time.monotonic()))
        response = ask(store, A if index % 2 == 0 else B, max_tokens=2)
        assert response.status_code == 200, response.text
        actions.append(response.headers["X-Cache-Action"])
    print("actions:", actions)
    late = actions[learning:]
    assert late.count("already_loaded") >= 0.75 * measured, actions
    assert set(actions) <= {"already_loaded", "load_from_local_store", "load_from_store"}
    assert metric(store, "model_swap_prewarm_loads_total") >= 0.75 * measured
    assert metric(store, "model_swap_prewarm_hits_total") >= 0.75 * measured
    explain = requests.get(f"{store.url}/status", timeout=10).json()["explain"]["prewarm"]
    assert explain["models"][A]["representative"]
    assert any("expected in" in entry["reason"] for entry in explain["recent"])


def test_prewarm_off_by_default_changes_nothing(start_store, worker):
    store = start_store(worker, max_cache_size=2, max_loaded_models=1)
    actions = []
    for index in range(10):
        time.sleep(0.05)  # PREWARM off: the pace does not matter
        actions.append(ask(store, A if index % 2 == 0 else B).headers["X-Cache-Action"])
    assert "already_loaded" not in actions[2:]
    status = requests.get(f"{store.url}/status", timeout=10).json()
    assert "prewarm" not in status["explain"]
    assert "model_swap_prewarm_loads_total" not in requests.get(f"{store.url}/metrics").text


def test_histograms_survive_a_restart_in_the_state_directory(start_store, worker, tmp_path):
    settings = dict(prewarm="histogram", prewarm_bin_seconds=0.1, state_dir=str(tmp_path))
    store = start_store(worker, **settings)
    for _ in range(6):
        ask(store, A, max_tokens=1)
        time.sleep(0.2)
    store.app.extensions["stop"]()  # what the server runs at shutdown
    saved = (tmp_path / "arrivals.json").read_text()
    assert A in saved
    again = start_store(worker, **settings)
    explain = requests.get(f"{again.url}/status", timeout=10).json()["explain"]["prewarm"]
    assert explain["models"][A]["idle_times"] == 5


def test_a_request_for_another_model_drops_a_prewarm_being_pushed(
    start_store, worker, models_dir, monkeypatch
):
    """A request for b arrives while a prewarm of big (40 MB) is being pushed: the push
    stops midway (the worker keeps nothing of big), b is served without big being loaded
    first, and the drop is counted. The push is held after its first 16 MiB step until b's
    request is queued (a hook on the store's worker client), so nothing depends on timing."""
    big = "tiny-big.gguf"
    write_tiny_model(models_dir / big, size_mb=40)
    store = start_store(worker, max_loaded_models=1, prewarm="histogram", prewarm_margin=1.0)
    prewarmer = store.app.extensions["prewarmer"]
    node = prewarmer.service.fleet.first()
    assert ask(store, A, max_tokens=1).status_code == 200  # the view is synced
    pushing, checked, steps = threading.Event(), threading.Event(), []
    upload = node.client.upload_file

    def held(endpoint, path, headers, on_sent=None):
        if headers["X-Model-Name"] != big:
            return upload(endpoint, path, headers, on_sent=on_sent)
        if steps:  # the dropped prewarm tried again once b is served: after the checks
            checked.wait(20)
            return upload(endpoint, path, headers, on_sent=on_sent)

        def step(sent):
            steps.append(sent)
            if len(steps) == 1:
                pushing.set()
                wait_for(lambda: len(node.view.scheduler) > 0, timeout=20)  # b is queued
            on_sent(sent)

        return upload(endpoint, path, headers, on_sent=step)

    monkeypatch.setattr(node.client, "upload_file", held)
    try:
        now = prewarmer.clock()
        for k in range(8, 0, -1):  # big every 2 s, the last 2 s ago: its next request is due
            prewarmer.arrivals.observe(big, now=now - 2 * k)
        prewarmer._wake.set()
        assert pushing.wait(20), "no prewarm of big started"
        response = ask(store, B, max_tokens=1)
        assert response.status_code == 200, response.text
        assert response.headers["X-Cache-Action"] == "load_from_store"
        assert response.headers["X-Model"] == B
        assert metric(store, "model_swap_prewarm_dropped_total") == 1
        assert metric(store, "model_swap_prewarm_loads_total") == 0  # big was never loaded
        assert len(steps) == 1  # cut after its first step, not sent to its end
        report = worker_status(worker)
        cache = Path(report["model_cache_dir"])
        assert wait_for(lambda: not temp_files(cache), timeout=10)
        assert big not in [entry["name"] for entry in report["cached"]]
        assert not (cache / big).exists()
        # Not whether b is still resident: the dropped prewarm tries again as soon as b is
        # served, and its swap may unload b before its push reaches the hook (seen once in a
        # fast-suite run).
    finally:
        checked.set()


def test_with_several_workers_a_prewarm_goes_where_its_request_will(
    start_store, start_worker, tmp_path
):
    workers = [start_worker(model_cache_dir=tmp_path / f"cache-{i}") for i in range(2)]
    store = start_store(
        worker_urls=tuple(w.url for w in workers),
        max_loaded_models=1,
        prewarm="histogram",
        prewarm_margin=1.0,
    )
    first = ask(store, A, max_tokens=1)  # the views are synced; a is on one worker
    assert first.status_code == 200, first.text
    prewarmer = store.app.extensions["prewarmer"]
    now = prewarmer.clock()
    for k in range(8, 0, -1):  # b every 2 s, the last 2 s ago: its next request is due
        prewarmer.arrivals.observe(B, now=now - 2 * k)
    prewarmer._wake.set()
    assert wait_for(lambda: metric(store, "model_swap_prewarm_loads_total") >= 1, timeout=20)
    response = ask(store, B, max_tokens=1)
    assert response.headers["X-Cache-Action"] == "already_loaded"
    assert response.headers["X-Worker"] != first.headers["X-Worker"]  # a free worker: a stays
    assert metric(store, "model_swap_prewarm_hits_total") == 1
    explain = requests.get(f"{store.url}/status", timeout=10).json()["explain"]["prewarm"]
    assert explain["active"] and explain["recent"][0]["model"] == B


# -- the grant a prewarm takes (no HTTP) -------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def view_with(resident_models, clock, memory=1, policy="lru"):
    cache = create_policy(policy, capacity=3, ttl=5, clock=clock, tier=Tier.CACHE)
    resident = create_policy(policy, capacity=memory, ttl=5, clock=clock, tier=Tier.RESIDENT)
    view = WorkerView(cache, resident, max_wait=2.0, clock=clock)
    view.apply_worker_report(
        {name: 100 for name in (*resident_models, "c")}, {name: 100 for name in resident_models}
    )
    return view


def prewarm_plan(arrivals, clock, model_sizes=100):
    def plan(cache, resident, busy):
        found = choose(
            arrivals,
            cache,
            resident,
            now=clock(),
            margin=5,
            sizes=lambda m: model_sizes,
            footprints=lambda m: model_sizes,
            busy=busy,
        )
        return None if found is None else carry(found, cache, resident, size=100, footprint=100)

    return plan


def learned(model: str, clock: FakeClock) -> Arrivals:
    arrivals = Arrivals(HistogramShape())
    for k in range(8, 0, -1):
        arrivals.observe(model, now=clock.now + 3 - 60 * k)  # next expected in ~3 s
    return arrivals


def test_a_request_arriving_during_a_prewarm_of_its_model_waits_for_that_load():
    clock = FakeClock()
    view = view_with(["a"], clock, memory=2)
    swap = view.background(prewarm_plan(learned("c", clock), clock))
    assert swap is not None and swap.decision.model == "c"
    assert swap.decision.action is Action.LOAD_FROM_LOCAL_STORE
    got = {}

    def request():
        got["grant"] = view.admit("c", time.monotonic() + 10, size=100, footprint=100)

    waiting = threading.Thread(target=request)
    waiting.start()
    assert wait_for(lambda: len(view.scheduler) == 1, timeout=5)
    assert "grant" not in got  # it waits for the prewarm's load, not for a load of its own
    assert not swap.stopping.is_set()  # its own model's prewarm goes on
    # a hit on another resident model is not delayed by the prewarm
    hit = view.admit("a", time.monotonic() + 0.5)
    assert hit.decision.action is Action.ALREADY_LOADED
    hit.release()
    swap.commit(hit=False)
    waiting.join(timeout=5)
    grant = got["grant"]
    assert grant.decision.action is Action.ALREADY_LOADED  # served by the prewarm's load
    assert not grant.owns_swap
    grant.release()


def test_a_request_for_another_model_stops_the_prewarm_and_is_decided_first():
    clock = FakeClock()
    view = view_with(["a"], clock, memory=1)
    swap = view.background(prewarm_plan(learned("c", clock), clock))
    assert swap.decision.model == "c" and swap.decision.unloaded == ("a",)
    got = {}
    waiting = threading.Thread(
        target=lambda: got.update(grant=view.admit("b", time.monotonic() + 10, size=100))
    )
    waiting.start()
    assert wait_for(swap.stopping.is_set, timeout=5)  # b needs the slot
    view.stopped(swap)  # what the executor does once the push is cut
    waiting.join(timeout=5)
    grant = got["grant"]
    assert grant.decision.action is Action.LOAD_FROM_STORE
    assert grant.decision.unloaded == ()  # c never reached memory: nothing to take away
    assert "c" not in view.resident and "c" in view.cache  # c's file was already there
    grant.abort(synced=True)


def test_no_prewarm_while_a_request_waits_or_over_a_generating_model():
    clock = FakeClock()
    view = view_with(["a"], clock, memory=1)
    arrivals = learned("c", clock)
    generating = view.admit("a", time.monotonic() + 1)  # a generation runs on a
    swap = view.background(prewarm_plan(arrivals, clock))
    # c would need a's memory: never taken from a running generation (disk-only: c's
    # file is already there, so nothing at all)
    assert swap is None
    generating.release()
    assert view.background(prewarm_plan(arrivals, clock)) is not None  # now it may
    view = view_with(["a"], clock, memory=1)
    with view.gate.cond:  # a request for b queued for the slot
        waiter = view.scheduler.arrive("b", clock())
    assert view.background(prewarm_plan(arrivals, clock)) is None
    with view.gate.cond:
        view.scheduler.leave(waiter)
    assert view.background(prewarm_plan(arrivals, clock)) is not None


def test_under_a_ttl_a_model_stays_loaded_to_its_histogram_tail():
    """The view's idle_keep hook (the prewarmer's keep_after_use): once a request ends, a
    model with a histogram stays until its tail instead of the fixed TTL (5 s here); one
    asked with a keep_alive keeps that; a model without a histogram keeps the policy's."""
    clock = FakeClock()
    view = view_with(["a", "b"], clock, memory=2, policy="ttl")
    arrivals = learned("a", clock)  # a timer of 60 s, the last request 57 s ago
    arrivals.observe("a", now=clock.now)
    view.idle_keep = lambda model: keep_after_use(arrivals, model, now=clock(), margin=5)
    for model in ("a", "b"):
        view.admit(model, time.monotonic() + 1).release()
    assert view.resident.ttl_of("a") == pytest.approx(66)  # 60-61 s ahead, plus the margin
    assert view.cache.ttl_of("a") == pytest.approx(66)
    assert view.resident.ttl_of("b") == 5
    clock.now += 30
    assert view.resident.expired() == ["b"]
    view = view_with(["a"], clock, memory=2, policy="ttl")
    view.idle_keep = lambda model: keep_after_use(arrivals, model, now=clock(), margin=5)
    view.admit("a", time.monotonic() + 1, keep_alive=2).release()
    assert view.resident.ttl_of("a") == 2


@pytest.mark.slow  # a periodic client for about 25 s
def test_replay_against_a_live_store_reports_prewarm(start_store, worker, models_dir):
    """``replay`` counts cold starts and the store's prewarms; the simulator, calibrated from
    the same store's /status, runs with the same PREWARM settings."""
    from model_swap_lab.calibrate import simulated_vs_live, store_calibration, store_status
    from model_swap_lab.replay import replay
    from model_swap_lab.trace import Request, sizes_from_dir

    store = periodic_store(start_store, worker)
    trace = [Request(float(index), A if index % 2 == 0 else B) for index in range(26)]
    result = replay(trace, store.url, speed=1.0)
    assert result["errors"] == 0
    assert result["prewarm_loads"] >= 5
    assert result["prewarm_hits"] >= 5
    assert result["cold_starts"] == result["requests"] - result["already_loaded"]
    assert result["cold_starts"] <= 18
    status = store_status(store.url)
    config, _ = store_calibration(status)
    assert (config.prewarm, config.prewarm_margin, config.prewarm_bin_seconds) == (
        "histogram",
        0.5,
        0.1,
    )
    compared = simulated_vs_live(trace, sizes_from_dir(models_dir), result, status)
    assert compared["simulated_prewarm_loads"] > 0
