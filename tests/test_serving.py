"""The production server (model_swap/serving.py) in real processes: what it answers with,
how it stops (SIGTERM, SIGINT, SIGHUP; grace period; no temporary file left) and how it
treats clients that disconnect or stop reading."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from model_store_server.digests import DigestCache
from model_store_server.worker_client import WorkerClient
from model_swap.tiny_models import write_tiny_model
from tests.conftest import (
    A,
    B,
    ServiceProcess,
    ask,
    start_generation,
    store_status,
    temp_files,
    upload_to_worker,
    wait_for,
    worker_status,
)

# A generation on a tiny model this long runs for seconds (the cost grows with the context),
# so it is still running when a test acts on it.
LONG_CTX = 8192
LONG_TOKENS = 8000
STREAM_ERROR = b"\n[model-swap error] "


@pytest.fixture
def store_process(processes, tmp_path, models_dir):
    """Start a model store server process in front of ``worker_url``."""

    def start(worker_url: str, **env) -> ServiceProcess:
        settings = {
            "STORE_HOST": "127.0.0.1",
            "STORE_PORT": "",
            "MODELS_DIR": str(models_dir),
            "WORKER_URL": worker_url,
            **{k: str(v) for k, v in env.items()},
        }
        process = ServiceProcess(
            "model_store_server.cli", settings, "STORE_PORT", tmp_path / "store.log"
        )
        processes.append(process)
        return process.start()

    return start


@pytest.fixture(scope="module")
def shared_worker(tmp_path_factory) -> Iterator[ServiceProcess]:
    """One worker process for this module's tests that neither stop it nor depend on what
    its cache holds (each checks its own files: nothing else writes them)."""
    root = tmp_path_factory.mktemp("shared-worker")
    settings = {
        "WORKER_HOST": "127.0.0.1",
        "WORKER_PORT": "",
        "MODEL_CACHE_DIR": str(root / "cache"),
    }
    process = ServiceProcess("inference_worker.cli", settings, "WORKER_PORT", root / "worker.log")
    try:
        yield process.start()
    finally:
        process.stop()


def raw_response_head(url: str, path: str = "/healthz") -> tuple[int, dict[str, str]]:
    """Status and headers exactly as sent (what ``curl -i`` shows)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def refuses_connections(url: str) -> bool:
    try:
        requests.get(f"{url}/healthz", timeout=2)
    except requests.ConnectionError:
        return True
    return False


def exit_code(service: ServiceProcess, timeout: float = 60) -> int:
    return service.process.wait(timeout=timeout)


