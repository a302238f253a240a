"""Request translation checked value by value: each option a client sends reaches the
worker's job under its own name with its own value (the end-to-end tests only see that
some text comes back). Ollama's ``options`` and OpenAI's top-level fields; pure."""

from __future__ import annotations

import json
import time

import pytest

from model_store_server.api import ollama as ollama_api
from model_store_server.api import openai as openai_api
from model_swap.errors import BadRequest, WorkerFailed

LIMIT = 10_000
# Every sampling value distinct, so a value stored under another name shows.
SAMPLING = {
    "temperature": 0.3,
    "top_p": 0.7,
    "seed": 4242,
    "stop": ["END", "\n\n"],
    "presence_penalty": 0.4,
    "frequency_penalty": -0.6,
}


def test_ollama_generate_maps_every_option_to_its_own_field():
    body = {"model": "tiny-a", "prompt": "hi", "options": {**SAMPLING, "num_predict": 17}}
    request = ollama_api.parse_generate(body, max_prompt_chars=LIMIT)
    assert request.model == "tiny-a.gguf"
    assert request.job == {
        "prompt": "hi",
        "max_tokens": 17,
        **SAMPLING,
        "stream_format": "events",
    }


def test_ollama_chat_maps_every_option_to_its_own_field():
    body = {
        "model": "tiny-b:latest",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {**SAMPLING, "num_predict": 5},
    }
    request = ollama_api.parse_chat(body, max_prompt_chars=LIMIT)
    assert request.model == "tiny-b.gguf"
    assert request.job == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        **SAMPLING,
        "stream_format": "events",
    }


@pytest.mark.parametrize("option", sorted(SAMPLING))
def test_ollama_one_option_alone_sets_only_its_field(option):
    options = {option: SAMPLING[option]}
    job = ollama_api.parse_options(options)
    assert job == {"max_tokens": None, option: SAMPLING[option]}


@pytest.mark.parametrize(("predict", "max_tokens"), [(None, None), (-1, None), (-2, None), (1, 1)])
def test_ollama_num_predict(predict, max_tokens):
    options = {} if predict is None else {"num_predict": predict}
    assert ollama_api.parse_options(options)["max_tokens"] == max_tokens


@pytest.mark.parametrize("predict", [0, -3, 1.5, True, "8"])
def test_ollama_bad_num_predict_is_refused(predict):
    with pytest.raises(BadRequest) as err:
        ollama_api.parse_options({"num_predict": predict})
    assert err.value.param == "num_predict"


def test_ollama_keep_alive_and_stream_are_read():
    body = {"model": "tiny-a", "prompt": "hi", "keep_alive": 7, "stream": False}
    request = ollama_api.parse_generate(body, max_prompt_chars=LIMIT)
    assert request.keep_alive == 7 and request.stream is False
    streamed = ollama_api.parse_generate({"model": "tiny-a", "prompt": "hi"}, max_prompt_chars=10)
    assert streamed.stream is True and streamed.keep_alive is None


def test_openai_chat_maps_every_field_to_its_own_field():
    body = {
        "model": "tiny-a.gguf",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
        **SAMPLING,
    }
    request = openai_api.parse_chat(body, max_prompt_chars=LIMIT)
    assert request.job == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
        **SAMPLING,
        "stream_format": "events",
    }
    assert (request.stream, request.include_usage) == (False, False)


def test_openai_max_completion_tokens_wins_over_max_tokens():
    body = {"model": "m.gguf", "messages": [{"role": "user", "content": "x"}]}
    both = openai_api.parse_chat(
        {**body, "max_tokens": 9, "max_completion_tokens": 3}, max_prompt_chars=LIMIT
    )
    assert both.job["max_tokens"] == 3


def test_openai_completion_maps_every_field_to_its_own_field():
    body = {
        "model": "tiny-a.gguf",
        "prompt": ["once"],
        "max_tokens": 11,
        "stream": True,
        "stream_options": {"include_usage": True},
        **SAMPLING,
    }
    request = openai_api.parse_completion(body, max_prompt_chars=LIMIT)
    assert request.job == {
        "prompt": "once",
        "max_tokens": 11,
        **SAMPLING,
        "stream_format": "events",
    }
    assert (request.stream, request.include_usage) == (True, True)


# -- Ollama: what is refused is named, with its parameter -------------------------------------

HI = [{"role": "user", "content": "hi"}]


def refused(parse, body: dict) -> BadRequest:
    with pytest.raises(BadRequest) as err:
        parse(body, max_prompt_chars=LIMIT)
    return err.value


@pytest.mark.parametrize(
    "field", ["images", "system", "template", "context", "suffix", "think", "logprobs"]
)
def test_ollama_generate_refuses_each_field_it_cannot_honour(field):
    err = refused(ollama_api.parse_generate, {"model": "m", "prompt": "hi", field: "x"})
    assert err.param == field
    assert err.message == f"{field} is not supported by model-swap's /api/generate"


