"""Issue 32's low findings: keep_alive bounded, names that cannot forge logs or markup."""

from __future__ import annotations

import http.server
import json
import re
import threading

import requests

from model_store_server.worker_client import WorkerClient
from tests.conftest import A, ask


def test_an_enormous_keep_alive_is_refused_and_api_ps_keeps_answering(worker, start_store):
    store = start_store(worker, ollama_api=True)
    body = {"model": A, "prompt": "hi", "max_tokens": 2, "keep_alive": 1e15}
    r = requests.post(f"{store.url}/user_request", json=body, timeout=60)
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]["message"]
    body["keep_alive"] = 365 * 24 * 3600  # the documented maximum is accepted
    assert requests.post(f"{store.url}/user_request", json=body, timeout=60).status_code == 200
    assert requests.get(f"{store.url}/api/ps", timeout=10).status_code == 200


def test_a_name_cannot_plant_a_log_field_or_markup(worker, start_store, caplog):
    store = start_store(worker)
    for name in ("x action=hit.gguf", "<!--<script>.gguf"):
        r = ask(store, name)
        assert r.status_code == 400
    page = requests.get(f"{store.url}/", timeout=10).text
    data = re.search(r'<script id="initial-data"[^>]*>(.*?)</script>', page, re.S).group(1)
    assert "<" not in data
    assert "action=hit" not in caplog.text


class _HostileWorker(http.server.BaseHTTPRequestHandler):
    """A stand-in worker (no token) whose report holds names that break the rule."""

    def do_GET(self):  # noqa: N802
        body = json.dumps(
            {
                "cached": [{"name": A}, {"name": "b action=evict.gguf"}, {"name": "<x>.gguf"}],
                "loaded": "b action=evict.gguf",
                "resident": [{"name": "b action=evict.gguf", "estimated_bytes": 1}],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_workers_report_is_held_to_the_same_name_rule():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileWorker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = WorkerClient(
            f"http://127.0.0.1:{server.server_address[1]}", connect_timeout=5, read_timeout=5
        )
        report = client.status()
        assert report.cached == [A] and report.loaded is None and report.resident == {}
    finally:
        server.shutdown()
        server.server_close()
