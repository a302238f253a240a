"""Structured output: JSON Schema, JSON mode and raw grammars, enforced by llama.cpp's grammar
sampler in each sequence's chain. The tiny models have random weights, so whatever they
produce validates only because the grammar allowed nothing else."""

from __future__ import annotations

import json
import threading

import jsonschema
import ollama
import openai
import pytest

from tests.conftest import A
from tests.test_openai import client_for

# Every string bounded, so even random weights finish the object within the budget.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "member": {"type": "boolean"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 6},
            "maxItems": 3,
        },
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "member", "role", "tags", "address"],
    "additionalProperties": False,
}


@pytest.fixture
def store(start_store, worker):
    return start_store(worker)


def schema_format(schema: dict, name: str = "person") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_validates_on_random_weights(store, seed):
    client = client_for(store)
    answer = client.chat.completions.create(
        model=A,
        messages=[{"role": "user", "content": "a person please"}],
        response_format=schema_format(PERSON),
        max_tokens=600,
        temperature=1.0,
        seed=seed,
    )
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)


def test_json_schema_streams_and_the_sdk_parses_it(store):
    client = client_for(store)
    stream = client.chat.completions.create(
        model=A,
        messages=[{"role": "user", "content": "a person"}],
        response_format=schema_format(PERSON),
        max_tokens=600,
        stream=True,
        seed=5,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_mode_gives_an_object(store):
    client = client_for(store)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    for seed in (1, 2):
        answer = client.chat.completions.create(
            model=A,
            messages=[{"role": "user", "content": "json please"}],
            response_format={"type": "json_object"},
            max_tokens=1500,
            seed=seed,
        )
        assert answer.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(answer.choices[0].message.content), dict)
    # The same mode on a schema's worth of structure, through Ollama's format.
    client = ollama.Client(host=store.url)
    answer = client.chat(
        "tiny-a",
        messages=[{"role": "user", "content": "hi"}],
        format=schema,
        options={"num_predict": 400, "seed": 3},
    )
    jsonschema.validate(json.loads(answer.message.content), schema)


def test_ollama_format_schema_and_json(store):
    client = ollama.Client(host=store.url)
    answer = client.generate(
        "tiny-a", "a person:", format=PERSON, options={"num_predict": 600, "seed": 11}
    )
    assert answer.done_reason == "stop"
    jsonschema.validate(json.loads(answer.response), PERSON)
    answer = client.generate(
        "tiny-a",
        "x",
        format={"type": "array", "items": {"type": "integer"}, "maxItems": 4},
        options={"num_predict": 200, "seed": 2},
    )
    values = json.loads(answer.response)
    assert isinstance(values, list) and all(isinstance(v, int) for v in values)


def test_raw_grammar_on_completions(store):
    client = client_for(store)
    grammar = 'root ::= ("yes" | "no") " " [0-9] [0-9]'
    for seed in range(4):
        answer = client.completions.create(
            model=A, prompt="answer:", max_tokens=20, seed=seed, extra_body={"grammar": grammar}
        )
        text = answer.choices[0].text
        assert text[:3] in ("yes", "no ") and text[-2:].isdigit(), text
        assert answer.choices[0].finish_reason == "stop"


def test_a_grammar_llama_cpp_cannot_take_is_a_400(store, worker):
    client = client_for(store)
    with pytest.raises(openai.BadRequestError, match="could not parse the grammar"):
        client.completions.create(
            model=A, prompt="x", max_tokens=2, extra_body={"grammar": "root ::= (unclosed"}
        )
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=A,
            messages=[{"role": "user", "content": "x"}],
            response_format=schema_format({"type": "integer", "minimum": 3}),
        )
    assert "`minimum`" in err.value.body["message"]
    assert err.value.body["param"] == "response_format.json_schema.schema"
    with pytest.raises(openai.BadRequestError, match="format: email"):
        client.chat.completions.create(
            model=A,
            messages=[{"role": "user", "content": "x"}],
            response_format=schema_format({"type": "string", "format": "email"}),
        )


def test_grammars_are_per_sequence_in_the_batch(store):
    """A constrained and a free request generate in the same batch; each keeps its own."""
    client = client_for(store)
    results: dict[str, object] = {}

    def constrained(key: str, seed: int) -> None:
        answer = client.chat.completions.create(
            model=A,
            messages=[{"role": "user", "content": "person"}],
            response_format=schema_format(PERSON),
            max_tokens=600,
            seed=seed,
        )
        results[key] = answer.choices[0].message.content

    def free(key: str) -> None:
        answer = client.completions.create(model=A, prompt="hello", max_tokens=300, seed=1)
        results[key] = answer.choices[0].text

    threads = [
        threading.Thread(target=constrained, args=("a", 21)),
        threading.Thread(target=free, args=("free",)),
        threading.Thread(target=constrained, args=("b", 22)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    jsonschema.validate(json.loads(results["a"]), PERSON)
    jsonschema.validate(json.loads(results["b"]), PERSON)
    # The free sequence was not held to the grammar: random text, not a JSON object.
    assert not str(results["free"]).lstrip().startswith("{")