@pytest.mark.slow
def test_both_services_answer_with_the_production_server(shared_worker, store_process):
    worker = shared_worker
    store = store_process(worker.url)
    for service in (worker, store):
        status, headers = raw_response_head(service.url)
        assert status == 200
        assert headers["Server"] == "model-swap"
    r = ask(store, A)
    assert r.status_code == 200, r.text
    assert r.headers["Server"] == "model-swap"
    assert r.headers["X-Cache-Action"] == "load_from_store"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_lets_a_running_generation_finish(worker_process, start_store, sig):
    worker = worker_process(N_CTX=LONG_CTX, SHUTDOWN_GRACE_SECONDS=60)
    store = start_store(worker_url=worker.url)
    response, first, rest = start_generation(store, A, max_tokens=LONG_TOKENS // 2)
    worker.process.send_signal(sig)
    assert wait_for(lambda: refuses_connections(worker.url)), "still accepting after the signal"
    body = first + b"".join(rest)
    assert response.status_code == 200
    assert STREAM_ERROR not in body  # the generation ran to its end
    assert exit_code(worker) == 0
    assert store_status(store)["generating"] == 0


def test_generation_past_the_grace_period_is_cut_and_the_worker_exits_0(
    worker_process, start_store
):
    worker = worker_process(N_CTX=LONG_CTX, SHUTDOWN_GRACE_SECONDS=0.5)
    store = start_store(worker_url=worker.url)
    response, first, rest = start_generation(store, A, max_tokens=LONG_TOKENS)
    worker.process.send_signal(signal.SIGTERM)
    assert exit_code(worker) == 0
    body = first + b"".join(rest)
    assert STREAM_ERROR + b"worker_failed" in body  # the store saw the worker's stream end
    assert store_status(store)["generating"] == 0


@pytest.mark.slow
def test_stop_during_an_upload_leaves_no_temporary_file(worker_process, tmp_path):
    cache = tmp_path / "cache"
    worker = worker_process(cache_dir=cache, SHUTDOWN_GRACE_SECONDS=0.5)
    # An upload that stalls halfway: the grace period ends before it can complete.
    size = 8 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", worker.port), timeout=30) as sock:
        sock.sendall(
            b"POST /cache_model HTTP/1.1\r\nHost: localhost\r\nX-Model-Name: stalled.gguf\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
            + b"GGUF"
            + bytes(1024 * 1024)
        )
        assert wait_for(lambda: temp_files(cache)), "the upload never started"
        worker.process.send_signal(signal.SIGTERM)
        assert exit_code(worker) == 0
    assert temp_files(cache) == []
    assert not (cache / "stalled.gguf").exists()


@pytest.mark.slow
def test_a_push_running_at_sigterm_completes(worker_process, models_dir, tmp_path):
    big = write_tiny_model(models_dir / "tiny-big.gguf", size_mb=200)
    cache = tmp_path / "cache"
    worker = worker_process(cache_dir=cache, SHUTDOWN_GRACE_SECONDS=60)
    client = WorkerClient(worker.url, connect_timeout=5, read_timeout=60)
    headers = {
        "X-Model-Name": big.name,
        "X-Model-Size": str(big.stat().st_size),
        "X-Model-Sha256": DigestCache().sha256(big),
    }
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("r", client.upload_file("/cache_model", big, headers))
    )
    thread.start()
    assert wait_for(lambda: temp_files(cache)), "the push never started"
    worker.process.send_signal(signal.SIGTERM)
    thread.join(60)
    assert result["r"]["bytes"] == big.stat().st_size  # the worker confirmed the whole file
    assert exit_code(worker) == 0
    assert (cache / big.name).stat().st_size == big.stat().st_size
    assert temp_files(cache) == []


@contextlib.contextmanager
def stalled_client(port: int, path: str, body: dict):
    """POST ``body`` from a raw socket with a 4 KiB receive buffer that never reads."""
    data = json.dumps(body).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        yield sock


