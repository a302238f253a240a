"""Tool calling on /v1/chat/completions and /api/chat, with the official clients.

The tiny models have random weights: a call they make is well-formed and names an offered
function with arguments matching its schema only because a grammar allowed nothing else.
``tiny-a`` has no chat template (the generic format); ``tiny-hermes`` carries a
Hermes/Qwen-style template that takes ``tools`` (the native ``<tool_call>`` format).
"""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest
import requests
from llama_cpp import Llama

from inference_worker.chat import ChatTemplate, native_format
from model_swap.tiny_models import write_tiny_model
from model_swap.tool_calls import (
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    ReplySplitter,
    parse_reply,
)
from tests.conftest import A
from tests.test_openai import client_for

HERMES_NAME = "tiny-hermes.gguf"
# A template in the style of Qwen 2.5's (written for these tests).
HERMES_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}{% continue %}{% endif %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% if message.content %}{{ message.content }}
{% endif %}
{%- for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}
TOOLS = [WEATHER, CLOCK]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def store(start_store, worker, models_dir):
    write_tiny_model(models_dir / HERMES_NAME, chat_template=HERMES_TEMPLATE)
    return start_store(worker)


def assert_valid_calls(calls, names=tuple(SCHEMAS)) -> None:
    assert calls
    for call in calls:
        assert call.type == "function"
        assert call.id
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("model", [A, HERMES_NAME])
@pytest.mark.parametrize("seed", [1, 2])
def test_required_tool_call_names_an_offered_function(store, model, seed):
    client = client_for(store)
    answer = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=300,
        seed=seed,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    assert_valid_calls(choice.message.tool_calls)


@pytest.mark.parametrize("model", [A, HERMES_NAME])
def test_named_tool_choice_and_parallel_calls(store, model):
    client = client_for(store)
    named = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=800,
        seed=3,
    )
    assert_valid_calls(named.choices[0].message.tool_calls, ["get_weather"])
    counts = set()
    for seed in range(6):
        answer = client.chat.completions.create(
            model=model,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            max_tokens=800,
            seed=seed,
        )
        if answer.choices[0].finish_reason == "tool_calls":
            calls = answer.choices[0].message.tool_calls
            assert_valid_calls(calls)
            assert len({c.id for c in calls}) == len(calls)
            counts.add(len(calls))
    assert max(counts) > 1  # parallel calls (allowed by default) do happen


@pytest.mark.parametrize("model", [A, HERMES_NAME])
def test_streamed_tool_call_deltas_assemble_with_the_sdk(store, model):
    client = client_for(store)
    with client.chat.completions.stream(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=300,
        seed=4,
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls)


@pytest.mark.parametrize("model", [A, HERMES_NAME])
def test_a_conversation_with_tool_results(store, model):
    client = client_for(store)
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
    ]
    answer = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=5
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.tool_calls is None
    auto = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, max_tokens=300, seed=1
    )
    if auto.choices[0].message.tool_calls:
        assert_valid_calls(auto.choices[0].message.tool_calls)
    else:
        assert auto.choices[0].message.content


def test_auto_in_the_generic_format_is_text_or_a_valid_call(store):
    client = client_for(store)
    for seed in range(4):
        answer = client.chat.completions.create(
            model=A, messages=ASK, tools=TOOLS, max_tokens=100, seed=seed
        )
        message = answer.choices[0].message
        if message.tool_calls:
            assert_valid_calls(message.tool_calls)
        else:  # the grammar's other branch: text that does not start a JSON object
            assert message.content and not message.content.lstrip().startswith("{")


def test_ollama_chat_tool_calls(store):
    client = ollama.Client(host=store.url)
    # Random weights rarely choose a call on their own (auto): tool_choice, model-swap's
    # extension on /api/chat, forces one; the answer is Ollama's message.tool_calls.
    body = {
        "model": "tiny-a",
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "stream": False,
        "options": {"num_predict": 800, "seed": 1},
    }
    raw = requests.post(f"{store.url}/api/chat", json=body, timeout=60).json()
    answer = ollama.ChatResponse.model_validate(raw)
    assert answer.message.tool_calls
    for call in answer.message.tool_calls:
        assert call.function.name in SCHEMAS
        jsonschema.validate(dict(call.function.arguments), SCHEMAS[call.function.name])
    streamed = requests.post(f"{store.url}/api/chat", json={**body, "stream": True}, timeout=60)
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    calls = [c for line in lines for c in line.get("message", {}).get("tool_calls") or ()]
    assert [c["function"]["name"] for c in calls] == [
        c.function.name for c in answer.message.tool_calls
    ]
    assert lines[-1]["done"]
    auto = client.chat("tiny-a", messages=ASK, tools=TOOLS, options={"num_predict": 50})
    assert auto.message.content or auto.message.tool_calls
    # Streamed, and with a tool result in the history (Ollama's shapes).
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_time", "arguments": {}}}],
        },
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
    ]
    parts = list(
        client.chat(
            "tiny-a",
            messages=history,
            tools=TOOLS,
            stream=True,
            options={"num_predict": 300, "seed": 2},
        )
    )
    assert parts[-1].done


