"""Slow clients and hostile input against the front server (model_swap/http_front.py):
slowloris against each service, the header and keep-alive timeouts, the connection
cap, a slow upload, and JSON nested deeper than the parser can go."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from benchmarks.slowloris import Slowloris
from model_swap.http_front import FrontLimits
from model_swap.serving import FrontThread
from model_swap.tiny_models import write_tiny_model
from tests.conftest import A, ask, temp_files, wait_for
from tests.test_serving import store_process  # noqa: F401 - a fixture


def hello_app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + body]


def closed_by_server(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closed ``sock`` (None if it did not within ``timeout``),
    dripping a header line every 0.2 s meanwhile."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < timeout:
        try:
            sock.sendall(b"X-Slow: 1\r\n")
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def test_the_header_timeout_closes_a_connection_that_drips_its_head():
    with FrontThread(hello_app, FrontLimits(header_timeout=1.0)) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        seconds = closed_by_server(sock, timeout=10)
        sock.close()
        assert seconds is not None and seconds >= 0.9
        assert requests.get(server.url, timeout=5).text == "hello "


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout():
    with FrontThread(hello_app, FrontLimits(keepalive_timeout=0.5)) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server, not by the 5 s timeout
        assert time.monotonic() - started < 4
        assert wait_for(lambda: server.server.open_connections() == 0, timeout=5)


def test_connections_beyond_the_cap_are_answered_503():
    with FrontThread(hello_app, FrontLimits(max_connections=5)) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        assert wait_for(lambda: server.server.open_connections() == 5, timeout=5)
        r = requests.get(server.url, timeout=5)
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "server_error"
        assert "5 connections" in r.json()["error"]["message"]
        for sock in held:
            sock.close()
        assert wait_for(lambda: requests.get(server.url, timeout=5).status_code == 200, 5)


def test_pipelined_requests_and_a_chunked_body_on_one_connection():
    with FrontThread(hello_app) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nfg"
        )
        data = b""
        while data.count(b"\r\n0\r\n\r\n") < 2:
            data += sock.recv(4096)
        assert data.count(b"HTTP/1.1 200 OK") == 2
        assert b"\r\nhello abcde\r\n" in data and b"\r\nhello fg\r\n" in data
        sock.close()


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
)
def test_a_malformed_head_is_a_4xx_never_a_crash(head):
    with FrontThread(hello_app) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(head)
            answer = sock.recv(4096)
        assert answer.split(b" ")[1] in (b"400", b"431", b"501"), answer
        assert requests.get(server.url, timeout=5).status_code == 200


def test_a_slow_upload_is_cut_and_leaves_no_file(tmp_path):
    from inference_worker.app import create_app
    from inference_worker.config import WorkerSettings

    cache = tmp_path / "cache"
    app = create_app(WorkerSettings(worker_host="127.0.0.1", worker_port=0, model_cache_dir=cache))
    limits = FrontLimits(min_upload_rate=100_000, upload_rate_window=1.0)
    model = write_tiny_model(tmp_path / "m.gguf")
    data = model.read_bytes()
    with FrontThread(app, limits) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(
            b"POST /cache_model HTTP/1.1\r\nHost: localhost\r\nX-Model-Name: m.gguf\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data[:70_000]  # more than the loop reads itself: a thread takes the body
        )
        assert wait_for(lambda: temp_files(cache), timeout=5)  # receiving has begun
        started = time.monotonic()
        seconds = closed_by_server_quietly(sock, started, 10)
        assert seconds is not None, "the slow upload was not cut"
        assert wait_for(lambda: not temp_files(cache), timeout=5)
        assert not (cache / "m.gguf").exists()
        r = requests.get(f"{server.url}/status", timeout=5)
        assert r.status_code == 200


def closed_by_server_quietly(sock: socket.socket, started: float, timeout: float):
    """Send a byte every 0.1 s (10 bytes/s) until the server answers or closes the
    connection; seconds since ``started``, or None."""
    sock.settimeout(0.1)
    while time.monotonic() - started < timeout:
        try:
            sock.sendall(b"\0")
            sock.recv(4096)  # an answer (the upload's error) or the end of the connection
        except TimeoutError:
            continue
        except OSError:
            pass
        return time.monotonic() - started
    return None


@pytest.mark.slow
@pytest.mark.parametrize("service", ["store", "worker"])
def test_slowloris_does_not_stop_normal_requests(worker_process, store_process, service):  # noqa: F811
    worker = worker_process()
    store = store_process(worker.url)
    assert ask(store, A).status_code == 200  # loaded
    target = store if service == "store" else worker
    attack = Slowloris(target.port, 300, interval=0.5).start()
    try:
        assert attack.held() >= 250
        for _ in range(5):
            if service == "store":
                r = requests.post(
                    f"{store.url}/user_request",
                    json={"prompt": "hi", "model": A, "max_tokens": 2},
                    timeout=5,
                )
            else:
                r = requests.get(f"{worker.url}/status", timeout=5)
            assert r.status_code == 200, r.text
        assert attack.held() >= 250  # still attacking: heads arrive, never finish
    finally:
        attack.stop()


DEPTHS = [100, 1_000, 100_000]


def nested(depth: int) -> bytes:
    return b'{"prompt": "hi", "model": "tiny-a.gguf", "x": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(
    "path", ["/user_request", "/v1/chat/completions", "/v1/completions", "/models/x.gguf/load"]
)
def test_deeply_nested_json_is_a_400_on_the_store(start_store, worker, path, depth):
    store = start_store(worker)
    r = requests.post(
        store.url + path, data=nested(depth), headers={"Content-Type": "application/json"}
    )
    if depth == 100:  # within the limit: the request is judged on its fields (x is ignored)
        assert r.status_code < 500, r.text
        return
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    if depth > 100:
        assert r.status_code == 400
        assert "nested" in error["message"]
    if path.startswith("/v1"):
        assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("depth", DEPTHS)
def test_deeply_nested_json_is_a_400_on_the_worker(worker, depth):
    r = requests.post(
        f"{worker.url}/infer",
        data=nested(depth),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    if depth == 100:  # within the limit: the model is not loaded
        assert r.status_code == 409, r.text
    else:
        assert r.status_code == 400, r.text
        assert "nested" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"\xff\xfe\x00", b"[1, 2]", b'{"a": ' + b"9" * 5000 + b"}", b"1e999999"],
)
def test_bodies_the_parser_cannot_handle_are_a_400(start_store, worker, body):
    store = start_store(worker)
    for path in ("/user_request", "/v1/completions"):
        r = requests.post(store.url + path, data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        assert json.loads(r.text)["error"]["message"]
