"""The store keeps serving and re-agrees with the worker after failures and surprises."""

from __future__ import annotations

import logging
import shutil
import threading
import time

import requests

from inference_worker.app import create_app as create_worker_app
from inference_worker.config import WorkerSettings
from model_swap.digest import file_digest
from model_swap.serving import ServerThread
from tests.conftest import (
    A,
    B,
    ask,
    assert_agree,
    start_generation,
    store_status,
    upload_to_worker,
    worker_status,
)


def restart_worker(servers, old: ServerThread, cache_dir) -> ServerThread:
    """Stop ``old`` and start a fresh worker process-equivalent on the same port."""
    old.stop()
    settings = WorkerSettings(
        worker_host="127.0.0.1", worker_port=old.port, model_cache_dir=cache_dir
    )
    app = create_worker_app(settings)
    new = ServerThread(app, port=old.port).start()
    new.app = app
    servers.append(new)
    return new


def test_worker_restart_with_empty_cache_is_recovered_transparently(
    servers, start_worker, start_store, tmp_path
):
    worker = start_worker(model_cache_dir=tmp_path / "c1")
    store = start_store(worker)
    ask(store, B)
    ask(store, A)  # store believes: A loaded, B cached
    worker = restart_worker(servers, worker, tmp_path / "c2")  # worker lost everything
    r = ask(store, A)  # worker answers 409; store re-reads it and pushes again
    assert r.status_code == 200, r.text
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert r.headers["X-Model"] == A
    r = ask(store, B)  # store would load B locally; worker says 404; store recovers
    assert r.status_code == 200, r.text
    assert r.headers["X-Cache-Action"] == "load_from_store"
    assert_agree(store, worker)


def test_worker_restart_keeping_its_files_loads_locally(
    servers, start_worker, start_store, tmp_path
):
    worker = start_worker(model_cache_dir=tmp_path / "c")
    store = start_store(worker)
    ask(store, A)
    worker = restart_worker(servers, worker, tmp_path / "c")
    r = ask(store, A)
    assert r.status_code == 200
    assert r.headers["X-Cache-Action"] == "load_from_local_store"
    assert worker_status(worker)["received"]["uploads"] == 0
    assert_agree(store, worker)


def test_model_file_vanishing_during_a_wait_frees_the_swap_slot(worker, start_store, models_dir):
    store = start_store(worker)
    ask(store, A)
    long, _, chunks = start_generation(store, A, max_tokens=1500)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", ask(store, B)))
    t.start()
    time.sleep(0.1)  # B is decided and waits for A's generation
    (models_dir / B).unlink()
    list(chunks)
    t.join(30)
    assert result["r"].status_code == 404
    assert result["r"].headers["X-Cache-Action"] == "load_from_store"
    status = store_status(store)
    assert not status["swapping"]
    r = ask(store, A)  # the store is not stuck
    assert r.status_code == 200
    assert_agree(store, worker)


def test_prompt_the_worker_refuses_is_400_and_keeps_state(start_worker, start_store):
    worker = start_worker(n_ctx=32)
    store = start_store(worker)
    ask(store, A)
    r = ask(store, A, prompt="hello world " * 100)
    assert r.status_code == 400
    assert "the context holds 32" in r.json()["error"]["message"]
    assert r.headers["X-Cache-Action"] == "already_loaded"
    assert store_status(store)["synced"] is True


def test_longest_valid_name_works_end_to_end(worker, start_store, models_dir):
    name = "n" * 250 + ".gguf"
    shutil.copy(models_dir / A, models_dir / name)
    store = start_store(worker)
    r = ask(store, name)
    assert r.status_code == 200, r.text
    assert r.headers["X-Model"] == name
    assert_agree(store, worker)


def test_every_decided_request_logs_one_line(worker, start_store, caplog):
    store = start_store(worker, cache_policy="no-evict", max_cache_size=1)
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        ask(store, A)
        ask(store, B)  # rejected
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[/user_request]")]
    assert len(lines) == 2
    assert "model=tiny-a.gguf action=load_from_store" in lines[0]
    assert "model=tiny-b.gguf action=rejected" in lines[1]
    assert lines[1].endswith("cached=[tiny-a.gguf] evicted=[]")