def test_show_reports_tools_capability(store):
    shown = requests.post(f"{store.url}/api/show", json={"model": "tiny-a"}, timeout=10).json()
    assert shown["capabilities"] == ["completion", "tools", "embedding"]


def test_bad_tools_are_400_naming_the_field(store):
    client = client_for(store)
    bad = {**WEATHER["function"], "parameters": {"type": "object", "not": {}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=A, messages=ASK, tools=[{"type": "function", "function": bad}]
        )
    assert "`not`" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=A, messages=ASK, tool_choice="required")
    assert err.value.body["param"] == "tool_choice"


# -- the template and the formats, without a server -------------------------------------


def test_a_template_with_tools_renders_them_natively(models_dir):
    path = write_tiny_model(models_dir / HERMES_NAME, chat_template=HERMES_TEMPLATE)
    llm = Llama(str(path), vocab_only=True, verbose=False)
    try:
        template = ChatTemplate(llm)
        prompt = template.render(ASK, TOOLS, "auto")
        assert prompt.tool_format == HERMES
        assert '"name": "get_weather"' in prompt.text and "<tools>" in prompt.text
        plain = ChatTemplate(Llama(str(models_dir / A), vocab_only=True, verbose=False))
        generic = plain.render(ASK, TOOLS, "auto")
        assert generic.tool_format == GENERIC
        assert '{"tool_calls": [' in generic.text and "get_weather" in generic.text
        assert template.render(ASK, TOOLS, "none").tool_format is None
    finally:
        llm.close()


def test_native_formats_are_recognised():
    assert native_format(HERMES_TEMPLATE) == HERMES
    assert native_format("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]") == MISTRAL
    llama = '{% if tools %}<|start_header_id|>{"name": ..., "parameters": ...}{% endif %}'
    assert native_format(llama) == LLAMA3
    assert native_format("{{ messages }}") is None


@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls"),
    [
        (
            HERMES,
            'Let me check.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>',
            "Let me check.",
            [("f", {"x": 1}), ("g", {})],
        ),
        (LLAMA3, '{"name": "f", "parameters": {"x": 1}}', "", [("f", {"x": 1})]),
        (
            LLAMA3,
            '<|python_tag|>{"name": "f", "parameters": {}}; {"name": "g", "parameters": {}}',
            "",
            [("f", {}), ("g", {})],
        ),
        (
            MISTRAL,
            '[TOOL_CALLS][{"name": "f", "arguments": {"x": "y"}}]',
            "",
            [("f", {"x": "y"})],
        ),
        (MISTRAL, '[TOOL_CALLS]f[ARGS]{"x": 2}', "", [("f", {"x": 2})]),
        (GENERIC, '{"tool_calls": [{"name": "f", "arguments": {}}]}', "", [("f", {})]),
        (GENERIC, "just text {not json", "just text {not json", []),
        (HERMES, "<tool_call>\nnot json\n</tool_call>", "<tool_call>\nnot json\n</tool_call>", []),
    ],
)
def test_replies_are_read_in_each_format(fmt, text, content, calls):
    got_content, got_calls = parse_reply(text, fmt)
    assert got_content == content
    assert [(c.name, c.arguments) for c in got_calls] == calls
    # Streamed one character at a time: the same content, and no call text shown.
    splitter = ReplySplitter(fmt)
    shown = "".join(splitter.push(ch) for ch in text)
    rest, streamed_calls = splitter.finish()
    assert (shown + rest).strip() == content.strip() or not calls
    assert [(c.name, c.arguments) for c in streamed_calls] == calls
    if calls:
        assert "tool_call" not in shown and "{" not in shown.replace(content, "")


def test_a_prompt_too_long_for_its_tools_says_so(store):
    client = ollama.Client(host=store.url)
    with pytest.raises(ollama.ResponseError, match="the 2 tools offered are part of the prompt"):
        client.chat("tiny-a", messages=ASK, tools=TOOLS, options={"num_ctx": 100})
