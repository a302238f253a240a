"""Admin keys, and no cross-site driving of a store without keys (issue 32, findings 2 and 4)."""

from __future__ import annotations

import json

import pytest
import requests

from model_store_server.access import host_allowed, is_admin_path
from model_store_server.config import StoreSettings
from tests.conftest import A, B, ask

KEY = "client-key-0123456789abc"
ADMIN = "admin-key-0123456789abcd"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN_CALLS = [
    ("PUT", f"/models/{A}/pin", {"keep_alive": -1}),
    ("POST", f"/models/{B}/load", {}),
    ("POST", f"/models/{A}/unload", None),
    ("DELETE", f"/models/{A}", None),
    ("POST", "/reset", None),
    ("POST", "/admin/reset", None),
    ("POST", "/workers/0/drain", None),
]


@pytest.mark.parametrize("admin_keys", [(ADMIN,), ()])
def test_a_client_key_cannot_administer_and_keeps_generating(worker, start_store, admin_keys):
    store = start_store(worker, api_keys=(KEY,), admin_keys=admin_keys)
    for method, path, body in ADMIN_CALLS:
        r = requests.request(method, store.url + path, json=body, headers=bearer(KEY), timeout=30)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["type"] == "forbidden"
    assert ask(store, A, headers=bearer(KEY)).status_code == 200
    assert ask(store, B, headers=bearer(KEY)).status_code == 200
    if admin_keys:
        r = requests.post(f"{store.url}/reset", headers=bearer(ADMIN), timeout=60)
        assert r.status_code == 200
        assert ask(store, A, headers=bearer(ADMIN)).status_code == 200  # admins may generate
    assert requests.post(f"{store.url}/reset", timeout=30).status_code == 401


def test_without_keys_loopback_administers_as_before(worker, start_store):
    store = start_store(worker)
    assert ask(store, A).status_code == 200
    assert requests.post(f"{store.url}/reset", timeout=60).status_code == 200  # curl -X POST
    r = requests.post(f"{store.url}/admin/reset", json={}, timeout=60)
    assert r.status_code == 200


def test_no_cross_site_driving_without_keys(worker, start_store):
    store = start_store(worker)
    form = {"Content-Type": "text/plain"}
    # A cross-site form POST (text/plain) to /admin/reset and /user_request.
    r = requests.post(f"{store.url}/admin/reset", data="x=1", headers=form, timeout=30)
    assert r.status_code == 415 and r.json()["error"]["type"] == "unsupported_media_type"
    r = requests.post(
        f"{store.url}/user_request", data=json.dumps({"model": A, "prompt": "hi"}), headers=form
    )
    assert r.status_code == 415
    # A bodiless no-cors fetch from another site carries its Origin.
    r = requests.post(f"{store.url}/reset", headers={"Origin": "http://evil.test"}, timeout=30)
    assert r.status_code == 403
    # So does one with an untyped body (a Blob): no page may send it; no Origin, no page.
    untyped = json.dumps({"model": A, "prompt": "hi"}).encode()
    r = requests.post(
        f"{store.url}/user_request", data=untyped, headers={"Origin": "http://evil.test"}
    )
    assert r.status_code == 403
    # DNS rebinding: the page's own name in Host.
    r = requests.get(f"{store.url}/status", headers={"Host": "evil.test:8000"}, timeout=30)
    assert r.status_code == 403
    r = requests.get(f"{store.url}/status", headers={"Host": f"localhost:{store.port}"})
    assert r.status_code == 200
    # The worker received nothing from any of them.
    assert requests.get(f"{worker.url}/status", timeout=10).json()["received"]["bytes"] == 0


def test_allowed_hosts_and_admin_paths_are_pure_decisions():
    settings = StoreSettings(allowed_hosts=("store.internal",), store_host="127.0.0.1")
    assert host_allowed("store.internal:8000", settings)
    assert host_allowed("localhost", settings) and host_allowed("[::1]:8000", settings)
    assert host_allowed("10.0.0.4:8000", settings)
    assert not host_allowed("evil.test", settings)
    assert StoreSettings.from_env({"ALLOWED_HOSTS": "A.example, b"}).allowed_hosts == (
        "a.example",
        "b",
    )
    assert is_admin_path("/models/x.gguf/pin") and is_admin_path("/admin/reset")
    assert not is_admin_path("/v1/models") and not is_admin_path("/user_request")


def test_a_drain_key_drains_and_does_nothing_else(worker, start_store):
    drain = "drain-key-0123456789abcd"
    store = start_store(worker, api_keys=(KEY,), admin_keys=(ADMIN,), drain_keys=(drain,))
    for method, path, body in ADMIN_CALLS[:-1]:
        r = requests.request(method, store.url + path, json=body, headers=bearer(drain))
        assert r.status_code == 403, (method, path)
    assert ask(store, A, headers=bearer(drain)).status_code == 403
    r = requests.post(f"{store.url}/workers/0/drain?timeout=5", headers=bearer(drain))
    assert r.status_code == 200, r.text
