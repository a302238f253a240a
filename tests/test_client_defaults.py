"""Requests popular clients send on their default settings, replayed against a real store.

Each request body below is what the client sent (captured), so a change that breaks one of
these clients fails here: llama-index's ``Ollama`` (``num_ctx`` always), LangChain's
``OllamaEmbeddings`` (an ``options`` object of nulls), LangChain's ``OpenAIEmbeddings``
(tiktoken's token ids, run as the real client), Open WebUI's chat
(``num_ctx``/``repeat_penalty`` and its built-in tools), and ``/v1`` model ids written as
Ollama writes them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import ollama
import openai
import pytest
import requests

from model_store_server.api import tiktoken_ids
from tests.conftest import A
from tests.test_openai import client_for

# LangChain's OllamaEmbeddings (langchain-ollama 1.1.0) sends every option it knows, unset.
LANGCHAIN_NULL_OPTIONS = {
    key: None
    for key in (
        "mirostat",
        "mirostat_eta",
        "mirostat_tau",
        "num_ctx",
        "num_gpu",
        "keep_alive",
        "num_thread",
        "repeat_last_n",
        "repeat_penalty",
        "temperature",
        "stop",
        "tfs_z",
        "top_k",
        "top_p",
    )
}
# Open WebUI 0.12.4's built-in tools, attached to every chat with native function calling.
OPEN_WEBUI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_timestamp",
            "description": "Get the current Unix timestamp in seconds.",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "calculate_timestamp",
            "description": "Get the current Unix timestamp, optionally adjusted by days, "
            "weeks, months, or years.",
            "parameters": {
                "type": "object",
                "properties": {
                    "days_ago": {"type": "integer", "description": "Number of days ago"},
                    "weeks_ago": {"type": "integer", "description": "Number of weeks ago"},
                },
                "required": [],
            },
        },
    },
]


@pytest.fixture
def store(start_store, worker):
    return start_store(worker)


@pytest.fixture
def tokenize(models_dir):
    """The tiny model's own token ids for a text (as the worker tokenizes a prompt)."""
    from llama_cpp import Llama

    llm = Llama(str(models_dir / A), vocab_only=True, verbose=False)
    yield lambda text: llm.tokenize(text.encode(), add_bos=True, special=False)
    llm.close()


def post(store, path: str, body: dict) -> requests.Response:
    return requests.post(f"{store.url}{path}", json=body, timeout=120)


def test_llama_index_num_ctx_is_capped_to_the_worker_and_said_so(store):
    # llama-index's Ollama LLM reads context_length from /api/show and sends it as num_ctx.
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": False,
        "options": {"temperature": 0.75, "num_ctx": 32768, "num_predict": 4},
        "keep_alive": None,
    }
    response = post(store, "/api/chat", body)
    assert response.status_code == 200, response.text
    assert response.json()["eval_count"] == 4
    assert response.headers["X-Num-Ctx-Capped"] == (
        "requested=32768 served=2048 (the worker's N_CTX)"
    )


def test_num_ctx_below_the_worker_context_bounds_the_request(store):
    client = ollama.Client(host=store.url)
    answer = client.generate("tiny-a", "hello", options={"num_ctx": 24, "num_predict": 500})
    assert answer.prompt_eval_count + answer.eval_count == 24
    assert answer.done_reason == "length"
    with pytest.raises(ollama.ResponseError, match="context holds 3"):
        client.generate("tiny-a", "hello world model swap", options={"num_ctx": 3})


def test_langchain_ollama_embeddings_null_options_are_skipped(store):
    body = {
        "model": "tiny-a",
        "input": ["hello world"],
        "options": LANGCHAIN_NULL_OPTIONS,
        "keep_alive": None,
        "truncate": True,
    }
    response = post(store, "/api/embed", body)
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]) == 1


