"""Request translation checked value by value: each option a client sends reaches the
worker's job under its own name with its own value (the end-to-end tests only see that
some text comes back). Ollama's ``options`` and OpenAI's top-level fields; pure."""

from __future__ import annotations

import json
import logging
import time

import flask
import pytest

from model_store_server.api import ollama as ollama_api
from model_store_server.api import openai as openai_api
from model_swap import requests_json
from model_swap.errors import BadRequest, NotFound, WorkerFailed

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


def test_ollama_embedding_refusals_name_their_field():
    body = {"model": "m", "input": "a", "truncate": False}
    assert ollama_api.parse_embed(body, max_prompt_chars=LIMIT).inputs == ("a",)
    for bad, where in ((["a", ""], "input[1] "), (["a", 3], "input[1]:"), ("", "input ")):
        err = refused(ollama_api.parse_embed, {"model": "m", "input": bad})
        assert (
            err.param == "input"
            and err.message.startswith(where)
            and "]" not in err.message[len(where) :]
        )
    err = refused(ollama_api.parse_embed, {"model": "m"})
    assert (err.param, err.message) == (
        "input",
        "input must be a string or a non-empty list of strings",
    )
    err = refused(ollama_api.parse_legacy_embeddings, {"model": "m", "prompt": ""})
    assert err.param == "prompt" and err.message.startswith("prompt ")
    with pytest.raises(BadRequest) as too_long:
        ollama_api.parse_legacy_embeddings({"model": "m", "prompt": "abc"}, max_prompt_chars=2)
    assert too_long.value.param == "prompt"
    legacy = ollama_api.parse_legacy_embeddings({"model": "m", "prompt": "a"}, max_prompt_chars=1)
    assert (legacy.encoding_format, legacy.dimensions, legacy.keep_alive) == ("float", None, None)


def test_ollama_num_ctx_above_the_workers_context_is_reported_in_a_header():
    header = ollama_api.NUM_CTX_HEADER
    assert header == "X-Num-Ctx-Capped"
    assert ollama_api.context_headers({"num_ctx": 4096}, 2048) == {
        header: "requested=4096 served=2048 (the worker's N_CTX)"
    }
    assert ollama_api.context_headers({"num_ctx": 2049}, 2048) == {
        header: "requested=2049 served=2048 (the worker's N_CTX)"
    }
    assert ollama_api.context_headers({"num_ctx": 2048}, 2048) == {}  # exactly: served
    assert ollama_api.context_headers({"num_ctx": 512}, 2048) == {}
    assert ollama_api.context_headers({"num_ctx": 4096}, None) == {}  # context unknown
    assert ollama_api.context_headers({}, 2048) == {}
    assert ollama_api.context_headers(None, 2048) == {}  # a load-only request has no job


def test_ollama_embedding_options_must_be_an_object_and_are_logged_by_name(caplog):
    for options in ([], "x", 3):
        err = refused(ollama_api.parse_embed, {"model": "m", "input": "a", "options": options})
        assert (err.param, err.message) == ("options", "options must be an object")
    caplog.set_level(logging.INFO, logger=ollama_api.logger.name)
    options = {"temperature": 1, "num_ctx": 8, "seed": None}
    ollama_api.parse_legacy_embeddings(
        {"model": "m", "prompt": "a", "options": options}, max_prompt_chars=LIMIT
    )
    logged = [r.getMessage() for r in caplog.records if r.name == ollama_api.logger.name]
    assert logged == ["ignored options for embeddings: num_ctx, temperature"]
    caplog.clear()
    ollama_api.parse_embed(
        {"model": "m", "input": "a", "options": {"seed": None}}, max_prompt_chars=LIMIT
    )
    assert not [r for r in caplog.records if r.name == ollama_api.logger.name]


# -- OpenAI: each check at its value and one step past it (nothing here does I/O) ------------


MSGS = [{"role": "user", "content": "x"}]


def chat(**fields):
    return openai_api.parse_chat(
        {"model": "m.gguf", "messages": MSGS, **fields}, max_prompt_chars=LIMIT
    )


def completion(limit: int = LIMIT, **fields):
    return openai_api.parse_completion({"model": "m.gguf", **fields}, max_prompt_chars=limit)


