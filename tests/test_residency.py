"""Several resident models through real servers: budgets, headers, keep_alive, the idle
sweep, explicit control (/models/...), preload and concurrency."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import requests

from inference_worker.config import WorkerSettings
from inference_worker.prefix import kv_streams
from model_store_server.decision import Action
from model_swap.footprint import estimate
from tests.conftest import (
    A,
    B,
    C,
    ask,
    assert_agree,
    store_status,
    wait_for,
    worker_status,
)

N_CTX = 256


@pytest.fixture
def worker(start_worker):
    return start_worker(n_ctx=N_CTX)


@pytest.fixture
def footprint(models_dir) -> int:
    """The estimated memory of one tiny model (all three have the same shape), with the KV
    cache of the worker's PARALLEL sequences of N_CTX tokens (and prefix reuse's spare one),
    and the host memory of its prompt cache (KV_CACHE_BYTES)."""
    settings = WorkerSettings()
    n_seq = kv_streams(settings.parallel, settings.prefix_cache)
    return estimate(models_dir / A, N_CTX, n_seq=n_seq).total_bytes + settings.kv_cache_bytes


def resident(server) -> list[str]:
    return [
        entry["name"]
        for entry in requests.get(f"{server.url}/status", timeout=10).json()["resident"]
    ]


def action(response) -> tuple[str, str, str]:
    assert response.status_code == 200, response.text
    h = response.headers
    return h["X-Cache-Action"], h["X-Evicted"], h["X-Unloaded"]


def test_three_resident_models_alternate_as_hits(start_store, worker, footprint):
    store = start_store(worker, max_cache_size=3, max_loaded_models=3)
    first = [action(ask(store, m)) for m in (A, B, C)]
    assert first == [("load_from_store", "", "")] * 3
    for _ in range(3):
        for m in (A, B, C):
            r = ask(store, m)
            assert action(r) == ("already_loaded", "", "") and r.headers["X-Model"] == m
    status = store_status(store)
    assert [e["name"] for e in status["resident"]] == [A, B, C]  # most recently used last
    assert status["loaded"] == C
    assert all(e["estimated_bytes"] == footprint for e in status["resident"])
    assert status["budgets"]["resident"] == {
        "max_models": 3,
        "models": 3,
        "max_bytes": None,
        "bytes": 3 * footprint,
        "ttl_seconds": None,
    }
    assert resident(worker) == [A, B, C]
    assert worker_status(worker)["loads"] == 3
    assert_agree(store, worker)


def test_defaults_unload_the_previous_model_and_keep_the_seed_log_line(start_store, worker, caplog):
    store = start_store(worker)
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        assert action(ask(store, A)) == ("load_from_store", "", "")
        assert action(ask(store, B)) == ("load_from_store", "", A)
        assert action(ask(store, A)) == ("load_from_local_store", "", B)
        assert action(ask(store, C)) == ("load_from_store", B, A)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[/user_request]")]
    assert len(lines) == 4 and not any("unloaded=" in line for line in lines)
    assert lines[-1].endswith("cached=[tiny-a.gguf,tiny-c.gguf] evicted=[tiny-b.gguf]")
    assert resident(worker) == [C]
    assert_agree(store, worker)


def test_log_line_names_unloads_when_several_models_may_be_resident(start_store, worker, caplog):
    store = start_store(worker, max_cache_size=3, max_loaded_models=2)
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        for m in (A, B, C):
            ask(store, m)
    last = [r.getMessage() for r in caplog.records if "[/user_request]" in r.getMessage()][-1]
    assert last.endswith(f"evicted=[] unloaded=[{A}]")


def test_memory_budget_in_bytes(start_store, worker, footprint):
    store = start_store(
        worker, max_cache_size=3, max_loaded_models=3, max_loaded_bytes=2 * footprint
    )
    ask(store, A)
    ask(store, B)
    assert action(ask(store, C)) == ("load_from_store", "", A)
    assert resident(worker) == [B, C]
    assert sorted(e["name"] for e in worker_status(worker)["cached"]) == [A, B, C]
    assert action(ask(store, A)) == ("load_from_local_store", "", B)
    budget = store_status(store)["budgets"]["resident"]
    assert budget["bytes"] == 2 * footprint <= budget["max_bytes"]
    assert_agree(store, worker)


def test_disk_budget_in_bytes(start_store, worker, models_dir):
    size = (models_dir / A).stat().st_size
    store = start_store(worker, max_cache_size=5, max_cache_bytes=2 * size)
    ask(store, A)
    ask(store, B)
    assert action(ask(store, C)) == ("load_from_store", A, B)
    assert store_status(store)["budgets"]["cache"]["bytes"] == 2 * size
    assert_agree(store, worker)


@pytest.mark.parametrize("setting", ["max_loaded_bytes", "max_cache_bytes"])
def test_a_model_larger_than_a_budget_is_a_clear_400_and_evicts_nothing(
    start_store, worker, setting
):
    store = start_store(worker, **{setting: 1000})
    r = ask(store, A)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "model_too_large" and setting.upper() in error["message"]
    assert worker_status(worker)["cached"] == [] and resident(worker) == []


def test_keep_alive_zero_unloads_right_after_the_answer(start_store, worker):
    store = start_store(worker, max_cache_size=3, max_loaded_models=3)
    r = requests.post(
        f"{store.url}/user_request",
        json={"model": A, "prompt": "hi", "max_tokens": 2, "keep_alive": 0},
        timeout=30,
    )
    assert r.status_code == 200
    assert wait_for(lambda: resident(worker) == [], timeout=10)
    assert [e["name"] for e in worker_status(worker)["cached"]] == [A]  # file kept
    assert action(ask(store, A)) == ("load_from_local_store", "", "")


def test_keep_alive_seconds_through_the_openai_api(start_store, worker):
    from openai import OpenAI

    store = start_store(worker, max_cache_size=3, max_loaded_models=3)
    client = OpenAI(base_url=f"{store.url}/v1", api_key="unused")
    client.completions.create(model=A, prompt="hi", max_tokens=2, extra_body={"keep_alive": "1s"})
    client.completions.create(model=B, prompt="hi", max_tokens=2, extra_body={"keep_alive": -1})
    status = store_status(store)
    assert {e["name"]: e["keep_alive"] for e in status["resident"]} == {A: 1.0, B: -1.0}
    assert wait_for(lambda: resident(worker) == [B], timeout=10)


@pytest.mark.parametrize("bad", ["soon", True, "1d", [1], "1h 30m"])
def test_bad_keep_alive_is_a_400(start_store, worker, bad):
    store = start_store(worker)
    r = requests.post(
        f"{store.url}/user_request",
        json={"model": A, "prompt": "hi", "keep_alive": bad},
        timeout=30,
    )
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]["message"]


def test_idle_sweep_unloads_on_time_and_the_file_goes_at_the_next_request(start_store, worker):
    store = start_store(worker, cache_policy="ttl", ttl_seconds=0.5)
    ask(store, A)
    assert wait_for(lambda: resident(worker) == [], timeout=10), "unloaded without a request"
    assert [e["name"] for e in worker_status(worker)["cached"]] == [A]
    assert action(ask(store, B)) == ("load_from_store", A, "")  # the seed's lazy eviction


# -- explicit control ----------------------------------------------------------------


def control(store, method, path, **kw):
    return requests.request(method, f"{store.url}/models/{path}", timeout=30, **kw)


def test_load_unload_evict_endpoints(start_store, worker, caplog):
    store = start_store(worker, max_cache_size=3, max_loaded_models=2)
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        r = control(store, "POST", f"{A}/load")
        assert r.status_code == 200 and r.json()["action"] == "load_from_store"
        assert control(store, "POST", f"{A}/load").json()["action"] == "already_loaded"
        assert resident(worker) == [A] and worker_status(worker)["last_generation"] is None
        r = control(store, "POST", f"{A}/unload")
        assert r.status_code == 200 and r.json()["unloaded"] == [A]
        assert resident(worker) == [] and [e["name"] for e in worker_status(worker)["cached"]] == [
            A
        ]
        assert control(store, "POST", f"{A}/unload").status_code == 404
        r = control(store, "DELETE", A)
        assert r.status_code == 200 and r.json()["evicted"] == [A]
        assert worker_status(worker)["cached"] == []
        assert control(store, "DELETE", A).status_code == 404
        assert control(store, "POST", "nope.gguf/load").status_code == 404
        assert control(store, "POST", "..%2Fx/load").status_code in (400, 404)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[/models]")]
    assert [line.split()[1] for line in lines] == [
        "op=load",
        "op=load",
        "op=unload",
        "op=unload",
        "op=evict",
        "op=evict",
    ]
    # A failed operation logs its status and why, not like a success.
    assert [line.split()[4] for line in lines] == ["status=200"] * 3 + ["status=404"] + [
        "status=200",
        "status=404",
    ]
    assert 'error="tiny-a.gguf is not resident on the worker"' in lines[3]
    # The operations join the recent list the dashboard shows.
    recent = requests.get(f"{store.url}/activity", timeout=10).json()["requests"]
    ops = [(r["route"], r["status"]) for r in recent if r["route"].startswith("/models")]
    assert ops == [
        ("/models load", 200),
        ("/models load", 200),
        ("/models unload", 200),
        ("/models unload", 404),
        ("/models evict", 200),
        ("/models evict", 404),
    ]
    assert_agree(store, worker)


def test_pin_keeps_a_model_resident_and_pinning_more_than_fits_is_409(start_store, worker):
    store = start_store(worker, max_cache_size=3, max_loaded_models=2)
    assert control(store, "PUT", f"{A}/pin").json()["pinned"] is True
    ask(store, B)
    assert action(ask(store, C)) == ("load_from_store", "", B)  # A is pinned: B goes
    assert control(store, "PUT", f"{C}/pin").status_code == 200
    r = control(store, "PUT", f"{B}/pin")
    assert r.status_code == 409 and r.json()["error"]["type"] == "pin_conflict"
    r = ask(store, B)  # both resident places are pinned
    assert r.status_code == 503 and "pinned" in r.json()["error"]["message"]
    assert control(store, "DELETE", f"{A}/pin").json()["pinned"] is False
    assert action(ask(store, B)) == ("load_from_local_store", "", A)
    assert {e["name"]: e["pinned"] for e in store_status(store)["resident"]} == {C: True, B: False}
    assert_agree(store, worker)


def test_explicit_unload_also_unpins(start_store, worker):
    store = start_store(worker, max_cache_size=2, max_loaded_models=2)
    control(store, "PUT", f"{A}/pin")
    assert control(store, "POST", f"{A}/unload").status_code == 200
    assert {e["name"]: e["pinned"] for e in store_status(store)["cached"]} == {A: False}
    ask(store, B)
    assert action(ask(store, C)) == ("load_from_store", A, "")  # A's file is a victim again
    assert control(store, "DELETE", f"{A}/pin").status_code == 404


def test_preload_models_at_start(start_store, worker):
    store = start_store(worker, max_cache_size=3, max_loaded_models=2, preload_models=(A, B))
    assert wait_for(lambda: resident(worker) == [A, B], timeout=20)
    assert action(ask(store, A)) == ("already_loaded", "", "")
    assert action(ask(store, B)) == ("already_loaded", "", "")


# -- concurrency -----------------------------------------------------------------------


def seeded(store, model, max_tokens=40):
    return requests.post(
        f"{store.url}/v1/completions",
        json={"model": model, "prompt": "hello", "max_tokens": max_tokens, "seed": 7},
        timeout=60,
    )


def test_parallel_generations_on_two_resident_models(start_store, worker):
    store = start_store(worker, max_cache_size=3, max_loaded_models=2)
    alone = {m: seeded(store, m).json()["choices"][0]["text"] for m in (A, B)}
    results = {}

    def run(model):
        results[model] = seeded(store, model)

    threads = [threading.Thread(target=run, args=(m,)) for m in (A, B) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for model in (A, B):
        r = results[model]
        assert r.headers["X-Cache-Action"] == "already_loaded" and r.headers["X-Model"] == model
        assert r.json()["choices"][0]["text"] == alone[model]
    assert worker_status(worker)["loads"] == 2


def test_a_hit_completes_while_another_model_swaps_in(start_store, worker):
    store = start_store(worker, max_cache_size=3, max_loaded_models=2)
    ask(store, A)
    state = store.app.extensions["swap_service"].fleet.first().view
    pending = state.admit(B, time.monotonic() + 5)  # B's swap holds the slot, as a push would
    assert pending.owns_swap and pending.decision.action is Action.LOAD_FROM_STORE
    try:
        r = ask(store, A)
        assert action(r) == ("already_loaded", "", "")
    finally:
        pending.abort(synced=False)
    assert action(ask(store, B))[0] == "load_from_store"


@pytest.mark.slow
def test_a_hit_completes_during_a_real_push(start_store, worker, tmp_path):
    from model_swap.tiny_models import write_tiny_model

    models = tmp_path / "big-models"
    models.mkdir()
    for name in (A, B):
        write_tiny_model(models / name)
    write_tiny_model(models / C, size_mb=400)
    store = start_store(worker, models_dir=models, max_cache_size=3, max_loaded_models=2)
    ask(store, A)
    finished = {}

    def push_c():
        ask(store, C)
        finished["C"] = time.monotonic()

    t = threading.Thread(target=push_c)
    t.start()
    assert wait_for(lambda: store_status(store)["swapping"], timeout=30)
    r = ask(store, A)
    finished["A"] = time.monotonic()
    t.join(60)
    assert action(r) == ("already_loaded", "", "")
    assert finished["A"] < finished["C"]


def test_reset_is_not_starved_by_hits(start_store, worker):
    store = start_store(worker, swap_wait_timeout=5)
    ask(store, A)
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            ask(store, A, max_tokens=1)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        r = requests.post(f"{store.url}/reset", timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert r.status_code == 200 and r.json()["evicted"] == [A]


def test_store_and_worker_agree_on_the_most_recent_model_after_overlapping_generations(
    start_store, worker
):
    store = start_store(worker, max_cache_size=3, max_loaded_models=2)
    ask(store, A)
    ask(store, B)
    long_a = threading.Thread(target=lambda: seeded(store, A, max_tokens=200))
    long_a.start()
    seeded(store, B, max_tokens=2)
    long_a.join(60)
    assert store_status(store)["loaded"] == worker_status(worker)["loaded"]
