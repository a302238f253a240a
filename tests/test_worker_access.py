"""A worker without WORKER_TOKEN refuses what a web page can make a browser send.

Issue 32's fourth finding, for the worker: with no token it listens on loopback as
openly as a keyless store, so a page the operator opens could start generations,
unload models or read its status through DNS rebinding.
"""

from __future__ import annotations

import json

import requests

from inference_worker.config import WorkerSettings
from tests.conftest import A, upload_to_worker, worker_status

FORM = {"Content-Type": "text/plain"}


def test_a_tokenless_worker_refuses_cross_site_driving(worker, models_dir):
    upload_to_worker(worker, models_dir, A)
    # A cross-site form POST: a JSON body sent as text/plain to /infer.
    body = json.dumps({"prompt": "hello", "max_tokens": 2})
    r = requests.post(f"{worker.url}/infer", data=body, headers=FORM, timeout=30)
    assert r.status_code == 415 and r.json()["error"]["type"] == "unsupported_media_type"
    # A body with no type (a no-cors fetch of an untyped Blob) names the page's Origin.
    evil = {"Origin": "http://evil.test"}
    r = requests.post(f"{worker.url}/infer", data=body.encode(), headers=evil, timeout=30)
    assert r.status_code == 403
    # A bodiless no-cors POST from another site carries its Origin too.
    r = requests.post(f"{worker.url}/models/{A}/unload", headers=evil, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    # DNS rebinding: the page's own name in Host, for reads too.
    for method, path in (("GET", "/status"), ("POST", f"/models/{A}/unload")):
        r = requests.request(
            method, worker.url + path, headers={"Host": f"evil.test:{worker.port}"}, timeout=30
        )
        assert r.status_code == 403, (method, path)
    status = worker_status(worker)
    assert status["loaded"] == A and status["last_generation"] is None
    # The store's own calls and an operator's curl still work: JSON, a named upload
    # (any type: X-Model-Name needs a preflight), localhost or an address in Host.
    r = requests.post(f"{worker.url}/infer", json={"prompt": "hello", "max_tokens": 2})
    assert r.status_code == 200, r.text
    r = requests.post(f"{worker.url}/infer", data=body.encode(), timeout=30)  # untyped, no page
    assert r.status_code == 200, r.text
    r = requests.get(f"{worker.url}/status", headers={"Host": f"localhost:{worker.port}"})
    assert r.status_code == 200
    upload_to_worker(worker, models_dir, A, "/cache_model")  # no Content-Type at all
    r = requests.post(f"{worker.url}/models/{A}/unload", timeout=30)
    assert r.status_code == 200


def test_allowed_hosts_open_a_named_worker(start_worker):
    worker = start_worker(allowed_hosts=("worker-0.internal",))
    named = {"Host": f"worker-0.internal:{worker.port}"}
    assert requests.get(f"{worker.url}/status", headers=named, timeout=30).status_code == 200
    assert WorkerSettings.from_env({"ALLOWED_HOSTS": "W.example, b"}).allowed_hosts == (
        "w.example",
        "b",
    )


def test_a_worker_with_a_token_leaves_host_to_its_signatures(start_worker):
    token = "worker-secret-0123456789"
    worker = start_worker(worker_token=token)
    # Probes stay open; everything else wants the signature, whatever the Host.
    r = requests.get(f"{worker.url}/health", headers={"Host": "evil.test"}, timeout=30)
    assert r.status_code == 200
    r = requests.get(f"{worker.url}/status", headers={"Host": "worker-0.internal"}, timeout=30)
    assert r.status_code == 401
    r = requests.get(
        f"{worker.url}/status",
        headers={"Host": "worker-0.internal", "Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200  # bearer from loopback, as before