def bad(call, *args, **kwargs) -> BadRequest:
    with pytest.raises(BadRequest) as err:
        call(*args, **kwargs)
    return err.value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "model is required"),
        ({"model": ""}, "model is required"),
        ({"model": 3}, "model must be a string"),
    ],
)
def test_openai_model_missing_or_not_a_string(body, message):
    err = bad(openai_api.parse_model, body)
    assert (err.message, err.param, err.status) == (message, "model", 400)


def test_openai_model_aliases_and_an_impossible_name():
    assert openai_api.parse_model({"model": "tiny-a"}) == "tiny-a.gguf"
    assert openai_api.parse_model({"model": "tiny-a:latest"}) == "tiny-a.gguf"
    assert openai_api.parse_model({"model": "tiny-a.gguf"}) == "tiny-a.gguf"
    with pytest.raises(NotFound) as err:
        openai_api.parse_model({"model": "../x"})
    assert (err.value.message, err.value.param) == ("The model `../x` does not exist", "model")


@pytest.mark.parametrize(
    ("name", "harmless", "asks"),
    [
        ("n", 1, 2),
        ("best_of", 1, 2),
        ("logprobs", False, True),
        ("top_logprobs", None, 0),
        ("echo", False, True),
        ("suffix", None, ""),
        ("logit_bias", {}, {"50256": -100}),
        ("functions", [], [{"name": "f"}]),
        ("function_call", "none", "auto"),
        ("modalities", ["text"], ["text", "audio"]),
        ("audio", None, {}),
        ("prediction", None, {}),
    ],
)
def test_openai_unsupported_fields_are_refused_only_when_they_ask_for_something(
    name, harmless, asks
):
    for parse in (chat, completion):
        fields = {"prompt": "p"} if parse is completion else {}
        parse(**fields, **{name: harmless})  # the value that asks for nothing passes
        err = bad(parse, **fields, **{name: asks})
        assert (err.message, err.param) == (f"{name} is not supported by this server", name)


def test_openai_ignored_fields_are_logged_by_name(caplog):
    with caplog.at_level("INFO", logger="model_store_server.api.openai"):
        chat(user="u", store=False, metadata=None, service_tier="auto")
    assert caplog.messages == [
        "ignored OpenAI fields model-swap cannot honour: user, store, service_tier"
    ]
    caplog.clear()
    with caplog.at_level("INFO", logger="model_store_server.api.openai"):
        chat(metadata=None)
    assert caplog.messages == []