@pytest.mark.slow
def test_client_that_stops_reading_loses_the_model_after_the_write_timeout(
    worker_process, models_dir
):
    """A client that never reads (small receive buffer) holds the worker's only model
    until STREAM_WRITE_TIMEOUT ends its generation; then the model serves others."""
    worker = worker_process(N_CTX=4 * LONG_CTX, STREAM_WRITE_TIMEOUT=1)
    upload_to_worker(worker, models_dir, A)
    max_tokens = 4 * LONG_TOKENS  # more bytes than the socket buffers on both ends hold
    with stalled_client(worker.port, "/infer", {"prompt": "hello", "max_tokens": max_tokens}):
        # The generation ends (early) while this client is still connected, not reading.
        assert wait_for(
            lambda: (worker_status(worker)["last_generation"] or {}).get("tokens", 0) > 0,
            timeout=120,
        )
        assert worker_status(worker)["last_generation"]["tokens"] < max_tokens
        r = requests.post(f"{worker.url}/infer", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
        assert r.headers["X-Model"] == A


def test_client_disconnect_mid_stream_stops_the_generation(worker_process, store_process):
    worker = worker_process(N_CTX=LONG_CTX)
    store = store_process(worker.url)
    response, _first, _rest = start_generation(store, A, max_tokens=LONG_TOKENS)
    response.close()  # the client goes away mid-stream
    assert wait_for(lambda: store_status(store)["generating"] == 0, timeout=60)
    assert wait_for(
        lambda: (worker_status(worker)["last_generation"] or {}).get("tokens", 0) > 0, timeout=60
    )
    assert worker_status(worker)["last_generation"]["tokens"] < LONG_TOKENS


@pytest.mark.slow
def test_client_that_stops_reading_the_store_frees_the_model(worker_process, store_process):
    worker = worker_process(N_CTX=4 * LONG_CTX)
    store = store_process(worker.url, STREAM_WRITE_TIMEOUT=1)
    assert ask(store, A).status_code == 200
    body = {"prompt": "hello", "model": A, "max_tokens": 4 * LONG_TOKENS}
    with stalled_client(store.port, "/user_request", body):
        assert wait_for(lambda: store_status(store)["generating"] == 1, timeout=60)
        # Still connected and not reading: the write timeout ends the generation.
        assert wait_for(lambda: store_status(store)["generating"] == 0, timeout=120)
        r = ask(store, B)  # the worker swaps to another model: nothing holds A any more
        assert r.status_code == 200, r.text
        assert r.headers["X-Model"] == B


def test_sized_and_chunked_uploads_reach_the_disk_intact(worker_process, models_dir, tmp_path):
    """Both body framings through the production server, then a second request on the
    same keep-alive connection (the server's count of body bytes stayed right)."""
    cache = tmp_path / "cache"
    worker = worker_process(cache_dir=cache)
    big = write_tiny_model(models_dir / "tiny-big.gguf", size_mb=20)
    data = big.read_bytes()
    headers = {
        "X-Model-Name": big.name,
        "X-Model-Size": str(len(data)),
        "X-Model-Sha256": DigestCache().sha256(big),
    }
    client = WorkerClient(worker.url, connect_timeout=5, read_timeout=60)
    assert client.upload_file("/cache_model", big, headers)["bytes"] == len(data)
    assert (cache / big.name).read_bytes() == data
    client.evict(big.name)

    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=60)
    try:
        conn.request("POST", "/cache_model", body=data, headers=headers)  # Content-Length
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert json.loads(response.read())["bytes"] == len(data)
        conn.request("GET", "/status")
        response = conn.getresponse()
        assert response.status == 200
        assert [f["name"] for f in json.loads(response.read())["cached"]] == [big.name]
    finally:
        conn.close()
    assert (cache / big.name).read_bytes() == data
    assert temp_files(cache) == []


def chunked(data: bytes, sizes: list[int]) -> bytes:
    """``data`` in chunked framing, with chunks of ``sizes`` (cycled), an extension and a
    trailer, as any HTTP/1.1 client may send it."""
    out, offset, turn = [], 0, 0
    while offset < len(data):
        size = sizes[turn % len(sizes)]
        piece = data[offset : offset + size]
        out.append(b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n")
        offset += len(piece)
        turn += 1
    return b"".join(out) + b"0\r\nX-Trailer: yes\r\n\r\n"


def post_raw_body(conn: http.client.HTTPConnection, body: bytes, headers: dict) -> tuple:
    conn.putrequest("POST", "/cache_model")
    for key, value in {**headers, "Transfer-Encoding": "chunked"}.items():
        conn.putheader(key, value)
    conn.endheaders()
    conn.send(body)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_chunked_framing_of_any_shape_reaches_the_disk_intact(worker_process, models_dir, tmp_path):
    cache = tmp_path / "cache"
    worker = worker_process(cache_dir=cache)
    data = (models_dir / A).read_bytes()
    headers = {"X-Model-Name": "odd.gguf", "X-Model-Sha256": DigestCache().sha256(models_dir / A)}
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=60)
    try:
        status, answer = post_raw_body(conn, chunked(data, [1, 7, 65536, 3, 300000]), headers)
        assert status == 200, answer
        assert answer["bytes"] == len(data)
        conn.request("GET", "/status")  # the same connection goes on after the body
        response = conn.getresponse()
        assert response.status == 200
        assert [f["name"] for f in json.loads(response.read())["cached"]] == ["odd.gguf"]
    finally:
        conn.close()
    assert (cache / "odd.gguf").read_bytes() == data


