"""The Ollama-compatible API with the official ``ollama`` client against a real store and worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import ollama
import pytest
import requests

from tests.conftest import A, B, C, store_status, wait_for, worker_status
from tests.test_embeddings import TINY_DIMENSIONS


@pytest.fixture
def store(start_store, worker):
    return start_store(worker)


@pytest.fixture
def client(store):
    return ollama.Client(host=store.url)


def chat_raw(store, model: str, **body) -> requests.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
    body.setdefault("stream", False)
    body.setdefault("options", {"num_predict": 3})
    return requests.post(f"{store.url}/api/chat", json=body, timeout=60)


def resident(worker) -> list[str]:
    return [entry["name"] for entry in worker_status(worker)["resident"]]


def test_list_shows_the_store_files_with_size_digest_and_details(client, models_dir):
    listed = {m.model: m for m in client.list().models}
    assert sorted(listed) == ["tiny-a:latest", "tiny-b:latest", "tiny-c:latest"]
    entry = listed["tiny-a:latest"]
    assert entry.size == (models_dir / A).stat().st_size
    assert len(entry.digest) == 64
    assert entry.details.format == "gguf"
    assert entry.details.family == "llama"
    assert entry.modified_at is not None


def test_show_reports_the_gguf_header(client):
    shown = client.show("tiny-a")
    assert shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 2048
    assert shown.modelinfo["llama.embedding_length"] == TINY_DIMENSIONS
    assert shown.modelinfo["general.parameter_count"] > 0
    assert shown.details.parameter_size.endswith("K")
    assert client.show("tiny-a.gguf").modelinfo == shown.modelinfo  # the file name works too


def test_generate_streams_and_answers_whole(client, store):
    pieces = list(client.generate("tiny-a", "hello", stream=True, options={"num_predict": 4}))
    assert [p.done for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert pieces[-1].done_reason == "length"
    assert pieces[-1].eval_count == len(pieces) - 1 == 4
    whole = client.generate("tiny-a:latest", "hello", options={"num_predict": 4, "seed": 7})
    assert whole.done and whole.eval_count == 4 and whole.prompt_eval_count > 0
    again = client.generate("tiny-a.gguf", "hello", options={"num_predict": 4, "seed": 7})
    assert again.response == whole.response  # seed and temperature are honoured
    answer = requests.post(
        f"{store.url}/api/generate",
        json={"model": "tiny-a", "prompt": "x", "options": {"num_predict": 2}},
        timeout=60,
    )
    assert answer.headers["Content-Type"] == "application/x-ndjson"
    assert answer.headers["X-Cache-Action"] == "already_loaded"
    assert answer.headers["X-Model"] == A


def test_chat_streams_an_answer_from_a_model_swapped_in(client, worker):
    stream = client.chat(
        "tiny-b",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        options={"num_predict": 5, "temperature": 0.5, "top_p": 0.9, "stop": ["\n\n\n"]},
    )
    pieces = list(stream)
    assert pieces[-1].done and pieces[-1].message.role == "assistant"
    assert all(p.message.content for p in pieces[:-1])
    assert resident(worker) == [B]
    whole = client.chat("tiny-b", messages=[{"role": "user", "content": "hello"}], stream=False)
    assert whole.done and whole.message.role == "assistant" and whole.done_reason


def test_ollama_lru_sequence_through_api_chat(store, worker):
    """The seed's LRU sequence (MAX_CACHE_SIZE=2) driven through /api/chat."""
    expected = [
        (A, "load_from_store", ""),
        (A, "already_loaded", ""),
        (B, "load_from_store", ""),
        (C, "load_from_store", A),  # cache full: evict the least recently used
        (A, "load_from_store", B),
    ]
    for model, action, evicted in expected:
        answer = chat_raw(store, model.removesuffix(".gguf"))
        assert answer.status_code == 200, answer.text
        assert (answer.headers["X-Cache-Action"], answer.headers["X-Evicted"]) == (action, evicted)
        assert answer.json()["done"] is True
    assert sorted(e["name"] for e in store_status(store)["cached"]) == [A, C]


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client, worker, store):
    loaded = client.generate("tiny-c", "")
    assert loaded.done and loaded.done_reason == "load"
    assert resident(worker) == [C]
    assert [m.model for m in client.ps().models] == ["tiny-c:latest"]
    unloaded = client.generate("tiny-c", "", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert resident(worker) == []
    assert client.ps().models == []
    chatted = client.chat("tiny-a", messages=[])
    assert chatted.done_reason == "load" and resident(worker) == [A]


def test_keep_alive_zero_on_a_generation_unloads_after_it(client, worker):
    client.chat(
        "tiny-a",
        messages=[{"role": "user", "content": "hi"}],
        keep_alive=0,
        options={"num_predict": 2},
    )
    # The unload follows the answer's end (as on the other routes), not before the client
    # has read it.
    assert wait_for(lambda: resident(worker) == [], timeout=10)


def test_ps_reports_expiry_from_keep_alive(client):
    client.generate("tiny-a", "", keep_alive="10m")
    (entry,) = client.ps().models
    assert entry.model == "tiny-a:latest"
    assert entry.size > 0
    left = entry.expires_at - datetime.now(UTC)
    assert timedelta(minutes=9) < left <= timedelta(minutes=10)
    client.generate("tiny-a", "", keep_alive=-1)
    assert client.ps().models[0].expires_at.year == 9999


def test_embed_returns_unit_vectors_of_the_models_size(client, store):
    answer = client.embed("tiny-a", input=["hello world", "goodbye", "hello world"])
    vectors = np.array(answer.embeddings, dtype=np.float32)
    assert vectors.shape == (3, TINY_DIMENSIONS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    single = client.embed("tiny-a", input="hello world").embeddings[0]
    assert np.array_equal(single, client.embed("tiny-a", input="hello world").embeddings[0])
    legacy = client.embeddings("tiny-a", prompt="hello world").embedding
    assert np.allclose(legacy, single, atol=1e-6)
    raw = requests.post(
        f"{store.url}/api/embed", json={"model": "tiny-a", "input": "x"}, timeout=60
    )
    assert raw.headers["X-Cache-Action"] == "already_loaded"


def test_unknown_models_and_unsupported_fields_are_ollama_errors(client, store):
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat("nope", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404
    assert 'model "nope" not found' in missing.value.error
    for call, field in [
        (lambda: client.generate("tiny-a", "hi", images=["aGk="]), "images"),
        (
            lambda: client.generate("tiny-a", "hi", format={"type": "integer", "minimum": 1}),
            "minimum",
        ),
        (lambda: client.generate("tiny-a", "hi", system="be brief"), "system"),
        (
            lambda: client.chat(
                "tiny-a",
                messages=[{"role": "user", "content": "hi"}],
                tools=[{"type": "function", "function": {"name": "a b"}}],
            ),
            "tools",
        ),
        (lambda: client.generate("tiny-a", "hi", options={"top_k": -5}), "top_k"),
        (lambda: client.embed("nope", input="x"), "not found"),
    ]:
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert field in refused.value.error
        assert refused.value.status_code in (400, 404)
    body = requests.post(f"{store.url}/api/pull", json={"model": "x"}, timeout=10)
    assert body.status_code == 501 and "MODELS_DIR" in body.json()["error"]
    assert requests.get(f"{store.url}/api/version", timeout=10).json()["version"]


def test_ollama_api_can_be_switched_off(start_store, worker):
    store = start_store(worker, ollama_api=False)
    assert requests.get(f"{store.url}/api/tags", timeout=10).status_code == 404
    assert requests.get(f"{store.url}/v1/models", timeout=10).status_code == 200
