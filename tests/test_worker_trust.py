"""Workers prove WORKER_TOKEN before the store trusts them, and the token never travels.

The reproduction of issue 32's first finding: a store discovering its workers through DNS,
one address a real worker, one an impostor without the token behind a recording relay.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from inference_worker.app import create_app as create_worker_app
from inference_worker.config import WorkerSettings
from model_store_server.config import StoreSettings
from model_store_server.core.admission import admissible
from model_swap import worker_auth
from model_swap.probes import free_port
from model_swap.serving import ServerThread
from model_swap.settings import SettingsError
from tests.conftest import A, B, ask, store_status

TOKEN = "worker-secret-0123456789"


class RecordingRelay:
    """A TCP relay on ``host:port`` to ``target`` that keeps every byte it carries."""

    def __init__(self, host: str, port: int, target: tuple[str, int]):
        self.target = target
        self.carried = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                with self._lock:
                    self.carried += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def discovered_pair(start_worker, tmp_path):
    """(port, relay): a real worker with the token on 127.0.0.2:port and a relay on
    127.0.0.3:port in front of an impostor worker that has no token."""
    port = free_port()
    real = ServerThread(
        create_worker_app(
            WorkerSettings(
                worker_host="127.0.0.2",
                worker_port=port,
                model_cache_dir=tmp_path / "real",
                worker_token=TOKEN,
            )
        ),
        host="127.0.0.2",
        port=port,
    ).start()
    impostor = start_worker(model_cache_dir=tmp_path / "impostor")
    relay = RecordingRelay("127.0.0.3", port, ("127.0.0.1", impostor.port))
    try:
        yield port, relay
    finally:
        relay.close()
        real.stop()


def test_an_impostor_found_through_dns_receives_nothing_secret(discovered_pair, start_store):
    port, relay = discovered_pair
    store = start_store(
        worker_url="",
        discovery=f"dns+http://workers.test:{port}",
        discovery_interval=0.2,
        health_interval=0.2,
        worker_token=TOKEN,
        resolver=lambda host, _port: ["127.0.0.2", "127.0.0.3"] if host == "workers.test" else [],
    )
    secret_prompt = "the-secret-prompt-0427"
    for model in (A, B, A, B):
        r = ask(store, model, prompt=secret_prompt)
        assert r.status_code == 200
        assert r.headers["X-Worker"] == f"http://127.0.0.2:{port}"  # never the impostor's
    time.sleep(1.0)  # several discovery and health rounds
    assert [w["id"] for w in store_status(store)["workers"]] == [f"127.0.0.2:{port}"]
    carried = bytes(relay.carried)
    assert b"/identity" in carried  # the impostor was asked to prove itself ...
    assert TOKEN.encode() not in carried  # ... and saw no token,
    assert secret_prompt.encode() not in carried  # no prompt,
    assert b"GGUF" not in carried and b"/user_request" not in carried  # no model bytes
    assert b"/infer" not in carried and b"/upload" not in carried


def test_discovery_admits_only_worker_networks_and_caps_the_count():
    admitted, refused = admissible(["127.0.0.5", "10.1.2.3", "192.168.0.9", "junk"], [])
    assert admitted == ["127.0.0.5"] and refused == ["10.1.2.3", "192.168.0.9", "junk"]
    admitted, refused = admissible(["10.1.2.3", "10.2.0.1"], ["10.1.0.0/16"])
    assert admitted == ["10.1.2.3"] and refused == ["10.2.0.1"]
    settings = StoreSettings.from_env(
        {"WORKER_NETWORKS": "10.1.0.0/16, 10.9.9.9/32", "MAX_DISCOVERED_WORKERS": "3"}
    )
    assert settings.worker_networks == ("10.1.0.0/16", "10.9.9.9/32")
    assert settings.max_discovered_workers == 3
    with pytest.raises(SettingsError, match="WORKER_NETWORKS"):
        StoreSettings.from_env({"WORKER_NETWORKS": "10.1.0.0/33"})


def test_discovery_stops_at_the_cap(start_worker, start_store, tmp_path):
    port = free_port()
    started = [
        ServerThread(
            create_worker_app(
                WorkerSettings(worker_host=host, worker_port=port, model_cache_dir=tmp_path / host)
            ),
            host=host,
            port=port,
        ).start()
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    ]
    try:
        store = start_store(
            worker_url="",
            discovery=f"dns+http://workers.test:{port}",
            max_discovered_workers=2,
            resolver=lambda host, _port: ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        )
        assert len(store_status(store)["workers"]) == 2
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def signed_worker(tmp_path):
    settings = WorkerSettings(model_cache_dir=tmp_path / "cache", worker_token=TOKEN)
    return create_worker_app(settings).test_client()


def _signed(path: str, body: bytes = b"", content_type: str = "application/json", **kw):
    digest = worker_auth.body_digest(content_type, body, None)
    return {
        worker_auth.SIGNATURE_HEADER: worker_auth.sign(TOKEN, "GET", path, digest, **kw),
        "Content-Type": content_type,
    }


def test_the_worker_wants_a_fresh_signature_not_the_token(signed_worker):
    far = {"environ_base": {"REMOTE_ADDR": "10.0.0.7"}}
    # The bearer token from another machine: refused (it would have crossed the network).
    r = signed_worker.get("/status", headers={"Authorization": f"Bearer {TOKEN}"}, **far)
    assert r.status_code == 401
    # From loopback (the preStop hook, an operator's curl): still accepted.
    r = signed_worker.get("/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    headers = _signed("/status")
    assert signed_worker.get("/status", headers=headers, **far).status_code == 200
    replay = signed_worker.get("/status", headers=headers, **far)
    assert replay.status_code == 401 and "replayed" in replay.json["error"]["message"]
    stale = _signed("/status", clock=lambda: time.time() - 5 * worker_auth.WINDOW)
    assert signed_worker.get("/status", headers=stale, **far).status_code == 401
    other_path = _signed("/models")
    assert signed_worker.get("/status", headers=other_path, **far).status_code == 401


def test_a_worker_proves_the_token_on_a_nonce():
    nonce = "n" * 32
    assert worker_auth.proof_matches(TOKEN, nonce, worker_auth.proof(TOKEN, nonce))
    assert not worker_auth.proof_matches(TOKEN, nonce, worker_auth.proof("x" * 22, nonce))
    assert not worker_auth.proof_matches(TOKEN, nonce, None)


def test_the_verifier_forgets_expired_nonces():
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    verifier = worker_auth.Verifier(TOKEN, clock=clock)
    digest = worker_auth.body_digest("application/json", b"{}", None)
    first = worker_auth.sign(TOKEN, "POST", "/infer", digest, clock=clock)
    assert verifier.check(first, "POST", "/infer", digest) is None
    assert verifier.check(first, "POST", "/infer", digest) == "replayed signature"
    for _ in range(50):
        value = worker_auth.sign(TOKEN, "POST", "/infer", digest, clock=clock)
        assert verifier.check(value, "POST", "/infer", digest) is None
    assert len(verifier._seen) == 51
    now[0] += 3 * worker_auth.WINDOW  # every one of them has expired
    fresh = worker_auth.sign(TOKEN, "POST", "/infer", digest, clock=clock)
    assert verifier.check(fresh, "POST", "/infer", digest) is None
    assert len(verifier._seen) == 1
    assert verifier.check(first, "POST", "/infer", digest) == (
        "signature outside the accepted time window"
    )