@pytest.mark.parametrize(
    "broken",
    [b"zz\r\nGGUF\r\n0\r\n\r\n", b"4\r\nGGUFxx0\r\n\r\n", b"4\r\nGGUF\r\n" + b"1" * 9000],
    ids=["bad-size", "no-crlf-after-data", "endless-size-line"],
)
def test_broken_chunked_framing_is_refused_and_leaves_nothing(shared_worker, broken):
    worker = shared_worker
    cache = Path(worker.env["MODEL_CACHE_DIR"])
    # Refused at once: not after MIN_UPLOAD_RATE's 30 s window (the broken framing once made
    # the server drain the rest of the body until that cut it).
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    try:
        status, answer = post_raw_body(conn, broken, {"X-Model-Name": "broken.gguf"})
    finally:
        conn.close()
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request"
    assert temp_files(cache) == []
    assert not (cache / "broken.gguf").exists()
    assert requests.get(f"{worker.url}/healthz", timeout=10).ok


@pytest.mark.slow
@pytest.mark.timeout(300)  # the subprocess's own limit
def test_server_comparison_benchmark_runs(tmp_path):
    """benchmarks/servers.py keeps working (tiny sizes; no timing is asserted)."""
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parent.parent / "benchmarks" / "servers.py"),
            *("--candidates", "werkzeug,front,gunicorn", "--requests", "2", "--pushes", "1"),
            *("--push-mb", "2", "--streams", "1", "--stream-tokens", "20", "--rounds", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| werkzeug", "| front", "| gunicorn"]


def _status_lines(sock: socket.socket, count: int) -> list[bytes]:
    """Read until ``count`` HTTP status lines have arrived (each response is small)."""
    data = b""

    sock.settimeout(10)
    while data.count(b"HTTP/1.1 ") < count:
        more = sock.recv(65536)
        if not more:
            break
        data += more
    return re.findall(rb"HTTP/1\.1 \d{3}[^\r]*", data)


@pytest.mark.parametrize("service", ["worker", "store"])
def test_an_unread_body_does_not_eat_the_next_request_on_the_connection(
    shared_worker, store_process, service
):
    """A request answered without reading its body (400, 401) leaves a keep-alive
    connection usable: the next request on it is read intact."""
    worker = shared_worker
    if service == "worker":  # 400: no X-Model-Name, body never read
        port, first = worker.port, b"POST /load_model_from_local_store HTTP/1.1\r\n"
        extra = b"Content-Type: application/json\r\n"
    else:  # 401: no key, body never read
        store = store_process(worker.url, API_KEYS="k" * 24)
        port, first = store.port, b"POST /v1/chat/completions HTTP/1.1\r\n"
        extra = b"Content-Type: application/json\r\n"
    body = b'{"hello": "world"}'
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            first
            + b"Host: localhost\r\n"
            + extra
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        lines = _status_lines(sock, 2)
    assert len(lines) == 2, lines
    assert lines[0].startswith((b"HTTP/1.1 400", b"HTTP/1.1 401")), lines
    assert lines[1] == b"HTTP/1.1 200 OK", lines


@pytest.mark.slow
def test_a_one_worker_stores_ready_follows_its_worker(worker_process, store_process, tmp_path):
    """GET /ready on a store with one worker: 503 once the worker is killed, 200 again once
    a worker is back on its address (re-read first: the view is synced before it says so)."""
    cache = tmp_path / "ready-cache"
    worker = worker_process(cache_dir=cache)
    store = store_process(worker.url, HEALTH_INTERVAL="0.2")

    def ready() -> requests.Response:
        return requests.get(f"{store.url}/ready", timeout=5)

    assert wait_for(lambda: ready().status_code == 200, timeout=30, interval=0.05)
    assert ready().json() == {"ready": True, "workers": {"healthy": 1}}
    assert ask(store, A).status_code == 200  # serving, and still ready after it
    assert ready().status_code == 200

    worker.kill()
    assert wait_for(lambda: ready().status_code == 503, timeout=30, interval=0.05)
    assert ready().json() == {"ready": False, "workers": {"down": 1}}
    assert requests.get(f"{store.url}/health", timeout=5).status_code == 200  # alive, not ready

    worker = worker_process(port=worker.port, cache_dir=cache)  # a worker back on its address
    assert wait_for(lambda: ready().status_code == 200, timeout=30, interval=0.05)
    status = store_status(store)
    assert status["synced"] is True  # re-read before it was called ready, without a request
    assert ask(store, A).status_code == 200
