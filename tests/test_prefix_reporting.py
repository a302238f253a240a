"""Prefix reuse as clients see it, through a real store and worker with tiny models: the
OpenAI answer's ``usage.prompt_tokens_details.cached_tokens`` (official ``openai`` client),
Ollama's ``prompt_eval_count`` (only the tokens evaluated), the worker's ``/status`` and
``/metrics`` counters, and the same text with PREFIX_CACHE off."""

from __future__ import annotations

import ollama
import openai
import requests

from tests.conftest import A, worker_status


def client_for(store) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{store.url}/v1", api_key="unused", max_retries=0, timeout=60)


def metric(worker, name: str) -> float:
    for line in requests.get(f"{worker.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def chat_turns(store, turns: int = 3):
    """A conversation whose history grows: every answer and its usage."""
    client = client_for(store)
    messages = [{"role": "system", "content": "You are a tiny model."}]
    answers, usages = [], []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Tell me about turn {turn} please."})
        answer = client.chat.completions.create(
            model=A, messages=messages, max_tokens=16, temperature=0.0
        )
        text = answer.choices[0].message.content
        messages.append({"role": "assistant", "content": text})
        answers.append(text)
        usages.append(answer.usage)
    return answers, usages


def test_chat_turns_report_cached_tokens_and_answer_as_without_reuse(
    start_worker, start_store, tmp_path
):
    worker = start_worker(n_ctx=512)
    plain_worker = start_worker(n_ctx=512, prefix_cache=False, model_cache_dir=tmp_path / "plain")
    store, plain_store = start_store(worker), start_store(plain_worker)
    answers, usages = chat_turns(store)
    expected, plain_usages = chat_turns(plain_store)
    assert answers == expected
    assert [u.prompt_tokens for u in usages] == [u.prompt_tokens for u in plain_usages]
    assert all(u.prompt_tokens_details.cached_tokens == 0 for u in plain_usages)
    cached = [u.prompt_tokens_details.cached_tokens for u in usages]
    assert cached[0] == 0
    for before, usage in zip(usages, usages[1:], strict=False):
        # The previous turn's whole prompt at least (the chat renders prefix-stable), and
        # never the whole prompt: its last token is evaluated.
        assert before.prompt_tokens <= usage.prompt_tokens_details.cached_tokens
        assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    status = worker_status(worker)
    (model,) = status["resident"]
    assert model["reused_tokens"] == sum(cached)
    assert model["prompt_tokens"] == sum(u.prompt_tokens for u in usages)
    assert model["cached_tokens"] > 0 and model["kv_tokens"] == 0
    assert status["prefix_cache"] is True and status["kv_streams"] == status["parallel"] + 1
    assert metric(worker, "model_swap_worker_prompt_reused_tokens_total") == sum(cached)
    assert metric(plain_worker, "model_swap_worker_prompt_reused_tokens_total") == 0
    assert worker_status(plain_worker)["kv_streams"] == worker_status(plain_worker)["parallel"]


def test_ollama_prompt_eval_count_counts_only_the_tokens_evaluated(start_worker, start_store):
    worker = start_worker(n_ctx=512)
    client = ollama.Client(host=start_store(worker).url)
    prompt = "the same prompt, sent twice to the same model"
    first = client.generate("tiny-a", prompt, options={"num_predict": 4, "temperature": 0})
    again = client.generate("tiny-a", prompt, options={"num_predict": 4, "temperature": 0})
    assert again.response == first.response
    assert first.prompt_eval_count > 10
    assert again.prompt_eval_count == 1  # only the last prompt token, for its logits
    (model,) = worker_status(worker)["resident"]
    assert model["reused_tokens"] == first.prompt_eval_count - 1