def test_openai_response_formats():
    job = openai_api.response_format_job
    assert job(None) == {} and job({"type": "text"}) == {}
    assert job({"type": "json_object"}) == {"json_schema": {"type": "object"}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert job({"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}) == {
        "json_schema": schema
    }
    assert job({"type": "json_schema", "json_schema": {"name": "n"}}) == {"json_schema": {}}
    for value in ({"type": "xml"}, "json_object", {}):
        err = bad(job, value, "fmt")
        assert (err.message, err.param) == (
            "fmt.type must be one of text, json_object, json_schema",
            "fmt",
        )
    for spec in (None, {"schema": schema}, {"name": 1}):
        err = bad(job, {"type": "json_schema", "json_schema": spec})
        assert (
            err.message == "response_format.json_schema must be an object with a name and a schema"
        )
        assert err.param == "response_format"
    assert chat(response_format={"type": "json_object"}).job["json_schema"] == {"type": "object"}


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_openai_tools_choice_and_parallel_calls():
    assert "tools" not in chat().job
    assert "tools" not in chat(tools=[TOOL], tool_choice="none").job
    job = chat(tools=[TOOL]).job
    assert (
        job["tools"] == [{**TOOL, "function": {**TOOL["function"], "description": ""}}]
        and job["tool_choice"] == "auto"
        and "parallel_tool_calls" not in job
    )
    job = chat(tools=[TOOL], tool_choice="required", parallel_tool_calls=False).job
    assert job["tool_choice"] == "required" and job["parallel_tool_calls"] is False
    err = bad(chat, tools=[TOOL], parallel_tool_calls="no")
    assert (err.message, err.param) == (
        "parallel_tool_calls must be a boolean",
        "parallel_tool_calls",
    )
    err = bad(chat, tools=[TOOL], response_format={"type": "json_object"})
    assert (err.message, err.param) == (
        "response_format cannot be combined with tools",
        "response_format",
    )


def test_openai_stream_and_its_options():
    assert (chat(stream=None).stream, chat(stream=None).include_usage) == (False, False)
    assert (chat(stream=True).stream, chat(stream=True).include_usage) == (True, False)
    assert chat(stream=True, stream_options={}).include_usage is False
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage is True
    cases = [
        ({"stream": "yes"}, "stream must be a boolean", "stream"),
        ({"stream": 1}, "stream must be a boolean", "stream"),
        (
            {"stream_options": {}},
            "stream_options is only allowed when stream is true",
            "stream_options",
        ),
        (
            {"stream": True, "stream_options": []},
            "stream_options must be an object",
            "stream_options",
        ),
        (
            {"stream": True, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage must be a boolean",
            "stream_options.include_usage",
        ),
    ]
    for fields, message, param in cases:
        err = bad(chat, **fields)
        assert (err.message, err.param) == (message, param)


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "3"])
def test_openai_max_tokens_must_be_a_positive_integer(value):
    assert chat(max_tokens=1).job["max_tokens"] == 1
    assert chat().job["max_tokens"] is None
    for name in ("max_tokens", "max_completion_tokens"):
        err = bad(chat, **{name: value})
        assert (err.message, err.param) == (f"{name} must be a positive integer", name)
    err = bad(completion, prompt="p", max_tokens=value)
    assert err.param == "max_tokens"


def test_openai_completion_prompts_in_order_up_to_the_limit():
    request = completion(prompt=["a", [1, 2], "c"])
    assert [j.get("prompt") or j.get("prompt_tokens") for j in request.jobs] == ["a", [1, 2], "c"]
    assert request.job == {
        "prompt": "a",
        "max_tokens": None,
        "stream_format": "events",
        **request.job,
    }
    assert request.more_jobs[0]["prompt_tokens"] == [1, 2] and "prompt" not in request.more_jobs[0]
    assert completion(prompt=[5, 6]).jobs == ({**completion(prompt=[5, 6]).job},)
    assert completion(prompt=[5, 6]).job["prompt_tokens"] == [5, 6]
    assert len(completion(prompt=["p"] * openai_api.MAX_PROMPTS).jobs) == 16
    err = bad(completion, prompt=["p"] * 17)
    assert (err.message, err.param) == ("prompt holds 17 prompts; the limit is 16", "prompt")


def test_openai_completion_token_prompts_at_their_limit():
    assert completion(limit=3, prompt=[1, 2, 3]).job["prompt_tokens"] == [1, 2, 3]
    err = bad(completion, limit=3, prompt=[1, 2, 3, 4])
    assert (err.message, err.param) == ("prompt is 4 tokens; the limit is 3", "prompt")
    err = bad(completion, prompt=[[]])
    assert (err.message, err.param) == ("a token array prompt must not be empty", "prompt")
    # A list holding a boolean is not a token array: it is a list of prompts, and True is none.
    for prompt in ([True, 1], None, 3, [None]):
        err = bad(completion, prompt=prompt)
        assert err.message == (
            "prompt must be a string, a token array, or a list of strings or token arrays"
        )
    assert completion(limit=3, prompt="abc").job["prompt"] == "abc"
    err = bad(completion, limit=3, prompt="abcd")
    assert (err.message, err.param) == ("prompt is 4 characters; the limit is 3", "prompt")


def test_openai_completion_grammar_or_response_format_and_keep_alive():
    err = bad(
        completion, prompt="p", grammar='root ::= "a"', response_format={"type": "json_object"}
    )
    assert (err.message, err.param) == (
        "give either grammar or response_format, not both",
        "grammar",
    )
    assert completion(prompt="p", keep_alive="5m").keep_alive == 300.0
    assert chat(keep_alive=0).keep_alive == 0.0 and chat().keep_alive is None
    assert completion(prompt="p").kind == openai_api.COMPLETION and chat().kind == openai_api.CHAT
    assert completion(prompt="p").model == "m.gguf" and chat().model == "m.gguf"
    alias = openai_api.parse_completion({"model": "tiny-b", "prompt": "p"}, max_prompt_chars=9)
    assert alias.model == "tiny-b.gguf"
    formatted = completion(prompt="p", response_format={"type": "json_object"})
    assert formatted.job["json_schema"] == {"type": "object"} and "grammar" not in formatted.job


# -- request bodies: prompts, positive integers, keep_alive, nesting --------------------------


def test_prompt_text_at_its_limit():
    assert requests_json.prompt_text({"prompt": "ab"}, max_chars=2) == "ab"
    cases = [
        ({"prompt": "abc"}, "prompt is 3 characters; the limit is 2"),
        ({"prompt": "  "}, "prompt must not be empty"),
        ({"prompt": ""}, "prompt must not be empty"),
        ({}, "prompt must be a string"),
        ({"prompt": 1}, "prompt must be a string"),
    ]
    for body, message in cases:
        err = bad(requests_json.prompt_text, body, max_chars=2)
        assert (err.message, err.param) == (message, "prompt")


def test_positive_int_default_and_its_refusals():
    assert requests_json.positive_int({}, "n", default=7) == 7
    assert requests_json.positive_int({"n": 1}, "n", default=7) == 1
    for value in (0, -2, True, 1.0, "2", None):
        err = bad(requests_json.positive_int, {"n": value}, "n", default=7)
        assert (err.message, err.param) == ("n must be a positive integer", "n")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        (-1, -1.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        (" -2m ", -1.0),  # any negative: kept until capacity needs the place
        ("1.5h", 5400.0),
        (31_536_000, 31_536_000.0),
    ],
)
def test_keep_alive_values(value, seconds):
    assert requests_json.parse_keep_alive(value) == seconds