def test_deleting_an_idle_file_does_not_wait_for_generation(worker, models_dir, caplog):
    for name, endpoint in ((B, "/cache_model"), (A, "/load_model_from_store")):
        upload_to_worker(worker, models_dir, name, endpoint)
    long = requests.post(
        f"{worker.url}/infer", json={"prompt": "x", "max_tokens": 1500}, stream=True, timeout=60
    )
    chunks = long.iter_content(chunk_size=None)
    with caplog.at_level(logging.INFO, logger="model_swap.console"):
        next(chunks)
        r = requests.delete(f"{worker.url}/models/{B}", timeout=30)
        finished = [m for m in caplog.messages if m.startswith("[infer] tokens=")]
        list(chunks)
    assert r.json() == {"model": B, "deleted": True, "unloaded": False}
    assert finished == [], "the delete waited for the generation to finish"


def test_store_start_reapplies_the_policy_bounds(worker, start_store, models_dir):
    for name in (A, B, "tiny-c.gguf"):
        # Announced with their digest, as a store pushes: the worker then knows their version.
        headers = {"X-Model-Name": name, "X-Model-Digest": file_digest(models_dir / name)}
        requests.post(
            f"{worker.url}/cache_model",
            data=(models_dir / name).read_bytes(),
            headers=headers,
            timeout=30,
        ).raise_for_status()
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not store_status(store)["synced"]:
        time.sleep(0.02)  # the store syncs in the background at start
    assert store_status(store)["synced"]
    assert len(worker_status(worker)["cached"]) == 2
    assert_agree(store, worker)
    kept = [c["name"] for c in worker_status(worker)["cached"]]
    r = ask(store, kept[0])
    assert r.headers["X-Cache-Action"] == "load_from_local_store"
    assert worker_status(worker)["received"]["uploads"] == 3  # nothing pushed again


def test_models_load_retries_once_when_the_worker_lost_the_model(
    servers, start_worker, start_store, tmp_path
):
    """Before: ``POST /models/<name>/load`` lacked the retry requests had (a 502)."""
    worker = start_worker(model_cache_dir=tmp_path / "c1")
    store = start_store(worker)
    ask(store, A)
    ask(store, B)  # store believes: B loaded, A cached
    worker = restart_worker(servers, worker, tmp_path / "c2")  # the worker lost everything
    r = requests.post(f"{store.url}/models/{A}/load", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["action"] == "load_from_store" and r.json()["resident"] == [A]
    assert_agree(store, worker)


def test_a_failure_between_the_decision_and_the_swap_gives_the_slot_back(worker, start_store):
    """Before: ``begin`` took the slot and handed out a plain ticket, so an exception
    before ``with state.swap(ticket)`` left the slot taken forever."""
    store = start_store(worker)
    service = store.app.extensions["swap_service"]

    def fail(ticket, **_where):
        raise RuntimeError("between deciding and acting")

    for _ in range(2):  # a swap (load) and a hit
        try:
            service.serve(A, {"prompt": "x", "max_tokens": 1}, on_decided=fail)
        except RuntimeError:
            pass
        else:
            raise AssertionError("on_decided's error was swallowed")
        assert service.fleet.first().view.gate.idle
        ask(store, A)
    status = store_status(store)
    assert not status["swapping"] and status["generating"] == 0
    assert ask(store, B).status_code == 200  # nothing waits for a lost slot


def test_a_stale_view_never_holds_up_a_hit_on_another_resident_model(worker, start_store):
    """Re-reading the worker waits only for the models it must touch: with a long stream on
    A and the view marked stale (a 404 elsewhere, a failed swap), a hit on the resident B is
    served; before, the re-read took the worker exclusively and B waited for A's stream until
    SWAP_WAIT_TIMEOUT, then answered 503."""
    store = start_store(worker, max_loaded_models=2, swap_wait_timeout=2)
    assert ask(store, A).status_code == 200
    assert ask(store, B).status_code == 200
    view = store.app.extensions["swap_service"].fleet.first().view
    stream_on_a = view.admit(A, time.monotonic() + 30)  # held by the test: a slow stream
    try:
        view.mark_unsynced()
        r = ask(store, B)
        assert r.status_code == 200, r.text
        assert r.headers["X-Cache-Action"] == "already_loaded"
        assert store_status(store)["synced"]  # re-read while A went on generating
        assert store_status(store)["generating"] == 1
    finally:
        stream_on_a.release()
    assert sorted(m["name"] for m in store_status(store)["resident"]) == [A, B]
