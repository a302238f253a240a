"""LiteLLM (1.110.2) on its defaults, through its OpenAI and its Ollama providers.

The replay tests send the bodies LiteLLM sent (captured from the real client against a
real store, headers included: its Ollama provider posts JSON with no Content-Type, as
Ollama accepts); the slow test runs the real client (offline: LITELLM_LOCAL_MODEL_COST_MAP)
and checks it still sends those bodies.
"""

from __future__ import annotations

import io
import json
import os

import pytest
import requests

from model_store_server.app import create_app as create_store_app
from model_store_server.config import StoreSettings
from model_swap.serving import ServerThread

HELLO = [{"role": "user", "content": "hello"}]
# A tool without arguments: the tiny model writes a character per token, and up to 4
# parallel calls must fit LiteLLM's default max_tokens (ours, 256: it sends none).
CLOCK = {
    "type": "function",
    "function": {
        "name": "now",
        "description": "The current time",
        "parameters": {"type": "object", "properties": {}},
    },
}
OLLAMA_MESSAGES = [{"role": "user", "content": "hello", "images": []}]
OLLAMA_PROMPT = "### User:\nhello\n\n"  # the ollama provider's own prompt template

# (path, body, Content-Type) for each call below, in order, as LiteLLM sent them.
CALLS = {
    "openai chat": [("/v1/chat/completions", {"model": "tiny-a", "messages": HELLO}, "json")],
    "openai stream": [
        ("/v1/chat/completions", {"model": "tiny-a", "messages": HELLO, "stream": True}, "json")
    ],
    "openai tools": [
        (
            "/v1/chat/completions",
            {"model": "tiny-a", "messages": HELLO, "tools": [CLOCK], "tool_choice": "required"},
            "json",
        )
    ],
    "openai embedding": [("/v1/embeddings", {"model": "tiny-a", "input": ["hello world"]}, "json")],
    "ollama": [
        (
            "/api/generate",
            {
                "model": "tiny-a",
                "prompt": OLLAMA_PROMPT,
                "options": {},
                "stream": False,
                "images": [],
            },
            None,
        ),
        ("/api/show", {"name": "tiny-a"}, "json"),
    ],
    "ollama stream": [
        (
            "/api/generate",
            {
                "model": "tiny-a",
                "prompt": OLLAMA_PROMPT,
                "options": {},
                "stream": True,
                "images": [],
            },
            None,
        ),
        ("/api/show", {"name": "tiny-a"}, "json"),
    ],
    "ollama_chat": [
        (
            "/api/chat",
            {"model": "tiny-a", "messages": OLLAMA_MESSAGES, "options": {}, "stream": False},
            None,
        ),
        ("/api/show", {"name": "tiny-a"}, "json"),
    ],
    "ollama_chat tools": [
        (
            "/api/chat",
            {
                "model": "tiny-a",
                "messages": OLLAMA_MESSAGES,
                "options": {},
                "stream": False,
                "tools": [CLOCK],
            },
            None,
        )
    ],
    "ollama embedding": [("/api/embed", {"model": "tiny-a", "input": ["hello world"]}, "json")],
}


@pytest.fixture
def recorded_store(servers, models_dir, worker):
    """A real store (Ollama API on) that keeps what each POST carried: path, body, type."""
    settings = StoreSettings(
        models_dir=models_dir,
        worker_url=worker.url,
        store_host="127.0.0.1",
        store_port=0,
        transport="http",
        ollama_api=True,
    )
    app = create_store_app(settings)
    seen: list[tuple[str, dict, str | None]] = []
    inner = app.wsgi_app

    def recording(environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            kind = environ.get("CONTENT_TYPE")
            seen.append((environ["PATH_INFO"], json.loads(body), kind and kind.split("/")[-1]))
        return inner(environ, start_response)

    app.wsgi_app = recording
    server = ServerThread(app).start()
    servers.append(server)
    server.seen = seen
    return server


@pytest.mark.parametrize("call", list(CALLS))
def test_litellm_requests_replayed(recorded_store, call):
    for path, body, kind in CALLS[call]:
        data = json.dumps(body).encode()  # what LiteLLM sent, with its Content-Type or none
        headers = {"Content-Type": "application/json"} if kind else {}
        r = requests.post(recorded_store.url + path, data=data, headers=headers, timeout=120)
        assert r.status_code == 200, (path, r.text)
        if body.get("stream"):
            continue
        answer = r.json()
        if path == "/v1/chat/completions":
            message = answer["choices"][0]["message"]
            if "tools" in body:  # required: a call naming the offered function
                call_ = message["tool_calls"][0]["function"]
                assert call_["name"] == "now" and isinstance(json.loads(call_["arguments"]), dict)
        elif path in ("/v1/embeddings", "/api/embed"):
            vectors = answer.get("embeddings") or [d["embedding"] for d in answer["data"]]
            assert len(vectors) == 1 and len(vectors[0]) > 0
        elif path in ("/api/generate", "/api/chat"):
            assert answer["done"] is True and answer["eval_count"] > 0


@pytest.mark.slow
def test_the_real_litellm_client_on_its_defaults(recorded_store, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import
    import litellm

    url = recorded_store.url
    v1 = {"api_base": f"{url}/v1", "api_key": "unused"}
    runs = {
        "openai chat": lambda: litellm.completion(model="openai/tiny-a", messages=HELLO, **v1),
        "openai stream": lambda: "".join(
            c.choices[0].delta.content or ""
            for c in litellm.completion(model="openai/tiny-a", messages=HELLO, stream=True, **v1)
        ),
        "openai tools": lambda: litellm.completion(
            model="openai/tiny-a", messages=HELLO, tools=[CLOCK], tool_choice="required", **v1
        ),
        "openai embedding": lambda: litellm.embedding(
            model="openai/tiny-a", input=["hello world"], **v1
        ),
        "ollama": lambda: litellm.completion(model="ollama/tiny-a", messages=HELLO, api_base=url),
        "ollama stream": lambda: list(
            litellm.completion(model="ollama/tiny-a", messages=HELLO, api_base=url, stream=True)
        ),
        "ollama_chat": lambda: litellm.completion(
            model="ollama_chat/tiny-a", messages=HELLO, api_base=url
        ),
        "ollama_chat tools": lambda: litellm.completion(
            model="ollama_chat/tiny-a", messages=HELLO, tools=[CLOCK], api_base=url
        ),
        "ollama embedding": lambda: litellm.embedding(
            model="ollama/tiny-a", input=["hello world"], api_base=url
        ),
    }
    for name, run in runs.items():
        before = len(recorded_store.seen)
        answer = run()
        assert answer is not None, name
        if name == "openai tools":
            assert answer.choices[0].message.tool_calls[0].function.name == "now"
        # Its /api/show look-up (model info) runs in the background: compared when present.
        sent = [c for c in recorded_store.seen[before:] if c[0] != "/api/show"]
        assert sent == [c for c in CALLS[name] if c[0] != "/api/show"], name
    assert all(c == CALLS["ollama"][1] for c in recorded_store.seen if c[0] == "/api/show")
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