@pytest.mark.parametrize("field", ["think", "logprobs"])
def test_ollama_chat_refuses_each_field_it_cannot_honour(field):
    err = refused(ollama_api.parse_chat, {"model": "m", "messages": HI, field: ["x"]})
    assert err.param == field
    assert err.message == f"{field} is not supported by model-swap's /api/chat"


@pytest.mark.parametrize("empty", [None, False, "", [], {}])
def test_ollama_empty_values_of_those_fields_are_accepted(empty):
    body = {"model": "m", "prompt": "hi", "images": empty}
    assert ollama_api.parse_generate(body, max_prompt_chars=LIMIT).job["prompt"] == "hi"


@pytest.mark.parametrize("api", ["generate", "chat"])
@pytest.mark.parametrize("bad", ["x", False, [], 3])
def test_ollama_format_is_json_or_a_schema(api, bad):
    parse, body = (
        (ollama_api.parse_generate, {"model": "m", "prompt": "hi"})
        if api == "generate"
        else (ollama_api.parse_chat, {"model": "m", "messages": HI})
    )
    err = refused(parse, {**body, "format": bad})
    assert (err.param, err.message) == ("format", 'format must be "json" or a JSON Schema object')
    for absent in (None, ""):
        parse({**body, "format": absent}, max_prompt_chars=LIMIT)


@pytest.mark.parametrize("field", ["images", "thinking"])
def test_ollama_chat_refuses_message_fields_it_cannot_honour(field):
    messages = [*HI, {"role": "assistant", "content": "x", field: ["y"]}]
    err = refused(ollama_api.parse_chat, {"model": "m", "messages": messages})
    assert err.param == f"messages[1].{field}"
    assert err.message == f"messages[1].{field} is not supported by model-swap"


def test_ollama_options_stream_and_raw_must_have_their_types():
    err = refused(ollama_api.parse_generate, {"model": "m", "prompt": "x", "options": [1]})
    assert (err.param, err.message) == ("options", "options must be an object")
    err = refused(ollama_api.parse_generate, {"model": "m", "prompt": "x", "stream": "yes"})
    assert (err.param, err.message) == ("stream", "stream must be a boolean")
    err = refused(ollama_api.parse_generate, {"model": "m", "prompt": "x", "raw": "yes"})
    assert (err.param, err.message) == ("raw", "raw must be a boolean")
    for raw in (None, True, False):
        ollama_api.parse_generate({"model": "m", "prompt": "x", "raw": raw}, max_prompt_chars=10)
    # An option llama.cpp honours lands in its own field; one it cannot is left out.
    job = ollama_api.parse_generate(
        {"model": "m", "prompt": "x", "options": {"top_k": 3, "num_gpu": 1}},
        max_prompt_chars=LIMIT,
    ).job
    assert job["top_k"] == 3
    assert "num_gpu" not in job
    err = refused(ollama_api.parse_generate, {"model": "m", "options": {"num_predict": 0}})
    assert err.message == "options.num_predict must be a positive integer, -1 or -2"


def test_ollama_requests_carry_their_kind_name_stream_and_keep_alive():
    chat = ollama_api.parse_chat(
        {"model": "tiny-b:latest", "messages": HI, "stream": False, "keep_alive": "5m"},
        max_prompt_chars=LIMIT,
    )
    assert (chat.kind, chat.name, chat.model) == ("chat", "tiny-b:latest", "tiny-b.gguf")
    assert chat.stream is False and chat.keep_alive == 300.0
    generate = ollama_api.parse_generate(
        {"model": "tiny-a", "prompt": "hi", "stream": None}, max_prompt_chars=LIMIT
    )
    assert (generate.kind, generate.name, generate.stream) == ("generate", "tiny-a", True)
    streamed = ollama_api.parse_chat({"model": "m", "messages": HI}, max_prompt_chars=LIMIT)
    assert streamed.stream is True


def test_ollama_an_empty_prompt_or_no_messages_only_loads_but_still_checks_options():
    for body in ({"model": "m"}, {"model": "m", "prompt": ""}):
        assert ollama_api.parse_generate(body, max_prompt_chars=LIMIT).job is None
    for messages in (None, []):
        request = ollama_api.parse_chat({"model": "m", "messages": messages}, max_prompt_chars=9)
        assert request.job is None
    for parse in (ollama_api.parse_generate, ollama_api.parse_chat):
        err = refused(parse, {"model": "m", "options": {"num_predict": 0}})
        assert err.param == "num_predict"


# -- Ollama answers from the worker's events ---------------------------------------------------

EVENTS = [
    b'{"text": "Hel"}\n{"text": "lo"}\n',
    b'{"finish_reason": "length", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n',
]


