"""Real faults: processes killed with SIGKILL mid-push and mid-generation, a full disk."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path

import pytest
import requests

from model_swap.tiny_models import write_tiny_model
from tests.conftest import (
    A,
    ask,
    assert_agree,
    start_generation,
    store_status,
    temp_files,
    wait_for,
    worker_status,
)

BIG = "tiny-big.gguf"


def test_worker_down_is_503_quickly(start_store):
    store = start_store(worker_url="http://127.0.0.1:9", worker_connect_timeout=2)
    started = time.monotonic()
    r = ask(store, A)
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "worker_unavailable"
    assert time.monotonic() - started < 2
    assert requests.get(f"{store.url}/healthz", timeout=5).ok  # the store keeps serving


@pytest.mark.slow
def test_worker_killed_mid_push_then_back(worker_process, start_store, models_dir, tmp_path):
    write_tiny_model(models_dir / BIG, size_mb=200)
    cache = tmp_path / "cache"
    worker = worker_process(cache_dir=cache)
    store = start_store(worker_url=worker.url, worker_connect_timeout=2)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", ask(store, BIG)))
    thread.start()
    assert wait_for(lambda: temp_files(cache)), "the push never started"
    worker.kill()
    thread.join(60)
    r = result["r"]
    assert r.status_code in (502, 503)
    assert r.json()["error"]["message"]
    assert r.headers["X-Cache-Action"] == "load_from_store"
    status = store_status(store)
    assert BIG not in [c["name"] for c in status["cached"]]
    assert status["loaded"] is None and status["synced"] is False
    assert not (cache / BIG).exists()

    worker = worker_process(port=worker.port, cache_dir=cache)  # back on the same port
    assert temp_files(cache) == []  # the killed upload's leftovers are gone
    r = ask(store, BIG)
    assert r.status_code == 200, r.text
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert (cache / BIG).stat().st_size == (models_dir / BIG).stat().st_size
    assert_agree(store, worker)


@pytest.mark.slow
def test_worker_killed_mid_generation_ends_stream_with_marker(
    worker_process, start_store, tmp_path
):
    cache = tmp_path / "cache"
    worker = worker_process(cache_dir=cache)
    store = start_store(worker_url=worker.url, worker_connect_timeout=2)
    assert ask(store, A).status_code == 200
    r, first, chunks = start_generation(store, A, max_tokens=2000)
    worker.kill()
    body = (first + b"".join(chunks)).decode(errors="replace")
    assert r.status_code == 200
    # A fixed message; the exception's text stays in the store's log.
    assert "\n[model-swap error] worker_failed: the worker connection broke off during " in body
    assert "Error" not in body.split("[model-swap error]")[1]
    assert body.endswith("\n")
    assert store_status(store)["generating"] == 0

    worker = worker_process(port=worker.port, cache_dir=cache)
    r = ask(store, A)  # the file survived on the worker's disk
    assert r.status_code == 200
    assert r.headers["X-Cache-Action"] == "load_from_local_store"
    assert_agree(store, worker)


def test_upload_larger_than_free_disk_is_507_before_writing(worker, models_dir):
    r = requests.post(
        f"{worker.url}/cache_model",
        data=(models_dir / A).read_bytes(),
        headers={"X-Model-Name": A, "X-Model-Size": str(1 << 60)},
        timeout=30,
    )
    assert r.status_code == 507
    assert r.json()["error"]["type"] == "insufficient_storage"
    assert worker_status(worker)["received"]["bytes"] == 0
    assert temp_files(Path(worker_status(worker)["model_cache_dir"])) == []


def test_disk_filling_up_midway_is_507_and_leaves_nothing(
    worker_process, start_store, models_dir, tmp_path
):
    limit = 256 * 1024  # a file-size limit the tiny model (about 470 KB) exceeds

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cache = tmp_path / "cache"
    worker = worker_process(cache_dir=cache, preexec=limit_file_size)
    r = requests.post(
        f"{worker.url}/cache_model",
        data=(models_dir / A).read_bytes(),
        headers={"X-Model-Name": A},
        timeout=30,
    )
    assert r.status_code == 507, r.text
    assert "filled up" in r.json()["error"]["message"]
    assert list(cache.iterdir()) == []
    store = start_store(worker_url=worker.url)
    r = ask(store, A)  # through the store: a clear 502 naming the cause, nothing cached
    assert r.status_code == 502
    assert "507" in r.json()["error"]["message"]
    assert store_status(store)["cached"] == []
    assert list(cache.iterdir()) == []