def test_unhonourable_ollama_options_are_ignored_with_one_log_line(store, caplog):
    caplog.set_level(logging.INFO, logger="model_store_server.api.ollama")
    client = ollama.Client(host=store.url)
    answer = client.generate(
        "tiny-a",
        "hello",
        options={"num_predict": 3, "num_gpu": 99, "num_thread": 8, "use_mmap": True},
    )
    assert answer.eval_count == 3
    lines = [r.getMessage() for r in caplog.records if "ignored Ollama options" in r.message]
    assert lines == ["ignored Ollama options: num_gpu, num_thread, use_mmap"]


def test_ollama_sampler_options_reach_llama_cpp(store):
    client = ollama.Client(host=store.url)
    greedy = client.generate("tiny-a", "hello", options={"num_predict": 12, "temperature": 0})
    # top_k 1 leaves only the most likely token: the greedy text, whatever the seed.
    for seed in (1, 2):
        top1 = client.generate(
            "tiny-a",
            "hello",
            options={"num_predict": 12, "temperature": 1.5, "top_k": 1, "seed": seed},
        )
        assert top1.response == greedy.response
    # A strong repeat penalty over the whole context changes the greedy text.
    penalised = client.generate(
        "tiny-a",
        "hello",
        options={
            "num_predict": 12,
            "temperature": 0,
            "repeat_penalty": 5.0,
            "repeat_last_n": -1,
        },
    )
    assert penalised.response != greedy.response
    for options in ({"mirostat": 2, "mirostat_tau": 3.0}, {"min_p": 0.2, "typical_p": 0.9}):
        answer = client.generate("tiny-a", "hello", options={"num_predict": 3, **options})
        assert answer.eval_count == 3


def test_open_webui_chat_with_its_tools_and_advanced_params(store):
    body = {
        "model": "tiny-a:latest",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "options": {"num_ctx": 4096, "repeat_penalty": 1.1, "num_predict": 8},
        "tools": OPEN_WEBUI_TOOLS,
    }
    response = post(store, "/api/chat", body)
    assert response.status_code == 200, response.text
    assert response.json  # ndjson: the last line says done
    last = response.text.strip().splitlines()[-1]
    assert '"done": true' in last


def test_openai_embeddings_token_arrays_are_the_models_ids(worker, start_store, tokenize):
    # EMBEDDING_TOKEN_IDS=model: the ids are the model's own (vLLM's, llama-server's reading).
    client = client_for(start_store(worker, embedding_token_ids="model"))
    hello = tokenize("hello world")
    text = client.embeddings.create(model=A, input="hello world", encoding_format="float")
    ids = client.embeddings.create(model=A, input=hello, encoding_format="float")
    both = client.embeddings.create(model=A, input=[hello, [1, 260]])
    assert ids.usage.prompt_tokens == text.usage.prompt_tokens == len(hello)
    assert ids.data[0].embedding == pytest.approx(text.data[0].embedding, abs=1e-5)
    assert [d.index for d in both.data] == [0, 1]
    with pytest.raises(openai.BadRequestError, match="not in this model's vocabulary"):
        client.embeddings.create(model=A, input=[[1, 2, 100000]])


@pytest.fixture
def cl100k(monkeypatch):
    """tiktoken's cl100k_base, offline: the copy litellm ships (a dev dependency), where
    tiktoken would otherwise download it (both LangChain and the store read it)."""
    spec = importlib.util.find_spec("litellm")
    tokenizers = Path(spec.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tokenizers))
    tiktoken_ids.load.cache_clear()
    yield
    tiktoken_ids.load.cache_clear()


# What langchain-openai 1.8.1's OpenAIEmbeddings sent for embed_documents(["hello world"]).
LANGCHAIN_OPENAI_EMBEDDINGS = {
    "input": [[15339, 1917]],
    "model": "tiny-a",
    "encoding_format": "base64",
}


