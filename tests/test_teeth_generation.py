"""Request parsing of sampling settings and chat messages (``model_swap/generation.py``) at
its limits: every range at both ends and just past them, the counts at exactly their limit
and one more, and each accepted value kept as sent (pure functions, no server)."""

from __future__ import annotations

import pytest

from model_swap.errors import BadRequest
from model_swap.generation import (
    Message,
    Sampling,
    check_message_count,
    parse_grammar,
    parse_messages,
    parse_sampling,
)

# The documented ranges (OpenAI's, then Ollama's options as llama.cpp takes them), written
# out here on purpose: a changed bound in the code must fail this table.
FLOAT_RANGES = [
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("presence_penalty", -2.0, 2.0),
    ("frequency_penalty", -2.0, 2.0),
    ("min_p", 0.0, 1.0),
    ("typical_p", 0.0, 1.0),
    ("repeat_penalty", 0.0, 10.0),
    ("mirostat_tau", 0.0, 100.0),
    ("mirostat_eta", 0.0, 10.0),
]
INT_RANGES = [
    ("top_k", 0, 1_000_000),
    ("repeat_last_n", -1, 1_000_000),
    ("mirostat", 0, 2),
]


def refused(body: dict) -> BadRequest:
    with pytest.raises(BadRequest) as err:
        parse_sampling(body)
    return err.value


@pytest.mark.parametrize(("field", "low", "high"), FLOAT_RANGES)
def test_a_number_is_taken_at_both_ends_of_its_range_and_refused_just_past(field, low, high):
    for value in (low, high, (low + high) / 3):
        assert getattr(parse_sampling({field: value}), field) == pytest.approx(value)
    for value in (low - 0.01, high + 0.01):
        err = refused({field: value})
        assert err.param == field
        assert str(err) == f"{field} must be between {low:g} and {high:g}"
    for value in (True, "1", float("inf"), float("nan"), [1]):
        err = refused({field: value})
        assert (err.param, str(err)) == (field, f"{field} must be a number")


@pytest.mark.parametrize(("field", "low", "high"), INT_RANGES)
def test_an_integer_is_taken_at_both_ends_of_its_range_and_refused_just_past(field, low, high):
    for value in (low, high):
        parsed = getattr(parse_sampling({field: value}), field)
        assert parsed == value and type(parsed) is int
    parsed = getattr(parse_sampling({field: float(high)}), field)  # a client's 2.0 is 2
    assert parsed == high and type(parsed) is int
    for value in (low - 1, high + 1):
        err = refused({field: value})
        assert (err.param, str(err)) == (field, f"{field} must be between {low} and {high}")
    for value in (True, low + 0.5, "1"):
        err = refused({field: value})
        assert (err.param, str(err)) == (field, f"{field} must be an integer")


def test_each_sampling_field_keeps_its_own_value():
    body = {
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 11,
        "stop": ["a", "b"],
        "presence_penalty": 0.3,
        "frequency_penalty": -0.4,
        "top_k": 7,
        "min_p": 0.2,
        "typical_p": 0.6,
        "repeat_penalty": 1.3,
        "repeat_last_n": 33,
        "mirostat": 2,
        "mirostat_tau": 4.5,
        "mirostat_eta": 0.15,
        "grammar": 'root ::= "x"',
    }
    sampling = parse_sampling(body)
    assert sampling == Sampling(
        temperature=0.7,
        top_p=0.9,
        seed=11,
        stop=("a", "b"),
        presence_penalty=0.3,
        frequency_penalty=-0.4,
        top_k=7,
        min_p=0.2,
        typical_p=0.6,
        repeat_penalty=1.3,
        repeat_last_n=33,
        mirostat=2,
        mirostat_tau=4.5,
        mirostat_eta=0.15,
        grammar='root ::= "x"',
    )
    assert sampling.to_json() == body  # what the store sends the worker: every field set
    assert parse_sampling(sampling.to_json()) == sampling


def test_to_json_leaves_out_exactly_the_defaults():
    assert Sampling().to_json() == {}
    assert Sampling(temperature=0.0, top_k=0, repeat_last_n=0).to_json() == {
        "temperature": 0.0,
        "top_k": 0,
        "repeat_last_n": 0,
    }
    assert parse_sampling({"presence_penalty": None, "temperature": None}) == Sampling()


@pytest.mark.parametrize(
    ("seed", "folded"),
    [(0, 0), (2**32 - 2, 2**32 - 2), (2**32 - 1, 0), (2**32, 1), (-1, 2**32 - 2)],
)
def test_a_seed_is_folded_into_llama_cpps_32_bits_never_onto_random(seed, folded):
    assert parse_sampling({"seed": seed}).seed == folded


def test_a_seed_must_be_a_64_bit_integer():
    for seed in (2**63 - 1, -(2**63)):
        assert parse_sampling({"seed": seed}).seed == seed % (2**32 - 1)
    for seed in (2**63, -(2**63) - 1):
        assert (refused({"seed": seed}).param, str(refused({"seed": seed}))) == (
            "seed",
            "seed must fit in 64 bits",
        )
    for seed in (True, 1.5, "7"):
        err = refused({"seed": seed})
        assert (err.param, str(err)) == ("seed", "seed must be an integer")


def test_stop_takes_up_to_four_sequences_and_drops_empty_ones():
    assert parse_sampling({"stop": "x"}).stop == ("x",)
    assert parse_sampling({"stop": ["a", "", "b", "c"]}).stop == ("a", "b", "c")
    err = refused({"stop": ["a", "b", "c", "d", "e"]})
    assert (err.param, str(err)) == ("stop", "stop takes at most 4 sequences, got 5")
    for stop in ([1], {"a": 1}, 3):
        err = refused({"stop": stop})
        assert (err.param, str(err)) == ("stop", "stop must be a string or a list of strings")


