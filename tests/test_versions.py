"""Versioned models: a file replaced in MODELS_DIR is pushed again; a stale copy is never served."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
import requests

from model_swap.digest import file_digest
from model_swap.tiny_models import write_tiny_model
from tests.conftest import (
    A,
    B,
    C,
    ask,
    assert_agree,
    cache_dir,
    step,
    wait_for,
    worker_status,
)


def replace(models_dir, name: str, source: str) -> str:
    """Put ``source``'s bytes under ``name`` (a new file, renamed over the old); its digest."""
    tmp = models_dir / f".{name}.new"
    shutil.copy(models_dir / source, tmp)
    tmp.replace(models_dir / name)
    return file_digest(models_dir / name)


def worker_digest(worker, name: str) -> str | None:
    return {e["name"]: e["digest"] for e in worker_status(worker)["cached"]}.get(name)


def greedy(store, model: str) -> str:
    r = requests.post(
        f"{store.url}/v1/completions",
        json={"model": model, "prompt": "hi", "max_tokens": 12, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "cached"])
def test_replaced_file_is_pushed_again(worker, start_store, models_dir, loaded):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    step(store, worker, A, "load_from_store")
    if not loaded:
        step(store, worker, B, "load_from_store")
    uploads = worker_status(worker)["received"]["uploads"]
    new_digest = replace(models_dir, A, C)  # A's name, C's weights

    r = ask(store, A)
    assert r.status_code == 200, r.text
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert A in r.headers["X-Evicted"].split(",")  # the old version left the worker
    assert worker_status(worker)["received"]["uploads"] == uploads + 1
    assert worker_digest(worker, A) == new_digest
    assert worker_status(worker)["loaded"] == A
    assert_agree(store, worker)
    step(store, worker, A, "already_loaded")  # the new version is now the current one


def test_worker_serves_the_new_weights(worker, start_store, models_dir):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    old_c = greedy(store, C)
    old_a = greedy(store, A)
    assert old_a != old_c  # different random weights, different greedy text
    replace(models_dir, A, C)
    assert greedy(store, A) == old_c


def test_replaced_file_after_a_store_restart(servers, worker, start_store, models_dir):
    store = start_store(worker)
    step(store, worker, A, "load_from_store")
    store.stop()
    servers.remove(store)
    new_digest = replace(models_dir, A, B)
    store = start_store(worker)  # adopts the worker's files with their digests
    r = ask(store, A)
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert worker_digest(worker, A) == new_digest
    assert_agree(store, worker)


def test_unchanged_file_after_a_store_restart_loads_locally(servers, worker, start_store):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    step(store, worker, A, "load_from_store")
    step(store, worker, B, "load_from_store")
    store.stop()
    servers.remove(store)
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    step(store, worker, A, "load_from_local_store")


def test_file_of_unknown_version_on_the_worker_is_replaced(worker, start_store, models_dir):
    """A file the worker never verified (put there by hand) is not trusted."""
    shutil.copy(models_dir / A, cache_dir(worker) / A)
    store = start_store(worker)
    r = ask(store, A)
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert worker_digest(worker, A) == file_digest(models_dir / A)


def test_touched_but_identical_file_is_not_pushed_again(worker, start_store, models_dir):
    store = start_store(worker)
    step(store, worker, A, "load_from_store")
    write_tiny_model(models_dir / "copy.gguf")
    shutil.copy(models_dir / A, models_dir / "copy.gguf")
    replace(models_dir, A, "copy.gguf")  # same bytes, new inode and mtime
    step(store, worker, A, "already_loaded")


def test_an_in_place_edit_with_the_old_mtime_is_a_new_version(tmp_path):
    """``rsync --inplace --times`` rewrites a file in place at the same size and puts its
    old mtime back: the ctime still tells the store's digest cache it is a new version."""
    from model_store_server.digests import DigestCache

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(100_000))
    cache = DigestCache()
    old = cache.digest(path)
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(50_000)
        f.write(b"new weights")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert cache.digest(path) == file_digest(path) != old


@pytest.mark.parametrize("transport", ["http", "auto"])
def test_a_file_rewritten_after_it_was_hashed_is_pushed_as_the_new_version(
    worker, start_store, models_dir, transport
):
    """A request hashes A, waits for its turn, and meanwhile ``cp`` rewrites A in place: the
    worker refuses bytes that do not match the announced digest, and the store retries once
    with the new version (before: a 502 for a file merely updated)."""
    store = start_store(worker, transport=transport)
    assert ask(store, B).status_code == 200
    view = store.app.extensions["swap_service"].fleet.first().view
    slot = view.hold(B, time.monotonic() + 30)  # a swap holds the slot: A waits its turn
    answer = {}
    thread = threading.Thread(target=lambda: answer.setdefault("r", ask(store, A)))
    try:
        thread.start()
        assert wait_for(lambda: len(view.scheduler) == 1, timeout=30)  # A hashed, waiting
        with open(models_dir / A, "r+b") as f:  # what `cp tiny-c.gguf tiny-a.gguf` does
            f.truncate(0)
            f.write((models_dir / C).read_bytes())
    finally:
        slot.commit(hit=False)
    thread.join(60)
    r = answer["r"]
    assert r.status_code == 200, r.text
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert worker_digest(worker, A) == file_digest(models_dir / A)
