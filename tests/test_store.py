"""The store end to end: a real store in front of a real worker with real tiny models."""

from __future__ import annotations

import requests

from tests.conftest import (
    A,
    B,
    C,
    FakeClock,
    ask,
    assert_agree,
    step,
    store_status,
    worker_status,
)


def test_seed_lru_sequence(worker, start_store):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    step(store, worker, A, "load_from_store")
    step(store, worker, A, "already_loaded")
    step(store, worker, B, "load_from_store")
    step(store, worker, C, "load_from_store", A)
    step(store, worker, A, "load_from_store", B)
    assert [c["name"] for c in store_status(store)["cached"]] == [C, A]


def test_load_from_local_store_path(worker, start_store):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    step(store, worker, A, "load_from_store")
    step(store, worker, B, "load_from_store")
    uploads = worker_status(worker)["received"]["uploads"]
    step(store, worker, A, "load_from_local_store")
    assert worker_status(worker)["received"]["uploads"] == uploads  # no bytes pushed


def test_no_evict_rejects_with_503_and_sends_no_bytes(worker, start_store):
    store = start_store(worker, cache_policy="no-evict", max_cache_size=2)
    step(store, worker, A, "load_from_store")
    step(store, worker, B, "load_from_store")
    before = worker_status(worker)["received"]
    r = ask(store, C)
    assert r.status_code == 503
    assert r.headers["X-Cache-Action"] == "rejected"
    assert r.headers["X-Evicted"] == ""
    assert r.json()["error"]["type"] == "rejected"
    assert worker_status(worker)["received"] == before
    assert_agree(store, worker)
    step(store, worker, A, "load_from_local_store")  # members are still served


def test_ttl_sweep(worker, start_store):
    clock = FakeClock()
    store = start_store(worker, cache_policy="ttl", ttl_seconds=5, clock=clock)
    step(store, worker, A, "load_from_store")
    clock.advance(2)
    step(store, worker, A, "already_loaded")
    clock.advance(5.5)
    step(store, worker, B, "load_from_store", A)
    assert [c["name"] for c in store_status(store)["cached"]] == [B]


def test_lru_ttl_capacity_then_time(worker, start_store):
    clock = FakeClock()
    store = start_store(
        worker, cache_policy="lru-ttl", max_cache_size=2, ttl_seconds=5, clock=clock
    )
    step(store, worker, A, "load_from_store")
    clock.advance(1)
    step(store, worker, B, "load_from_store")
    clock.advance(1)
    step(store, worker, C, "load_from_store", A)  # capacity
    clock.advance(6)
    step(store, worker, A, "load_from_store", f"{B},{C}")  # time


def test_tokens_arrive_in_more_than_one_chunk(worker, start_store):
    store = start_store(worker)
    r = requests.post(
        f"{store.url}/user_request",
        json={"prompt": "hello", "model": A, "max_tokens": 16},
        stream=True,
        timeout=60,
    )
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.headers.get("Content-Length") is None
    chunks = [c for c in r.iter_content(chunk_size=None) if c]
    assert len(chunks) > 1


def test_max_tokens_defaults_and_is_respected(worker, start_store):
    store = start_store(worker)
    r = requests.post(f"{store.url}/user_request", json={"prompt": "hi", "model": A}, timeout=60)
    assert r.status_code == 200
    assert len(r.content) > 0


def test_status_lists_settings_and_available_models(worker, start_store):
    store = start_store(worker, cache_policy="lru-ttl", max_cache_size=3, ttl_seconds=7)
    ask(store, A)
    status = store_status(store)
    assert status["policy"] == "lru-ttl"
    assert status["max_cache_size"] == 3 and status["ttl_seconds"] == 7
    assert status["available"] == [A, B, C]
    assert status["loaded"] == A
    assert status["cached"][0]["name"] == A
    assert status["cached"][0]["idle_seconds"] >= 0
    assert requests.get(f"{store.url}/healthz", timeout=5).json() == {"ok": True}


def test_reset_evicts_everything(worker, start_store):
    store = start_store(worker)
    ask(store, A)
    ask(store, B)
    r = requests.post(f"{store.url}/reset", timeout=30)
    assert r.status_code == 200
    assert sorted(r.json()["evicted"]) == [A, B]
    assert worker_status(worker)["cached"] == []
    assert_agree(store, worker)
    step(store, worker, A, "load_from_store")


def test_store_adopts_what_the_worker_already_holds(worker, start_store):
    first = start_store(worker)
    ask(first, A)
    ask(first, B)
    first.stop()
    second = start_store(worker)  # a restarted store
    uploads = worker_status(worker)["received"]["uploads"]
    step(second, worker, B, "already_loaded")
    step(second, worker, A, "load_from_local_store")
    assert worker_status(worker)["received"]["uploads"] == uploads


# -- bad input -------------------------------------------------------------------------------


def post_raw(store, body, content_type="application/json"):
    return requests.post(
        f"{store.url}/user_request",
        data=body,
        headers={"Content-Type": content_type},
        timeout=10,
    )


def test_bad_requests_get_400_json(worker, start_store):
    store = start_store(worker)
    cases = [
        b"{not json",
        b"[1, 2]",
        b'"just a string"',
        b'{"model": "tiny-a.gguf"}',
        b'{"prompt": 5, "model": "tiny-a.gguf"}',
        b'{"prompt": "hi"}',
        b'{"prompt": "hi", "model": 7}',
        b'{"prompt": "hi", "model": "../etc/passwd.gguf"}',
        b'{"prompt": "hi", "model": "sub/tiny-a.gguf"}',
        b'{"prompt": "hi", "model": "tiny-a.bin"}',
        b'{"prompt": "hi", "model": "tiny-a.gguf", "max_tokens": 0}',
        b'{"prompt": "hi", "model": "tiny-a.gguf", "max_tokens": -3}',
        b'{"prompt": "hi", "model": "tiny-a.gguf", "max_tokens": 2.5}',
        b'{"prompt": "hi", "model": "tiny-a.gguf", "max_tokens": "8"}',
        b'{"prompt": "hi", "model": "tiny-a.gguf", "max_tokens": true}',
    ]
    for body in cases:
        r = post_raw(store, body)
        assert r.status_code == 400, body
        error = r.json()["error"]
        assert error["type"] == "invalid_request" and error["message"], body
    assert worker_status(worker)["received"]["bytes"] == 0


def test_unknown_model_is_404(worker, start_store):
    store = start_store(worker)
    r = ask(store, "missing.gguf")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found"
    assert worker_status(worker)["received"]["bytes"] == 0


def test_worker_down_is_503_with_cause(start_store, models_dir):
    store = start_store(worker_url="http://127.0.0.1:9", worker_connect_timeout=1)
    r = ask(store, A)
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "worker_unavailable"
    assert "unreachable" in r.json()["error"]["message"]


def test_health_and_admin_reset_aliases(worker, start_store):
    store = start_store(
        worker,
        api_keys=("client-key-0123456789abcdef",),
        admin_keys=("admin-key-0123456789abcdef",),
    )
    for service in (store, worker):
        r = requests.get(f"{service.url}/health", timeout=10)  # open, like /healthz
        assert r.status_code == 200 and r.json() == {"ok": True}
    auth = {"Authorization": "Bearer client-key-0123456789abcdef"}
    assert ask(store, A, headers=auth).status_code == 200
    admin = {"Authorization": "Bearer admin-key-0123456789abcdef"}
    r = requests.post(f"{store.url}/admin/reset", headers=admin, timeout=30)
    assert r.status_code == 200
    assert r.json()["evicted"] == [A]
