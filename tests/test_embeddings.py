"""``POST /v1/embeddings`` with the official ``openai`` client against a real store and worker."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
import requests

from inference_worker.embeddings import ModelClosed
from inference_worker.engine import Engine
from tests.conftest import A, B, ask, start_generation, worker_status

TINY_DIMENSIONS = 64  # the tiny models' embedding_length (model_swap/tiny_models.py)


@pytest.fixture
def store(start_store, worker):
    return start_store(worker)


@pytest.fixture
def client(store):
    return openai.OpenAI(base_url=f"{store.url}/v1", api_key="unused", max_retries=0)


def vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def test_openai_client_embeddings_have_the_models_size_and_are_unit_length(client):
    response = client.embeddings.create(model=A, input=["hello world", "goodbye", "hello world"])
    got = vectors(response)
    assert got.shape == (3, TINY_DIMENSIONS)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert [item.index for item in response.data] == [0, 1, 2]
    assert np.allclose(got[0], got[2], atol=1e-5)  # the same input, the same vector
    assert not np.allclose(got[0], got[1])  # different inputs, different vectors
    assert response.model == A
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_embeddings_are_deterministic_across_requests_and_batches(client):
    alone = vectors(client.embeddings.create(model=A, input="the same words"))
    again = vectors(client.embeddings.create(model=A, input="the same words"))
    assert np.array_equal(alone, again)
    batched = vectors(client.embeddings.create(model=A, input=["x", "the same words", "y" * 50]))
    # Batched with other inputs: the same vector up to float rounding of a bigger matmul.
    assert float(alone[0] @ batched[1]) > 0.9999


def test_float_and_base64_encodings_carry_the_same_vector(store):
    def ask_embedding(encoding):
        body = {"model": A, "input": "encode me", "encoding_format": encoding}
        answer = requests.post(f"{store.url}/v1/embeddings", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["data"][0]["embedding"]

    floats = np.array(ask_embedding("float"), dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(ask_embedding("base64")), dtype="<f4")
    assert np.array_equal(floats, decoded)


def embed(store, model: str, text: str) -> requests.Response:
    return requests.post(
        f"{store.url}/v1/embeddings", json={"model": model, "input": text}, timeout=60
    )


def test_embedding_goes_through_the_swap_path_with_headers_and_no_reload(store, worker):
    first = embed(store, A, "a")
    assert first.headers["X-Cache-Action"] == "load_from_store"
    assert first.headers["X-Model"] == A
    loads = worker_status(worker)["loads"]
    again = embed(store, A, "b")
    assert again.headers["X-Cache-Action"] == "already_loaded"
    assert worker_status(worker)["loads"] == loads  # a resident model is not reloaded
    # Generation shares the resident model.
    assert ask(store, A).headers["X-Cache-Action"] == "already_loaded"
    swapped = embed(store, B, "c")
    assert swapped.headers["X-Cache-Action"] == "load_from_store"
    assert [r["name"] for r in worker_status(worker)["resident"]] == [B]
    metrics = requests.get(f"{store.url}/metrics", timeout=10).text
    assert 'route="/v1/embeddings"' in metrics


def test_embedding_context_memory_counts_in_the_workers_report(client, worker):
    client.embeddings.create(model=A, input="count my context")
    (entry,) = worker_status(worker)["resident"]
    assert entry["embedding_bytes"] > 0
    assert entry["estimated_bytes"] > entry["embedding_bytes"]


def test_dimensions_other_than_the_models_size_is_a_400(client):
    same = client.embeddings.create(model=A, input="x", dimensions=TINY_DIMENSIONS)
    assert len(same.data[0].embedding) == TINY_DIMENSIONS
    with pytest.raises(openai.BadRequestError, match="dimensions 8 is not supported"):
        client.embeddings.create(model=A, input="x", dimensions=8)


def test_input_longer_than_the_context_is_a_400_naming_the_limit(start_store, start_worker):
    store = start_store(start_worker(n_ctx=64))
    client = openai.OpenAI(base_url=f"{store.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="at most 64 \\(N_CTX\\)"):
        client.embeddings.create(model=A, input="word " * 200)


def test_embedding_tokens_bounds_inputs_and_batches(start_store, start_worker):
    store = start_store(start_worker(embedding_tokens=32))
    client = openai.OpenAI(base_url=f"{store.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="at most 32 \\(EMBEDDING_TOKENS\\)"):
        client.embeddings.create(model=A, input="word " * 40)
    # Forty short inputs do not fit one batch of 32 tokens: several decodes.
    texts = [f"item {i}" for i in range(40)]
    batched = vectors(client.embeddings.create(model=A, input=texts))
    alone = vectors(client.embeddings.create(model=A, input=texts[-1]))
    assert batched.shape == (40, TINY_DIMENSIONS)
    assert float(alone[0] @ batched[-1]) > 0.9999


def test_unknown_model_is_a_404_and_bad_input_a_400(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.embeddings.create(model="nope.gguf", input="x")
    with pytest.raises(openai.BadRequestError, match="must not be empty"):
        client.embeddings.create(model=A, input="")
    with pytest.raises(openai.BadRequestError, match="encoding_format"):
        client.embeddings.create(model=A, input="x", encoding_format="int8")


def test_embedding_runs_while_a_generation_holds_the_same_model(store, client):
    """Embeddings use their own context on the resident weights: no queue behind generation."""
    response, _first, chunks = start_generation(store, A, max_tokens=1500)
    try:
        embedded = client.embeddings.create(model=A, input="while it generates")
        assert len(embedded.data[0].embedding) == TINY_DIMENSIONS
        generating = requests.get(f"{store.url}/status", timeout=10).json()["generating"]
        assert generating == 1  # the generation was still running when the vector came back
    finally:
        response.close()


def test_a_model_unloaded_after_it_was_picked_is_never_read(models_dir):
    """``Engine.unload`` frees the embedding context first; a request that picked the model
    before the unload gets ModelClosed (the worker's 409), not a read of freed memory."""
    engine = Engine(n_ctx=256, embedding_tokens=64)
    engine.load(A, models_dir / A)
    name, llm = engine.embedding_model(A)
    assert engine.embeddings.embed(llm, ["before"]).dimensions == TINY_DIMENSIONS
    assert engine.embedding_bytes()[A] > 0
    assert engine.unload(A)
    with pytest.raises(ModelClosed):
        engine.embeddings.embed(llm, ["after"])
    assert engine.embedding_bytes() == {}
