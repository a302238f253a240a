"""No single request or probe can silence a service served by the front server
(model_swap/http_front.py): heads llhttp refuses are 4xx, the loop survives its own
failures, ``GET /health`` is answered by the loop while every thread is busy, the
request queue is bounded, and a client that reads too slowly is cut."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import requests

from benchmarks.fuzz import services
from model_swap.http_front import FrontLimits
from model_swap.http_send import Sender, SlowDownload
from model_swap.serving import FrontThread
from tests.conftest import A, store_status, wait_for, worker_status


def answer_of(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection; what comes back until the server closes it,
    or until ``timeout`` passes without a byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        got = b""
        # A reset (the server closed with our bytes unread) or a timeout ends the answer.
        with contextlib.suppress(OSError):
            sock.sendall(data)
            while chunk := sock.recv(65536):
                got += chunk
        return got


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def still_serving(url: str) -> bool:
    """A fresh connection gets the app's answer and the loop's."""
    return requests.get(f"{url}/healthz", timeout=5).status_code == 200 and requests.get(
        f"{url}/health", timeout=5
    ).json() == {"ok": True}


@pytest.fixture
def start_front_services(models_dir, tmp_path):
    """Start a real worker (with ``worker_settings``) and a real store in this process,
    each served by the front server; returns {"store": FrontThread, "worker": ...}."""
    with contextlib.ExitStack() as stack:

        def start(limits: FrontLimits | None = None, store_settings=None, **worker_settings):
            return stack.enter_context(
                services(
                    models_dir,
                    tmp_path / "wc",
                    limits or FrontLimits(threads=4, io_timeout=10),
                    store_settings,
                    **worker_settings,
                )
            )

        yield start


@pytest.fixture
def front_services(start_front_services):
    return start_front_services()


@pytest.mark.parametrize("service", ["store", "worker"])
@pytest.mark.parametrize(
    "length",
    [b"\xb2", b"9" * 5000, b"\xd9\xa3", b"1_0", b" +5", b"0x10", b"18446744073709551616"],
    ids=["superscript-two", "5000-digits", "arabic-indic", "underscore", "plus", "hex", "2**64"],
)
def test_a_content_length_int_refuses_is_a_400_and_the_service_keeps_serving(
    front_services, service, length
):
    server = front_services[service]
    head = b"POST /user_request HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n"
    answer = answer_of(server.port, head)
    assert status_of(answer) == 400, answer[:200]
    assert b'"invalid_request_error"' in answer
    assert still_serving(server.url)
    assert server.server.loop_restarts == 0  # refused by the parser, not survived


def test_a_failure_inside_the_loop_is_survived_and_counted(monkeypatch):
    def hello(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    with FrontThread(hello) as server:
        front = server.server
        real_expire = front._expire
        failures = []

        def expire_failing_once(now):
            if not failures:
                failures.append(now)
                raise RuntimeError("a bug in the loop")
            real_expire(now)

        monkeypatch.setattr(front, "_expire", expire_failing_once)
        assert wait_for(lambda: failures, timeout=5)
        assert requests.get(server.url, timeout=5).text == "hello"
        assert front.loop_restarts == 1


def test_an_exception_while_serving_one_connection_closes_only_it(monkeypatch):
    def hello(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    with FrontThread(hello) as server:
        front = server.server
        real = front._answer_probe

        def failing_for_marked_heads(conn):
            if b"X-Fail" in conn.buffer:
                raise RuntimeError("a bug for this connection")
            return real(conn)

        monkeypatch.setattr(front, "_answer_probe", failing_for_marked_heads)
        answer = answer_of(server.port, b"GET / HTTP/1.1\r\nX-Fail: 1\r\n\r\n")
        assert answer == b""  # closed
        assert requests.get(server.url, timeout=5).text == "hello"
        assert front.loop_restarts == 0


class Gate:
    """A WSGI app whose requests to /block wait until ``release``; others answer at once."""

    def __init__(self):
        self.entered = threading.Semaphore(0)
        self.open = threading.Event()

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/block":
            self.entered.release()
            self.open.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]


def test_health_is_answered_by_the_loop_and_the_queue_is_bounded():
    gate = Gate()
    limits = FrontLimits(threads=2, max_queued=2)
    with FrontThread(gate, limits) as server:
        results: list[int] = []

        def blocked():
            results.append(requests.get(f"{server.url}/block", timeout=30).status_code)

        holders = [threading.Thread(target=blocked) for _ in range(4)]
        for thread in holders[:2]:
            thread.start()
        for _ in range(2):
            assert gate.entered.acquire(timeout=10)  # both threads are held
        for thread in holders[2:]:
            thread.start()
        assert wait_for(lambda: server.server.queued_requests() == 2, timeout=10)
        for _ in range(20):  # every thread held and the queue full: the loop answers
            r = requests.get(f"{server.url}/health", timeout=5)
            assert r.status_code == 200 and r.json() == {"ok": True}
        # counted after its answer is written: the client can read the 20th first
        assert wait_for(lambda: server.server.probes_answered == 20, timeout=5)
        r = requests.get(f"{server.url}/ready", timeout=5)  # the app has no readiness check
        assert r.status_code == 503  # so /ready went to the pool, whose queue is full
        r = requests.get(f"{server.url}/anything", timeout=5)
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"]["type"] == "server_error"
        assert server.server.refused_queue_full == 2  # /ready and this one
        gate.open.set()
        for thread in holders:
            thread.join(30)
        assert results == [200] * 4
        assert requests.get(f"{server.url}/anything", timeout=5).status_code == 200


def test_health_pipelined_with_app_requests_answers_each_in_order():
    gate = Gate()
    with FrontThread(gate) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.count(b"HTTP/1.1 200 OK") == 4
        assert data.index(b'{"ok":true}') < data.index(b"/one") < data.rindex(b'{"ok":true}')
        assert data.rindex(b'{"ok":true}') < data.index(b"/two")


def test_a_stream_holding_every_thread_does_not_delay_health(start_front_services):
    """Real streams on the worker, each from a client that stopped reading, hold all of
    its threads; /health still answers, from the loop."""
    services = start_front_services(n_ctx=16384)
    worker, store = services["worker"], services["store"]
    assert requests.post(
        f"{store.url}/user_request", json={"prompt": "hi", "model": A, "max_tokens": 1}, timeout=60
    ).ok
    held = []
    body = b'{"prompt": "hello", "model": "%s", "max_tokens": 16000}' % A.encode()
    for _ in range(4):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", store.port))
        sock.sendall(
            b"POST /user_request HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        held.append(sock)  # and never read
    try:
        assert wait_for(lambda: len(store.server.busy_connections()) == 4, timeout=20)
        for service in (store, worker):
            r = requests.get(f"{service.url}/health", timeout=2)
            assert r.status_code == 200 and r.json() == {"ok": True}
    finally:
        for sock in held:
            sock.close()


def test_a_reader_slower_than_min_download_rate_is_cut_and_its_model_released(
    start_front_services,
):
    limits = FrontLimits(threads=4, io_timeout=30, min_download_rate=20_000, download_rate_window=1)
    services = start_front_services(limits, n_ctx=16384)
    store, worker = services["store"], services["worker"]
    body = b'{"prompt": "hello", "model": "%s", "max_tokens": 16000}' % A.encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", store.port))
        sock.sendall(
            b"POST /user_request HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        sock.settimeout(0.1)
        received, started = 0, time.monotonic()
        while time.monotonic() - started < 30:  # read 200 bytes every 0.1 s: 2 KB/s
            try:
                chunk = sock.recv(200)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += len(chunk)
            time.sleep(0.1)
            if store.server.slow_readers_cut:
                break
        assert store.server.slow_readers_cut == 1
        # Still connected: the generation ended and the model is free.
        assert wait_for(lambda: store_status(store)["generating"] == 0, timeout=30)
        assert wait_for(lambda: worker_status(worker)["sequences_running"] == 0, timeout=30)
        tokens = (worker_status(worker)["last_generation"] or {}).get("tokens", 0)
        assert 0 < tokens < 16000
    r = requests.post(
        f"{store.url}/user_request", json={"prompt": "hi", "model": A, "max_tokens": 2}, timeout=60
    )
    assert r.status_code == 200


def test_the_download_rate_counts_only_time_spent_waiting_for_the_reader():
    """A slow writer (a slow generation) to a fast reader is never cut; a reader that
    stops keeping up is."""
    left, right = socket.socketpair()
    with left, right:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sender = Sender(left, io_timeout=10, min_rate=1_000_000, window=0.3)
        for _ in range(8):  # 10 bytes every 0.1 s: far below the rate, but never waiting
            sender.sendall(b"x" * 10)
            assert right.recv(100) == b"x" * 10
            time.sleep(0.1)
        with pytest.raises(SlowDownload, match="MIN_DOWNLOAD_RATE"):
            for _ in range(1000):  # nobody reads: the buffers fill, then sends wait
                sender.sendall(b"y" * 4096)


def test_ready_says_whether_each_service_can_do_its_job(start_front_services):
    from model_swap.probes import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    services = start_front_services(store_settings={"health_interval": 0.2})
    worker = services["worker"]
    store_with_two = services["store"]
    store_with_two.stop()  # a store in front of the worker and a dead address instead
    services = start_front_services(
        store_settings={"health_interval": 0.2, "worker_urls": (worker.url, dead)}
    )
    store = services["store"]
    r = requests.get(f"{worker.url}/ready", timeout=5)
    assert r.status_code == 200 and r.json() == {"ready": True}

    def ready():
        return requests.get(f"{store.url}/ready", timeout=5)

    assert wait_for(lambda: ready().json()["workers"] == {"healthy": 1, "down": 1}, timeout=30)
    assert ready().status_code == 200 and ready().json()["ready"] is True
    assert store.server.probes_answered >= 1  # by the loop, not the app
    worker.stop()  # no worker left: the store cannot do its job
    assert wait_for(lambda: ready().status_code == 503, timeout=30)
    assert ready().json() == {"ready": False, "workers": {"down": 2}}
    assert requests.get(f"{store.url}/health", timeout=5).status_code == 200  # still alive


def test_the_front_servers_counters_are_in_each_services_metrics(front_services):
    for service in ("store", "worker"):
        server = front_services[service]
        requests.get(f"{server.url}/health", timeout=5)
        text = requests.get(f"{server.url}/metrics", timeout=5).text
        assert "model_swap_http_loop_restarts_total 0.0" in text
        assert 'model_swap_http_refused_total{reason="queue_full"} 0.0' in text
        assert "model_swap_http_slow_readers_cut_total 0.0" in text
        assert "model_swap_http_queued_requests" in text
        assert "model_swap_http_probes_answered_total" in text
