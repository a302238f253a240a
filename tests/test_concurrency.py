"""Many clients at once: one transfer per missing model, no swap under a running generation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import A, B, ask, assert_agree, start_generation, worker_status


def test_parallel_requests_for_one_missing_model_cause_one_transfer(worker, start_store):
    store = start_store(worker)
    barrier = threading.Barrier(8)

    def one(_):
        barrier.wait()
        return ask(store, A)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    actions = sorted(r.headers["X-Cache-Action"] for r in responses)
    assert actions == ["already_loaded"] * 7 + ["load_from_store"]
    assert all(r.headers["X-Model"] == A for r in responses)
    assert worker_status(worker)["received"]["uploads"] == 1
    assert_agree(store, worker)


def test_interleaved_models_with_one_slot_are_each_answered_by_their_model(worker, start_store):
    store = start_store(worker, max_cache_size=1)
    wanted = [A, B] * 6

    def one(model):
        r = ask(store, model, max_tokens=8)
        return model, r

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, wanted))
    for model, r in results:
        assert r.status_code == 200, r.text
        assert r.headers["X-Model"] == model
        assert r.content
    assert_agree(store, worker)
    assert len(worker_status(worker)["cached"]) == 1


def test_other_model_waits_for_a_running_generation(worker, start_store):
    store = start_store(worker)
    ask(store, A)  # A is loaded
    long, _, chunks = start_generation(store, A, max_tokens=1500)  # A is generating now
    assert long.status_code == 200
    result = {}

    def other():
        r = ask(store, B)
        result["done_at"] = time.monotonic()
        result["response"] = r

    t = threading.Thread(target=other)
    t.start()
    rest = list(chunks)  # A's stream runs to the end, uninterrupted
    a_done = time.monotonic()
    t.join(60)
    assert rest, "A's generation must continue after B's request arrived"
    assert result["response"].status_code == 200
    assert result["response"].headers["X-Model"] == B
    assert result["done_at"] >= a_done
    assert_agree(store, worker)


def test_swap_waiting_too_long_answers_503_with_retry_after(worker, start_store):
    store = start_store(worker, swap_wait_timeout=0.2)
    ask(store, A)
    long, _, chunks = start_generation(store, A, max_tokens=2000)
    r = ask(store, B)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"]["type"] == "busy"
    # the loaded model is still served (it queues behind the running generation)
    hit = ask(store, A)
    assert hit.status_code == 200 and hit.headers["X-Cache-Action"] == "already_loaded"
    list(chunks)
    ok = ask(store, B)  # once A is done, B is served and the views agree again
    assert ok.status_code == 200 and ok.headers["X-Model"] == B
    assert_agree(store, worker)