@pytest.mark.parametrize(
    "value", [True, "5 minutes", "m", "", "1d", [], float("inf"), float("nan"), 31_536_001]
)
def test_keep_alive_refusals(value):
    err = bad(requests_json.parse_keep_alive, value)
    assert err.param == "keep_alive"


def test_json_nesting_at_the_depth_limit():
    depth = requests_json.MAX_JSON_DEPTH

    def nested(levels):
        value = 0
        for i in range(levels):
            value = [value] if i % 2 else {"k": value}
        return value

    assert not requests_json._depth_exceeds(nested(depth), depth)
    assert requests_json._depth_exceeds(nested(depth + 1), depth)
    assert not requests_json._depth_exceeds("x" * 10_000, 1)
    assert requests_json._depth_exceeds({"a": 1, "b": [[]]}, 2)
    assert not requests_json._depth_exceeds({"a": [1], "b": {"c": 2}}, 2)


def test_a_json_body_is_read_or_refused_with_its_reason():
    app = flask.Flask(__name__)

    def read(data: bytes):
        with app.test_request_context("/", method="POST", data=data):
            return requests_json.read_json_object(flask.request)

    def refusal(data: bytes) -> str:
        with pytest.raises(BadRequest) as err:
            read(data)
        return err.value.message

    depth = requests_json.MAX_JSON_DEPTH
    assert read(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    at_limit = "[" * (depth - 1) + "]" * (depth - 1)  # inside the object: depth levels
    assert read(f'{{"a": {at_limit}}}'.encode()) == {"a": json.loads(at_limit)}
    past = "[" * depth + "]" * depth
    assert refusal(f'{{"a": {past}}}'.encode()) == (
        f"request body is nested more than {depth} levels deep"
    )
    assert refusal(b"[" * 5000 + b"]" * 5000) == (
        f"request body is nested more than {depth} levels deep"
    )  # deeper than the parser's recursion limit: the same answer
    assert refusal(b"{nope") == "request body must be valid JSON"
    assert refusal(b"\xff\xfe{}") == "request body must be valid JSON"
    assert refusal(b"[1, 2]") == "request body must be a JSON object"
    assert refusal(b'"text"') == "request body must be a JSON object"


TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "",
        "parameters": {"type": "object", "properties": {}},
    },
}


