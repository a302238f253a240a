"""The inference worker's endpoints, against a real server and real tiny models."""

from __future__ import annotations

import requests

from tests.conftest import A, B, cache_dir, worker_status


def push(worker, models_dir, name, endpoint="/load_model_from_store", *, as_name=None):
    def body():
        with open(models_dir / name, "rb") as f:
            while block := f.read(64 * 1024):
                yield block

    return requests.post(
        f"{worker.url}{endpoint}",
        data=body(),
        headers={"X-Model-Name": as_name or name},
        timeout=60,
    )


def test_status_starts_empty(worker):
    status = worker_status(worker)
    assert status["loaded"] is None
    assert status["cached"] == []
    assert status["received"] == {"uploads": 0, "bytes": 0}


def test_load_from_store_caches_and_loads(worker, models_dir):
    response = push(worker, models_dir, A)
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == (models_dir / A).stat().st_size
    status = worker_status(worker)
    assert status["loaded"] == A
    size = (models_dir / A).stat().st_size
    # No digest was announced with this upload, so none is reported.
    assert status["cached"] == [{"name": A, "size": size, "digest": None}]
    assert (cache_dir(worker) / A).read_bytes() == (models_dir / A).read_bytes()


def test_cache_model_stores_without_loading(worker, models_dir):
    assert push(worker, models_dir, B, "/cache_model").status_code == 200
    status = worker_status(worker)
    assert status["loaded"] is None
    assert [c["name"] for c in status["cached"]] == [B]


def test_load_from_local_store(worker, models_dir):
    push(worker, models_dir, A, "/cache_model")
    r = requests.post(
        f"{worker.url}/load_model_from_local_store", headers={"X-Model-Name": A}, timeout=30
    )
    assert r.status_code == 200
    assert worker_status(worker)["loaded"] == A


def test_load_from_local_store_404_when_not_cached(worker):
    r = requests.post(
        f"{worker.url}/load_model_from_local_store", headers={"X-Model-Name": A}, timeout=30
    )
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found"


def test_infer_streams_tokens_and_names_the_model(worker, models_dir):
    push(worker, models_dir, A)
    r = requests.post(
        f"{worker.url}/infer", json={"prompt": "hello", "max_tokens": 8, "model": A}, stream=True
    )
    assert r.status_code == 200
    assert r.headers["X-Model"] == A
    assert r.headers["Content-Type"].startswith("text/plain")
    chunks = [c for c in r.iter_content(chunk_size=None) if c]
    assert len(chunks) > 1


def test_infer_409_for_a_model_that_is_not_loaded(worker, models_dir):
    push(worker, models_dir, A)
    r = requests.post(f"{worker.url}/infer", json={"prompt": "x", "model": B}, timeout=10)
    assert r.status_code == 409
    assert B in r.json()["error"]["message"]


def test_infer_409_when_nothing_loaded(worker):
    r = requests.post(f"{worker.url}/infer", json={"prompt": "x"}, timeout=10)
    assert r.status_code == 409


def test_evict_deletes_file_and_unloads(worker, models_dir):
    push(worker, models_dir, A)
    r = requests.delete(f"{worker.url}/models/{A}", timeout=10)
    assert r.json() == {"model": A, "deleted": True, "unloaded": True}
    status = worker_status(worker)
    assert status["loaded"] is None and status["cached"] == []
    assert not (cache_dir(worker) / A).exists()
    assert requests.delete(f"{worker.url}/models/{A}", timeout=10).status_code == 404


def test_bad_model_names_never_escape_the_cache_dir(worker, models_dir, tmp_path):
    for bad in ["../escape.gguf", "/tmp/abs.gguf", "x.bin", "..", "a\\b.gguf"]:
        r = push(worker, models_dir, A, as_name=bad)
        assert r.status_code == 400, bad
        assert r.json()["error"]["type"] == "invalid_request"
    assert not (tmp_path / "escape.gguf").exists()
    assert worker_status(worker)["cached"] == []


def test_missing_model_name_header(worker):
    r = requests.post(f"{worker.url}/cache_model", data=b"GGUF", timeout=10)
    assert r.status_code == 400
    assert "X-Model-Name" in r.json()["error"]["message"]


def test_unknown_route_uses_error_envelope(worker):
    r = requests.get(f"{worker.url}/nope", timeout=10)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "unknown_route"
    assert "GET /nope" in r.json()["error"]["message"]
