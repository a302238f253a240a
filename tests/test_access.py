"""WORKER_TOKEN on the worker, API_KEYS on the store: no valid bearer token, no access."""

from __future__ import annotations

import pytest
import requests

from model_store_server.config import StoreSettings
from model_swap.settings import SettingsError
from tests.conftest import A, ask, assert_agree

TOKEN = "worker-secret-0123456789"
KEY = "client-key-0123456789abc"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


WORKER_CALLS = [
    ("GET", "/status", {}),
    ("POST", "/cache_model", {"X-Model-Name": A}),
    ("POST", "/load_model_from_store", {"X-Model-Name": A}),
    ("POST", "/load_model_from_local_store", {"X-Model-Name": A}),
    ("POST", "/infer", {}),
    ("DELETE", f"/models/{A}", {}),
]


@pytest.mark.parametrize(("method", "path", "headers"), WORKER_CALLS)
@pytest.mark.parametrize("presented", [None, "wrong-token-0123456789", TOKEN[:-1]])
def test_worker_refuses_without_the_token(
    start_worker, models_dir, method, path, headers, presented
):
    worker = start_worker(worker_token=TOKEN)
    auth = bearer(presented) if presented else {}
    r = requests.request(
        method,
        f"{worker.url}{path}",
        headers={**headers, **auth},
        data=(models_dir / A).read_bytes() if method == "POST" else None,
        timeout=10,
    )
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    status = requests.get(f"{worker.url}/status", headers=bearer(TOKEN), timeout=10).json()
    assert status["cached"] == [] and status["received"]["bytes"] == 0


def test_worker_healthz_stays_open(start_worker):
    worker = start_worker(worker_token=TOKEN)
    assert requests.get(f"{worker.url}/healthz", timeout=10).status_code == 200


def test_store_with_the_token_works_end_to_end(start_worker, start_store):
    worker = start_worker(worker_token=TOKEN)
    store = start_store(worker, worker_token=TOKEN)
    r = ask(store, A)
    assert r.status_code == 200 and r.headers["X-Model"] == A
    s = requests.get(f"{store.url}/status", timeout=10).json()
    w = requests.get(f"{worker.url}/status", headers=bearer(TOKEN), timeout=10).json()
    assert [c["name"] for c in s["cached"]] == [c["name"] for c in w["cached"]] == [A]


def test_store_with_a_wrong_token_gets_a_clear_error(start_worker, start_store):
    worker = start_worker(worker_token=TOKEN)
    store = start_store(worker, worker_token="not-the-right-one-0000")
    r = ask(store, A)
    # The worker refuses the store's signature, so it never proves itself: nothing is sent.
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "worker_unproven"
    assert "401" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/user_request"), ("GET", "/status"), ("GET", "/v1/models")]
)
def test_store_api_keys_guard_user_endpoints(worker, start_store, method, path):
    store = start_store(worker, api_keys=(KEY, "second-key-0123456789x"))
    body = {"prompt": "hi", "model": A} if path == "/user_request" else None
    for headers in ({}, bearer("nope-nope-nope-nope"), {"Authorization": KEY}):
        r = requests.request(method, f"{store.url}{path}", json=body, headers=headers, timeout=30)
        assert r.status_code == 401, headers
    for key in (KEY, "second-key-0123456789x"):
        r = requests.request(
            method, f"{store.url}{path}", json=body, headers=bearer(key), timeout=30
        )
        assert r.status_code == 200
    assert requests.get(f"{store.url}/healthz", timeout=10).status_code == 200


def test_refused_request_sends_nothing_to_the_worker(worker, start_store):
    store = start_store(worker, api_keys=(KEY,))
    assert ask(store, A).status_code == 401
    w = requests.get(f"{worker.url}/status", timeout=10).json()
    assert w["received"]["bytes"] == 0
    assert_agree_with_key(store, worker)


def assert_agree_with_key(store, worker):
    s = requests.get(f"{store.url}/status", headers=bearer(KEY), timeout=10).json()
    w = requests.get(f"{worker.url}/status", timeout=10).json()
    assert [c["name"] for c in s["cached"]] == [c["name"] for c in w["cached"]]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKER_TOKEN": "short"}, "WORKER_TOKEN: too weak"),
        ({"API_KEYS": "good-key-0123456789,bad"}, "API_KEYS: a key is too weak"),
        ({"WORKER_TOKEN": "\u20ac" * 16}, "WORKER_TOKEN: too weak or unusable"),
    ],
)
def test_weak_secrets_stop_startup(env, message):
    with pytest.raises(SettingsError, match=message):
        StoreSettings.from_env(env)


def test_secrets_never_appear_in_settings_repr():
    settings = StoreSettings.from_env({"WORKER_TOKEN": TOKEN, "API_KEYS": KEY})
    assert TOKEN not in repr(settings) and KEY not in repr(settings)


def test_assert_agree_helper_still_works_without_keys(worker, start_store):
    store = start_store(worker)
    ask(store, A)
    assert_agree(store, worker)
