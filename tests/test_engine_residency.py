"""Several models resident on one worker: a load keeps the others, and nothing done for one
model waits for a generation on another. Real worker servers and real tiny models."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from inference_worker.engine import Engine, Job, ModelLoadError, NotLoaded
from model_swap.generation import Sampling
from tests.conftest import A, B, C, cache_dir, wait_for, worker_status

SEEDED = {"prompt": "hello world", "max_tokens": 48, "seed": 11, "temperature": 0.8}


def load(worker, models_dir, name, endpoint="/load_model_from_store", *, as_name=None) -> dict:
    r = requests.post(
        f"{worker.url}{endpoint}",
        data=(models_dir / name).read_bytes(),
        headers={"X-Model-Name": as_name or name},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def infer(worker, model: str | None, **body) -> requests.Response:
    body = {"prompt": "hello", "max_tokens": 4, **body}
    if model is not None:
        body["model"] = model
    return requests.post(f"{worker.url}/infer", json=body, timeout=60)


def resident(worker) -> list[str]:
    return [entry["name"] for entry in worker_status(worker)["resident"]]


def unload(worker, name: str) -> requests.Response:
    return requests.post(f"{worker.url}/models/{name}/unload", timeout=60)


def test_two_models_are_resident_at_once(worker, models_dir):
    assert worker_status(worker)["resident"] == []
    assert worker_status(worker)["resident_bytes"] == 0
    answer = load(worker, models_dir, A)
    assert answer["estimated_bytes"] > (models_dir / A).stat().st_size
    load(worker, models_dir, B)
    status = worker_status(worker)
    assert [entry["name"] for entry in status["resident"]] == [A, B]
    assert status["loaded"] == B  # the most recently used
    assert status["loads"] == 2
    for entry in status["resident"]:
        assert entry["estimated_bytes"] == answer["estimated_bytes"]  # same shape, same N_CTX
        assert entry["llama_bytes"] > 0
        assert isinstance(entry["rss_load_bytes"], int)
        assert entry["generating"] == 0 and entry["queued"] == 0
        assert entry["idle_seconds"] >= 0
        assert entry["last_generation"] is None
    assert status["resident_bytes"] == 2 * answer["estimated_bytes"]

    r = infer(worker, A)
    assert r.status_code == 200 and r.headers["X-Model"] == A
    assert resident(worker) == [B, A]
    assert worker_status(worker)["loaded"] == A
    # Without a model, /infer runs on the most recently used one.
    assert infer(worker, None).headers["X-Model"] == A
    load(worker, models_dir, C)
    assert infer(worker, None).headers["X-Model"] == C
    assert resident(worker) == [B, A, C]


def test_load_from_local_store_keeps_the_other_models(worker, models_dir):
    load(worker, models_dir, A, "/cache_model")
    load(worker, models_dir, B)
    r = requests.post(
        f"{worker.url}/load_model_from_local_store", headers={"X-Model-Name": A}, timeout=60
    )
    assert r.status_code == 200
    assert r.json()["estimated_bytes"] > 0
    assert resident(worker) == [B, A]


def test_generations_on_two_models_run_side_by_side_each_on_its_own_model(worker, models_dir):
    load(worker, models_dir, A)
    load(worker, models_dir, B)
    alone = {model: infer(worker, model, **SEEDED).text for model in (A, B)}
    assert alone[A] and alone[B] and alone[A] != alone[B]
    wanted = [A, B] * 3
    barrier = threading.Barrier(len(wanted))

    def one(model):
        barrier.wait()
        r = infer(worker, model, **SEEDED)
        return model, r.status_code, r.headers.get("X-Model"), r.text

    with ThreadPoolExecutor(len(wanted)) as pool:
        results = list(pool.map(one, wanted))
    for model, code, header, text in results:
        assert (code, header) == (200, model)
        assert text == alone[model]
    for entry in worker_status(worker)["resident"]:
        assert entry["last_generation"]["model"] == entry["name"]
        assert entry["last_generation"]["tokens"] == SEEDED["max_tokens"]


def test_unload_and_delete_finish_while_another_model_is_streaming(start_worker, models_dir):
    # A long context makes B's generation last seconds: it is still running when the
    # unload returns, so the unload cannot have waited for it.
    worker = start_worker(n_ctx=8192)
    for name in (A, B, C):
        load(worker, models_dir, name)
    long = requests.post(
        f"{worker.url}/infer",
        json={"prompt": "hello", "max_tokens": None, "model": B},
        stream=True,
        timeout=60,
    )
    try:
        assert long.status_code == 200
        chunks = long.iter_content(chunk_size=None)
        assert next(chunks)  # B is generating now

        r = unload(worker, A)
        assert r.status_code == 200, r.text
        assert r.json() == {"model": A, "unloaded": True}
        gone = requests.delete(f"{worker.url}/models/{C}", timeout=60)
        assert gone.json() == {"model": C, "deleted": True, "unloaded": True}

        status = worker_status(worker)
        assert [entry["name"] for entry in status["resident"]] == [B]
        assert status["resident"][0]["generating"] == 1  # B's generation is still running
        assert sorted(f["name"] for f in status["cached"]) == [A, B]  # unload keeps the file
        assert next(chunks)  # and B's stream goes on
    finally:
        long.close()
    assert wait_for(lambda: worker_status(worker)["resident"][0]["generating"] == 0, 60)


def test_reload_under_the_same_name_replaces_only_that_model(worker, models_dir):
    load(worker, models_dir, A)
    load(worker, models_dir, B)
    before = infer(worker, A, **SEEDED).text
    b_text = infer(worker, B, **SEEDED).text
    load(worker, models_dir, B, as_name=A)  # a new version of A: B's weights
    status = worker_status(worker)
    assert [entry["name"] for entry in status["resident"]] == [B, A]
    assert status["loads"] == 3
    after = infer(worker, A, **SEEDED).text
    assert after == b_text != before
    assert infer(worker, B, **SEEDED).text == b_text


def test_unload_404_when_not_resident_and_delete_unloads_and_deletes(worker, models_dir):
    r = unload(worker, A)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found"
    load(worker, models_dir, A)
    load(worker, models_dir, B)
    assert unload(worker, A).status_code == 200
    assert unload(worker, A).status_code == 404  # once
    assert (cache_dir(worker) / A).exists()
    assert resident(worker) == [B]
    r = infer(worker, A)
    assert r.status_code == 409 and A in r.json()["error"]["message"]
    assert unload(worker, "../x.gguf").status_code in (400, 404)

    r = requests.delete(f"{worker.url}/models/{B}", timeout=10)
    assert r.json() == {"model": B, "deleted": True, "unloaded": True}
    assert not (cache_dir(worker) / B).exists()
    status = worker_status(worker)
    assert status["resident"] == [] and status["loaded"] is None
    # Loading A from the kept file brings it back.
    r = requests.post(
        f"{worker.url}/load_model_from_local_store", headers={"X-Model-Name": A}, timeout=60
    )
    assert r.status_code == 200 and resident(worker) == [A]


# The engine itself: the orderings the HTTP tests cannot pin down.


@pytest.fixture
def engine(tiny_models_dir):
    engine = Engine(n_ctx=256)
    yield engine
    for info in engine.resident():
        engine.unload(info.name)


def _text(engine: Engine, model: str, seed: int = 5) -> str:
    generation = engine.begin(
        model, Job(prompt="hello", max_tokens=16, sampling=Sampling(seed=seed))
    )
    try:
        return "".join(generation.tokens())
    finally:
        generation.close()


def _queued(engine: Engine, model: str) -> int:
    return next(info.queued for info in engine.resident() if info.name == model)


def _in_thread(work) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_held_generation_blocks_nothing_on_other_models(engine, tiny_models_dir):
    engine.load(A, tiny_models_dir / A)
    engine.load(B, tiny_models_dir / B)
    held = engine.begin(B, Job(prompt="hello", max_tokens=4))  # B's context is taken
    try:

        def other_models():
            assert engine.unload(A)
            engine.load(C, tiny_models_dir / C)
            engine.load(C, tiny_models_dir / C)  # a reload waits only for C
            return _text(engine, C)

        thread, outcome = _in_thread(other_models)
        thread.join(60)
        assert not thread.is_alive(), "work on A and C waited for B's generation"
        assert "error" not in outcome, outcome.get("error")
        assert outcome["value"]
        assert engine.loaded == C
    finally:
        held.close()
    assert [info.name for info in engine.resident()] == [C, B]  # B's generation ended last
    assert engine.unload(A) is False  # not resident: answered at once


def test_a_request_arriving_while_its_model_is_unloaded_gets_not_loaded(engine, tiny_models_dir):
    engine.load(A, tiny_models_dir / A)
    held = engine.begin(A, Job(prompt="hello", max_tokens=4))
    unloading, unloaded = _in_thread(lambda: engine.unload(A))
    assert wait_for(lambda: _queued(engine, A) == 1)  # the unload waits for the generation
    with pytest.raises(NotLoaded):
        engine.begin(A, Job(prompt="hello", max_tokens=4))
    assert unloading.is_alive()
    held.close()
    unloading.join(60)
    assert unloaded == {"value": True}
    assert engine.resident() == [] and engine.loaded is None
    with pytest.raises(NotLoaded):
        engine.begin(None, Job(prompt="hello"))


def test_requests_queued_behind_a_reload_get_the_new_version(engine, tiny_models_dir):
    engine.load(B, tiny_models_dir / B)
    b_text = _text(engine, B)
    engine.load(A, tiny_models_dir / A)
    a_text = _text(engine, A)
    held = engine.begin(A, Job(prompt="hello", max_tokens=4))
    reloading, reloaded = _in_thread(lambda: engine.load(A, tiny_models_dir / B))
    assert wait_for(lambda: _queued(engine, A) == 1)
    waiting, answer = _in_thread(lambda: _text(engine, A))
    assert wait_for(lambda: _queued(engine, A) == 2)
    held.close()
    reloading.join(60)
    waiting.join(60)
    assert reloaded["value"].name == A
    assert answer["value"] == b_text != a_text
    assert engine.loads == 3


def test_a_failing_footprint_estimate_fails_the_load_cleanly(engine, tiny_models_dir, monkeypatch):
    """Review fix: the new context is closed, the load answers ModelLoadError (422), not 500."""

    def broken(*args, **kwargs):
        raise RuntimeError("header reader broke")

    monkeypatch.setattr("model_swap.footprint.estimate", broken)
    with pytest.raises(ModelLoadError, match="header reader broke"):
        engine.load(A, tiny_models_dir / A)
    assert engine.resident() == [] and engine.loads == 0
    monkeypatch.undo()
    engine.load(A, tiny_models_dir / A)
    assert _text(engine, A)