def answers(kind: str):
    body = {"model": "tiny-a:latest", "prompt": "hi", "messages": HI}
    parse = ollama_api.parse_chat if kind == "chat" else ollama_api.parse_generate
    if kind == "chat":
        body.pop("prompt")
    else:
        body.pop("messages")
    return parse(body, max_prompt_chars=LIMIT)


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_ollama_stream_is_one_object_per_token_then_the_done_object(kind):
    request = answers(kind)
    started = time.perf_counter_ns() - 10**9  # a second ago
    timing = ollama_api.Timing(started=started, ready=started + 5)
    lines = [json.loads(line) for line in ollama_api.ndjson(request, iter(EVENTS), timing)]
    assert len(lines) == 3
    key = "message" if kind == "chat" else "response"

    def text(line):
        return line[key]["content"] if kind == "chat" else line[key]

    assert [text(line) for line in lines] == ["Hel", "lo", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert all(line["model"] == "tiny-a:latest" and "created_at" in line for line in lines)
    if kind == "chat":
        assert lines[0]["message"]["role"] == "assistant"
    done = lines[-1]
    assert done["done_reason"] == "length"
    assert (done["prompt_eval_count"], done["eval_count"]) == (3, 2)
    assert done["load_duration"] == 5 and 10**9 <= done["total_duration"] < 60 * 10**9


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_ollama_whole_answer_joins_the_tokens(kind):
    request = answers(kind)
    answer = ollama_api.whole(request, iter(EVENTS), ollama_api.Timing(started=0, ready=7))
    text = answer["message"]["content"] if kind == "chat" else answer["response"]
    assert text == "Hello" and answer["done"] is True and answer["done_reason"] == "length"
    assert (answer["prompt_eval_count"], answer["eval_count"], answer["load_duration"]) == (3, 2, 7)


def test_ollama_a_broken_stream_ends_with_an_error():
    request = answers("generate")
    broken = [b'{"text": "a"}\n', b'{"error": {"type": "worker_failed", "message": "boom"}}\n']
    timing = ollama_api.Timing(started=0, ready=0)
    lines = [json.loads(line) for line in ollama_api.ndjson(request, iter(broken), timing)]
    assert lines[-1] == {"error": "boom"} and lines[0]["response"] == "a"
    with pytest.raises(WorkerFailed, match="^boom$"):
        ollama_api.whole(request, iter(broken), timing)
    cut = [b'{"text": "a"}\n']  # no final event: the worker went away
    lines = [json.loads(line) for line in ollama_api.ndjson(request, iter(cut), timing)]
    assert lines[-1] == {"error": "the worker's stream ended early"}


def test_ollama_no_finish_reason_is_stop():
    request = answers("generate")
    events = [b'{"text": "a"}\n{"finish_reason": "", "usage": {}}\n']
    answer = ollama_api.whole(request, iter(events), ollama_api.Timing(started=0, ready=0))
    assert answer["done_reason"] == "stop" and answer["eval_count"] == 0


def test_ollama_lines_keep_non_ascii_text_as_utf8():
    request = answers("generate")
    events = [b'{"text": "\xc3\xa9t\xc3\xa9"}\n{"finish_reason": ""}\n']
    lines = list(ollama_api.ndjson(request, iter(events), ollama_api.Timing(started=0, ready=0)))
    assert '"response": "été"'.encode() in lines[0]
    assert json.loads(lines[-1])["done_reason"] == "stop"


def test_ollama_embed_requests():
    embed = ollama_api.parse_embed(
        {
            "model": "tiny-a",
            "input": ["a", "b"],
            "truncate": True,
            "keep_alive": 9,
            "dimensions": 4,
        },
        max_prompt_chars=LIMIT,
    )
    assert (embed.model, embed.inputs, embed.dimensions, embed.keep_alive) == (
        "tiny-a.gguf",
        ("a", "b"),
        4,
        9.0,
    )
    assert embed.encoding_format == "float"
    legacy = ollama_api.parse_legacy_embeddings(
        {"model": "tiny-a:latest", "prompt": "a", "keep_alive": "1m"}, max_prompt_chars=LIMIT
    )
    assert (legacy.model, legacy.inputs, legacy.dimensions, legacy.keep_alive) == (
        "tiny-a.gguf",
        ("a",),
        None,
        60.0,
    )
    for parse, body in (
        (ollama_api.parse_embed, {"model": "m", "input": "a"}),
        (ollama_api.parse_legacy_embeddings, {"model": "m", "prompt": "a"}),
    ):
        assert parse({**body, "options": {}}, max_prompt_chars=LIMIT).inputs == ("a",)
        # Sampling options mean nothing to an embedding: accepted and ignored, as Ollama does.
        opts = {"temperature": 1, "num_ctx": None}
        assert parse({**body, "options": opts}, max_prompt_chars=LIMIT).inputs == ("a",)
    err = refused(ollama_api.parse_embed, {"model": "m", "input": "a", "truncate": "no"})
    assert (err.param, err.message) == ("truncate", "truncate must be a boolean")
    err = refused(ollama_api.parse_legacy_embeddings, {"model": "m", "prompt": ["a"]})
    assert (err.param, err.message) == ("prompt", "prompt must be a string")