def test_ollama_format_is_json_or_a_schema_enforced_as_a_json_schema():
    assert ollama_api.format_job(None) == {} and ollama_api.format_job("") == {}
    assert ollama_api.format_job("json") == {"json_schema": {"type": "object"}}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert ollama_api.format_job(schema) == {"json_schema": schema}
    for bad in ("JSON", "yaml", 3):
        with pytest.raises(BadRequest) as err:
            ollama_api.format_job(bad)
        assert err.value.param == "format"


def test_ollama_chat_tools_reach_the_job_unless_tool_choice_is_none():
    body = {"model": "m", "messages": MSGS, "tools": [TOOL]}
    job = ollama_api.parse_chat(body, max_prompt_chars=LIMIT).job
    assert job["tools"] == [TOOL] and job["tool_choice"] == "auto"
    job = ollama_api.parse_chat({**body, "tool_choice": "required"}, max_prompt_chars=LIMIT).job
    assert job["tool_choice"] == "required"
    job = ollama_api.parse_chat({**body, "tool_choice": "none"}, max_prompt_chars=LIMIT).job
    assert "tools" not in job and "tool_choice" not in job
    err = refused(ollama_api.parse_chat, {**body, "format": "json"})
    assert (err.param, err.message) == ("format", "format cannot be combined with tools")
    plain = ollama_api.parse_chat({**body, "tools": None, "format": "json"}, max_prompt_chars=LIMIT)
    assert plain.job["json_schema"] == {"type": "object"} and "tools" not in plain.job


def test_ollama_counts_only_the_prompt_tokens_it_evaluated():
    request = answers("generate")
    usage = {"prompt_tokens": 10, "completion_tokens": 3, "cached_tokens": 4}
    events = [
        b'{"text": "a"}\n',
        json.dumps({"finish_reason": "", "usage": usage}).encode() + b"\n",
    ]
    answer = ollama_api.whole(request, iter(events), ollama_api.Timing(started=0, ready=0))
    assert (answer["prompt_eval_count"], answer["eval_count"]) == (6, 3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "keep_alive must be a number of seconds or a duration"),
        (
            "soon",
            "keep_alive must be a number of seconds or a duration such as 30s, 5m or 1h "
            "(0: unload after the answer, -1: keep until evicted by capacity)",
        ),
        (
            [5],
            "keep_alive must be a number of seconds or a duration such as 30s, 5m or 1h "
            "(0: unload after the answer, -1: keep until evicted by capacity)",
        ),
        (float("inf"), "keep_alive must be finite"),
        (
            365 * 24 * 3600 + 1,
            "keep_alive must be at most 31536000 seconds (1 year); "
            "use -1 to keep the model until capacity needs its place",
        ),
    ],
)
def test_a_bad_keep_alive_is_refused_with_what_it_takes(value, message):
    with pytest.raises(BadRequest) as err:
        requests_json.parse_keep_alive(value)
    assert (err.value.param, str(err.value)) == ("keep_alive", message)
    assert requests_json.parse_keep_alive(365 * 24 * 3600) == 365 * 24 * 3600


def test_a_prompt_that_cannot_be_tokenized_is_refused_naming_prompt():
    with pytest.raises(BadRequest) as err:
        requests_json.prompt_text({"prompt": "a\x00b"}, max_chars=100)
    assert (err.value.param, str(err.value)) == ("prompt", "prompt must not contain NUL characters")


@pytest.mark.parametrize("prompt", [5, [[1, 2], 5], {"text": "hi"}])
def test_a_prompt_of_another_kind_is_refused_naming_prompt(prompt):
    with pytest.raises(BadRequest) as err:
        openai_api.parse_completion({"model": "m.gguf", "prompt": prompt}, max_prompt_chars=LIMIT)
    assert (err.value.param, str(err.value)) == (
        "prompt",
        "prompt must be a string, a token array, or a list of strings or token arrays",
    )


def test_a_json_schema_that_is_not_an_object_is_refused_naming_where_it_is():
    spec = {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}
    with pytest.raises(BadRequest) as err:
        openai_api.response_format_job(spec)
    where = "response_format.json_schema.schema"
    assert (err.value.param, str(err.value)) == (where, f"{where} must be a JSON Schema object")
