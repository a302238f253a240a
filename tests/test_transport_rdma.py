"""TRANSPORT=rdma end to end: real store, real worker, real tiny models.

Without RDMA (this machine), a push either falls back to HTTP and says why
(ALLOW_FALLBACK=1) or fails with a 502 naming the cause, recording nothing
(ALLOW_FALLBACK=0). The rdma-marked tests push over real verbs; they run
wherever pyverbs finds a device (hardware or soft-RoCE) and skip elsewhere.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from inference_worker.config import WorkerSettings
from model_store_server.config import StoreSettings
from model_store_server.transport.factory import FallbackTransport, build_transport
from model_store_server.transport.http import HttpTransport
from model_store_server.transport.link import LinkTransport
from model_store_server.transport.rdma import RdmaPushFailed, RdmaTransport
from model_store_server.worker_client import WorkerClient
from model_swap.digest import file_digest, file_sha256
from model_swap.probes import free_port
from tests.conftest import A, B, ask, assert_agree, files_on_disk, store_status, worker_status
from tests.rdma_support import (
    RDMA_PROBLEM,
    needs_rdma,
    start_rdma_worker,
    without_rdma,
)


@pytest.fixture
def rdma_worker(start_worker, request):
    return start_rdma_worker(start_worker, request)


def rdma_store(start_store, worker, *, allow_fallback: bool, port: int):
    return start_store(
        worker,
        transport="rdma",
        allow_fallback=allow_fallback,
        worker_rdma_host="127.0.0.1",
        worker_rdma_port=port,
    )


# -- settings and wiring -------------------------------------------------------------------


def test_rdma_settings_are_read_from_the_environment():
    store = StoreSettings.from_env({"TRANSPORT": "rdma", "ALLOW_FALLBACK": "1"})
    assert (store.transport, store.allow_fallback) == ("rdma", True)
    worker = WorkerSettings.from_env({"WORKER_RDMA": "1", "WORKER_RDMA_PORT": "9001"})
    assert (worker.worker_rdma, worker.worker_rdma_port) == (True, 9001)
    assert WorkerSettings.from_env({}).worker_rdma is False


def test_the_factory_builds_the_configured_transport():
    client = WorkerClient("http://127.0.0.1:1", connect_timeout=1, read_timeout=1)
    assert isinstance(build_transport(StoreSettings(), client), LinkTransport)  # auto
    assert isinstance(build_transport(StoreSettings(transport="http"), client), HttpTransport)
    rdma = build_transport(StoreSettings(transport="rdma"), client)
    assert isinstance(rdma, RdmaTransport)
    assert (rdma.host, rdma.port) == ("localhost", 8081)
    fallback = build_transport(StoreSettings(transport="rdma", allow_fallback=True), client)
    assert isinstance(fallback, FallbackTransport)
    assert (fallback.name, fallback.fallback.name) == ("rdma", "http")


def test_http_pushes_say_so_and_hits_carry_no_transport(worker, start_store):
    store = start_store(worker)
    first = ask(store, A)
    assert (first.status_code, first.headers["X-Transport"]) == (200, "http")
    hit = ask(store, A)
    assert hit.headers["X-Cache-Action"] == "already_loaded"
    assert "X-Transport" not in hit.headers


# -- ALLOW_FALLBACK=1: the request succeeds over HTTP and the log says why ---------------------


def assert_fell_back(store, worker, caplog, cause: str) -> None:
    with caplog.at_level(logging.INFO):
        r = ask(store, A)
    assert r.status_code == 200, r.text
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert r.headers["X-Transport"] == "http"
    assert r.headers["X-Model"] == A
    fell_back = [m for m in caplog.messages if "falling back to http" in m]
    assert len(fell_back) == 1
    assert f"falling back to http for {A}: RDMA push of {A}" in fell_back[0]
    assert cause in fell_back[0]
    assert f"pushed {A}: 473600 bytes in" in caplog.text
    assert "over http, loaded" in caplog.text
    assert worker_status(worker)["received"]["uploads"] == 1  # the HTTP upload
    assert_agree(store, worker)
    assert store_status(store)["transport"] == "rdma"


def test_fallback_when_the_listener_is_unreachable(worker, start_store, caplog):
    port = free_port()
    store = rdma_store(start_store, worker, allow_fallback=True, port=port)
    assert_fell_back(store, worker, caplog, f"RDMA listener at 127.0.0.1:{port} is unreachable")


@without_rdma
def test_fallback_when_rdma_is_unusable_here(rdma_worker, start_store, caplog):
    store = rdma_store(start_store, rdma_worker, allow_fallback=True, port=rdma_worker.rdma_port)
    assert_fell_back(store, rdma_worker, caplog, f"RDMA is not usable on the store: {RDMA_PROBLEM}")


def test_fallback_serves_the_next_models_too(worker, start_store):
    store = rdma_store(start_store, worker, allow_fallback=True, port=free_port())
    for model in (A, B, A):
        r = ask(store, model)
        assert r.status_code == 200
    assert r.headers["X-Cache-Action"] == "load_from_local_store"
    assert "X-Transport" not in r.headers  # no bytes moved


# -- ALLOW_FALLBACK=0: a 502 naming the cause, nothing recorded, no file on the worker ---------


def assert_failed_cleanly(store, worker, cause: str) -> None:
    r = ask(store, A)
    assert r.status_code == 502
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert "X-Transport" not in r.headers
    error = r.json()["error"]
    assert error["type"] == "rdma_failed"
    assert error["message"].startswith(f"RDMA push of {A} to 127.0.0.1:")
    assert cause in error["message"]
    status = store_status(store)
    assert (status["cached"], status["loaded"], status["synced"]) == ([], None, True)
    assert files_on_disk(worker) == []  # no model file and no temporary file
    assert worker_status(worker)["received"] == {"uploads": 0, "bytes": 0}


def test_no_fallback_when_the_listener_is_unreachable(worker, start_store):
    port = free_port()
    store = rdma_store(start_store, worker, allow_fallback=False, port=port)
    assert_failed_cleanly(store, worker, f"RDMA listener at 127.0.0.1:{port} is unreachable")


@without_rdma
def test_no_fallback_when_rdma_is_unusable_here(rdma_worker, start_store):
    store = rdma_store(start_store, rdma_worker, allow_fallback=False, port=rdma_worker.rdma_port)
    assert_failed_cleanly(store, rdma_worker, f"RDMA is not usable on the store: {RDMA_PROBLEM}")
    # The worker is still served over HTTP for everything else.
    assert ask(store, A).status_code == 502
    assert store_status(store)["synced"] is True


# -- real RDMA (pyverbs and a device: an RDMA NIC or soft-RoCE) ---------------------------------


@needs_rdma
def test_rdma_push_end_to_end(rdma_worker, start_store, models_dir, caplog):
    store = rdma_store(start_store, rdma_worker, allow_fallback=False, port=rdma_worker.rdma_port)
    with caplog.at_level(logging.INFO):
        r = ask(store, A)
    assert r.status_code == 200, r.text
    assert r.headers["X-Transport"] == "rdma"
    assert r.headers["X-Model"] == A
    assert f"pushed {A}: 473600 bytes in" in caplog.text
    assert "over rdma, loaded" in caplog.text
    assert f"received {A}: 473600 bytes in" in caplog.text  # the worker's line ends "over rdma"
    cache_dir = rdma_worker.app.extensions["model_cache"].directory
    assert file_sha256(cache_dir / A) == file_sha256(models_dir / A)
    assert worker_status(rdma_worker)["received"]["uploads"] == 1
    assert_agree(store, rdma_worker)


@needs_rdma
def test_rdma_ring_wraps_many_times(rdma_worker, models_dir):
    """64 KiB chunks through a 4-slot ring: the 0.5 MB model takes 8 chunks, two laps."""
    client = WorkerClient(rdma_worker.url, connect_timeout=5, read_timeout=60)
    transport = RdmaTransport(
        client,
        "127.0.0.1",
        rdma_worker.rdma_port,
        connect_timeout=5,
        read_timeout=60,
        chunk_bytes=64 * 1024,
        slots=4,
    )
    path = models_dir / B
    result = transport.push(B, path, digest=file_digest(path), load=False)
    assert (result.transport, result.nbytes) == ("rdma", path.stat().st_size)
    cache_dir = rdma_worker.app.extensions["model_cache"].directory
    assert file_sha256(cache_dir / B) == file_sha256(path)
    assert worker_status(rdma_worker)["loaded"] is None


@needs_rdma
def test_rdma_push_with_a_wrong_digest_is_nacked_and_leaves_nothing(rdma_worker, models_dir):
    client = WorkerClient(rdma_worker.url, connect_timeout=5, read_timeout=60)
    transport = RdmaTransport(
        client, "127.0.0.1", rdma_worker.rdma_port, connect_timeout=5, read_timeout=60
    )
    with pytest.raises(RdmaPushFailed, match="the worker kept nothing: the received"):
        transport.push(A, models_dir / A, digest="blake3:" + "00" * 32, load=True)
    assert files_on_disk(rdma_worker) == []


def test_the_fallback_benchmark_runs():
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "rdma_fallback.py"
    result = subprocess.run(
        [sys.executable, str(script), "--repeats", "1"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| http |" in result.stdout
    assert "| rdma, fallback (listener unreachable) |" in result.stdout


def test_the_throughput_benchmark_runs_or_says_why_it_skipped():
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "rdma_throughput.py"
    result = subprocess.run(
        [sys.executable, str(script), "--sizes", "1", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if RDMA_PROBLEM is not None:
        assert result.stdout.strip() == f"RDMA throughput benchmark skipped: {RDMA_PROBLEM}"
    else:
        assert "| RDMA vs raw |" in result.stdout.splitlines()[1]
