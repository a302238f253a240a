"""The store's client for the worker: local file errors stay local, streams really close."""

from __future__ import annotations

import time

import pytest

from model_store_server.worker_client import WorkerClient
from tests.conftest import A, recording_server, upload_to_worker, worker_status


def client_for(worker) -> WorkerClient:
    return WorkerClient(worker.url, connect_timeout=5, read_timeout=30)


def test_a_missing_source_file_fails_at_once_without_blaming_the_worker(worker, tmp_path):
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):
        client_for(worker).upload_file("/cache_model", tmp_path / "gone.gguf", {"X-Model-Name": A})
    assert time.monotonic() - started < 5
    assert worker_status(worker)["received"]["bytes"] == 0


def test_closing_an_inference_stream_stops_the_generation(worker, models_dir):
    upload_to_worker(worker, models_dir, A)
    stream = client_for(worker).infer(A, {"prompt": "hello", "max_tokens": 2000})
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and worker_status(worker)["last_generation"] is None:
        time.sleep(0.01)
    assert worker_status(worker)["last_generation"]["tokens"] < 2000


@pytest.mark.slow
def test_pooled_connections_are_reused_and_survive_a_worker_restart(
    worker_process, tmp_path, models_dir
):
    worker = worker_process(cache_dir=tmp_path / "c")  # a real process: it closes its sockets
    client = WorkerClient(worker.url, connect_timeout=5, read_timeout=30, pool_size=2)
    client.status()
    client.status()
    assert client.connections_opened == 1  # one keep-alive connection for both calls
    upload_to_worker(worker, models_dir, A)
    stream = client.infer(A, {"prompt": "hello", "max_tokens": 2})
    assert b"".join(stream)
    stream.close()
    stream.close()  # given back once, never twice
    assert client.connections_opened == 1
    worker.kill()
    worker = worker_process(port=worker.port, cache_dir=tmp_path / "c")  # back on that port
    assert client.status().cached == [A]  # the stale pooled connection was replaced
    client.load_local(A)
    stream = client.infer(A, {"prompt": "hello", "max_tokens": 2})
    assert b"".join(stream)
    stream.close()
    assert client.connections_opened == 2
    client.close()


def test_without_a_pool_every_call_opens_a_connection(worker):
    client = WorkerClient(worker.url, connect_timeout=5, read_timeout=30, pool_size=0)
    client.status()
    client.status()
    assert client.connections_opened == 2


def test_infer_sends_the_group_size_only_for_a_group():
    """The header the worker's batch loop gathers a group by (``X-Batch-Together``), as the
    store's client sends it: absent for a request on its own."""
    with recording_server(b"ok", "text/plain") as (url, seen):
        client = WorkerClient(url, connect_timeout=5, read_timeout=10)
        for together in (1, 3):
            stream = client.infer(A, {"prompt": "hello"}, together=together)
            assert b"".join(stream) == b"ok"
            stream.close()
        client.close()
    assert [headers.get("X-Batch-Together") for _, headers in seen] == [None, "3"]