@pytest.mark.slow
def test_langchain_openai_embeddings_on_its_defaults(store, cl100k):
    from langchain_openai import OpenAIEmbeddings

    texts = ["hello world", "model swap serves more models than fit"]
    expected = [
        d.embedding for d in client_for(store).embeddings.create(model="tiny-a", input=texts).data
    ]
    # The real client, no setting changed: it sends tiktoken ids, the store reads them
    # as the text they encode, so the vectors are the text's.
    langchain = OpenAIEmbeddings(model="tiny-a", base_url=f"{store.url}/v1", api_key="unused")
    vectors = langchain.embed_documents(texts)
    assert len(vectors) == 2
    # Each is its text's vector (up to llama.cpp's batch arithmetic), not the other's.
    assert cosine(vectors[0], expected[0]) > 0.9999 and cosine(vectors[1], expected[1]) > 0.9999
    assert cosine(vectors[0], expected[1]) < 0.99
    assert cosine(langchain.embed_query(texts[0]), expected[0]) > 0.9999
    # Its request body, replayed.
    response = post(store, "/v1/embeddings", LANGCHAIN_OPENAI_EMBEDDINGS)
    assert response.status_code == 200, response.text
    # An id cl100k_base lacks is a 400 that names the reading.
    body = {**LANGCHAIN_OPENAI_EMBEDDINGS, "input": [[15339, 10**6]]}
    response = post(store, "/v1/embeddings", body)
    assert response.status_code == 400 and "cl100k_base" in response.json()["error"]["message"]


@pytest.mark.slow
def test_token_arrays_without_tiktoken_say_how_to_send_text(models_dir, tmp_path):
    # A fresh process (tiktoken keeps a loaded encoding for good) with no cl100k_base file
    # in its cache and no way to download one.
    script = f"""
from model_store_server.app import create_app
from model_store_server.config import StoreSettings
client = create_app(StoreSettings(models_dir={str(models_dir)!r})).test_client()
body = {LANGCHAIN_OPENAI_EMBEDDINGS!r}
r = client.post("/v1/embeddings", json=body)
print(r.status_code, r.json["error"]["message"])
"""
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.startswith("400 "), done.stdout + done.stderr
    assert "check_embedding_ctx_length=False" in done.stdout
    assert "EMBEDDING_TOKEN_IDS=model" in done.stdout


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_v1_model_aliases(store):
    client = client_for(store)
    for name in ("tiny-a", "tiny-a:latest", A):
        answer = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert answer.model == A
    assert [m.id for m in client.models.list().data][0] == A
    assert client.embeddings.create(model="tiny-a:latest", input="x").data
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tiny-zz", prompt="x", max_tokens=1)


def test_completion_token_arrays_and_prompt_lists(store, tokenize):
    client = client_for(store)
    hello = tokenize("hello")
    text = client.completions.create(model=A, prompt="hello", max_tokens=6, temperature=0)
    # The same prompt as the model's token ids: the same greedy text.
    ids = client.completions.create(model=A, prompt=hello, max_tokens=6, temperature=0)
    assert ids.choices[0].text == text.choices[0].text
    many = client.completions.create(
        model=A, prompt=["hello", hello, "world"], max_tokens=6, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].text == many.choices[1].text == text.choices[0].text
    assert many.usage.completion_tokens == 18
    stream = client.completions.create(
        model=A, prompt=[hello, [1, 260]], max_tokens=4, temperature=0, stream=True
    )
    by_index: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + choice.text
    assert sorted(by_index) == [0, 1]
    assert (
        by_index[0]
        == client.completions.create(model=A, prompt=hello, max_tokens=4, temperature=0)
        .choices[0]
        .text
    )
    with pytest.raises(openai.BadRequestError, match="not in this model's vocabulary"):
        client.completions.create(model=A, prompt=[1, 99999], max_tokens=2)


def test_null_fields_are_ignored_on_v1(store):
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "temperature": None,
        "top_p": None,
        "n": None,
        "stop": None,
        "tools": None,
        "tool_choice": None,
        "response_format": None,
        "stream_options": None,
        "seed": None,
        "logit_bias": None,
        "user": None,
    }
    response = post(store, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
