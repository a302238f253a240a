"""Chat requests are bounded before any template or tokenizer runs (issue 32, finding 3)."""

from __future__ import annotations

import pytest
import requests

from inference_worker.app import create_app as create_worker_app
from inference_worker.config import WorkerSettings
from model_swap.errors import BadRequest
from model_swap.generation import MAX_MESSAGES, MESSAGE_MARKUP_CHARS, parse_messages
from model_swap.tool_calls import MAX_TOOLS, MAX_TOOLS_BYTES, parse_tools
from tests.conftest import A

EMPTY = {"role": "user", "content": ""}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_too_many_messages_never_reach_the_worker(worker, start_store, path):
    store = start_store(worker, ollama_api=True, max_messages=50)
    body = {"model": A, "messages": [EMPTY] * 51, "stream": False}
    r = requests.post(store.url + path, json=body, timeout=30)
    assert r.status_code == 400
    assert "MAX_MESSAGES=50" in str(r.json()["error"])
    assert requests.get(f"{worker.url}/status", timeout=10).json()["received"]["bytes"] == 0


def test_empty_messages_count_against_max_prompt_chars(worker, start_store):
    store = start_store(worker, max_prompt_chars=1000)
    body = {"model": A, "messages": [EMPTY] * 40}  # 0 characters of content, ~1,250 rendered
    r = requests.post(f"{store.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and "1000" in r.json()["error"]["message"]
    assert requests.get(f"{worker.url}/status", timeout=10).json()["received"]["bytes"] == 0


def test_the_worker_refuses_too_many_messages_before_rendering(tmp_path):
    client = create_worker_app(WorkerSettings(model_cache_dir=tmp_path)).test_client()
    r = client.post("/infer", json={"model": A, "messages": [EMPTY] * (MAX_MESSAGES + 1)})
    assert r.status_code == 400 and f"MAX_MESSAGES={MAX_MESSAGES}" in r.json["error"]["message"]


def test_the_rendered_bound_counts_markup_after_the_first_message():
    assert len(parse_messages([{"role": "user", "content": "x" * 100}], max_chars=100)) == 1
    two = [EMPTY, {"role": "assistant", "content": "x" * 10}]
    assert len(parse_messages(two, max_chars=10 + MESSAGE_MARKUP_CHARS)) == 2
    with pytest.raises(BadRequest):
        parse_messages(two, max_chars=10 + MESSAGE_MARKUP_CHARS - 1)


def _tool(index: int, description: str = "") -> dict:
    return {
        "type": "function",
        "function": {
            "name": f"tool_{index}",
            "description": description,
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_tool_lists_are_bounded_in_count_and_bytes(worker, start_store, path):
    store = start_store(worker, ollama_api=True)
    hello = [{"role": "user", "content": "hi"}]
    many = [_tool(i) for i in range(MAX_TOOLS + 1)]
    # Under the count, over the bytes: descriptions of 4 KiB each.
    big = [_tool(i, "d" * 4096) for i in range(MAX_TOOLS_BYTES // 4096 + 1)]
    for tools, says in ((many, f"the limit is {MAX_TOOLS}"), (big, f"{MAX_TOOLS_BYTES}")):
        body = {"model": A, "messages": hello, "tools": tools, "stream": False}
        r = requests.post(store.url + path, json=body, timeout=30)
        assert r.status_code == 400, r.text
        error = r.json()["error"]  # Ollama's is the message itself
        assert says in (error if isinstance(error, str) else error["message"])
    assert requests.get(f"{worker.url}/status", timeout=10).json()["received"]["bytes"] == 0
    # At the limits, the tool list is taken.
    assert len(parse_tools(many[:MAX_TOOLS])) == MAX_TOOLS
    fits = [_tool(i, "d" * 4096) for i in range(MAX_TOOLS_BYTES // 4300)]  # ~4.2 KiB each
    assert len(parse_tools(fits)) == len(fits)


def test_the_worker_bounds_tool_lists_too(tmp_path):
    client = create_worker_app(WorkerSettings(model_cache_dir=tmp_path)).test_client()
    tools = [_tool(i, "d" * 4096) for i in range(MAX_TOOLS_BYTES // 4096 + 1)]
    body = {"model": A, "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    r = client.post("/infer", json=body)
    assert r.status_code == 400 and str(MAX_TOOLS_BYTES) in r.json["error"]["message"]