def test_grammar_text_up_to_its_limit():
    assert parse_grammar(None) is None and parse_grammar("") is None
    assert parse_grammar("x" * 200_000) == "x" * 200_000
    with pytest.raises(BadRequest) as err:
        parse_grammar("x" * 200_001, field="format")
    assert (err.value.param, str(err.value)) == (
        "format",
        "format is longer than 200000 characters",
    )
    with pytest.raises(BadRequest) as err:
        parse_grammar(5)
    assert (err.value.param, str(err.value)) == ("grammar", "grammar must be a string (GBNF)")
    with pytest.raises(BadRequest) as err:
        parse_grammar("a\x00")
    assert err.value.param == "grammar"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\x00b", "stop must not contain NUL characters"),
        ("a\ud800", "stop must be valid Unicode text (no lone surrogates)"),
    ],
)
def test_text_that_cannot_be_tokenized_is_refused(text, message):
    err = refused({"stop": [text]})
    assert (err.param, str(err)) == ("stop", message)


def test_the_message_count_limit_is_inclusive():
    check_message_count([{}] * 3, 3)
    check_message_count("not a list", 0)  # the shape is checked by parse_messages
    with pytest.raises(BadRequest) as err:
        check_message_count([{}] * 4, 3)
    assert (err.value.param, str(err.value)) == (
        "messages",
        "messages holds 4 messages; the limit is MAX_MESSAGES=3",
    )


def test_messages_count_their_markup_against_the_limit_from_the_second_on():
    """Each message after the first adds 32 characters of template markup."""
    two = [{"role": "user", "content": "a" * 10}, {"role": "assistant", "content": "b" * 8}]
    assert len(parse_messages(two, max_chars=10 + 32 + 8)) == 2
    with pytest.raises(BadRequest) as err:
        parse_messages(two, max_chars=10 + 32 + 8 - 1)
    assert (err.value.param, str(err.value)) == (
        "messages",
        "messages hold at least 50 characters with their markup; the limit is 49",
    )
    assert parse_messages([{"role": "user", "content": "a" * 10}], max_chars=10)[0].content == (
        "a" * 10
    )


def test_tool_calls_and_results_keep_their_fields():
    messages = parse_messages(
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "function": {"name": "get", "arguments": "{}"}}],
                "tool_call_id": "ignored",
                "name": "ignored",
            },
            {"role": "tool", "content": None, "tool_call_id": "c1", "tool_name": "get"},
            {"role": "tool", "content": "sunny", "name": "get2", "tool_name": "get"},
        ],
        max_chars=1000,
    )
    assistant, tool, second = messages[1:]
    assert assistant == Message(
        "assistant",
        "",
        ({"id": "c1", "type": "function", "function": {"name": "get", "arguments": {}}},),
    )
    assert tool == Message("tool", "", (), "c1", "get")
    assert second == Message("tool", "sunny", (), None, "get2")
    assert tool.to_json() == {
        "role": "tool",
        "content": "",
        "tool_call_id": "c1",
        "name": "get",
    }
    assert assistant.to_json()["tool_calls"] == [dict(assistant.tool_calls[0])]
    assert Message("user", "hi").to_json() == {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("item", "param", "message"),
    [
        ("hi", "messages[1]", "messages[1] must be an object"),
        (
            {"role": "robot", "content": "x"},
            "messages[1].role",
            "messages[1].role must be one of system, user, assistant, tool (got 'robot')",
        ),
        (
            {"role": "user", "content": None},
            "messages[1].content",
            "messages[1].content must be a string or a list of text parts",
        ),
        (
            {"role": "assistant", "content": None},
            "messages[1].content",
            "messages[1].content must be a string or a list of text parts",
        ),
        (
            {"role": "user", "content": "a\x00"},
            "messages[1].content",
            "messages[1].content must not contain NUL characters",
        ),
        (
            {"role": "assistant", "content": None, "tool_calls": {"id": "c"}},
            "messages[1].tool_calls",
            "messages[1].tool_calls must be a list",
        ),
        (
            {"role": "user", "content": ["x"]},
            "messages[1].content[0]",
            "messages[1].content[0] must be an object",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]},
            "messages[1].content[1].type",
            "messages[1].content[1].type 'image_url' is not supported: only text parts are",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": 5}]},
            "messages[1].content[0].text",
            "messages[1].content[0].text must be a string",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "\x00"}]},
            "messages[1].content[0].text",
            "messages[1].content[0].text must not contain NUL characters",
        ),
        (
            {"role": "tool", "content": "x", "tool_call_id": 5},
            "messages[1].tool_call_id",
            "messages[1].tool_call_id must be a string",
        ),
        (
            {"role": "tool", "content": "x", "tool_name": 5},
            "messages[1].name",
            "messages[1].name must be a string",
        ),
    ],
)
def test_a_bad_message_is_refused_naming_where(item, param, message):
    with pytest.raises(BadRequest) as err:
        parse_messages([{"role": "system", "content": "s"}, item], max_chars=1000)
    assert (err.value.param, str(err.value)) == (param, message)


@pytest.mark.parametrize("value", [[], None, {"role": "user"}])
def test_messages_must_be_a_non_empty_list(value):
    with pytest.raises(BadRequest) as err:
        parse_messages(value, max_chars=1000)
    assert (err.value.param, str(err.value)) == ("messages", "messages must be a non-empty list")
