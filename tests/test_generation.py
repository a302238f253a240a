"""Generation settings, stop sequences and chat prompts, without servers; the worker's
``events`` stream format over HTTP."""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from inference_worker.chat import _chatml, _gemma
from inference_worker.stops import StopScanner
from model_swap.errors import BadRequest
from model_swap.generation import Sampling, parse_messages, parse_sampling
from tests.conftest import A, upload_to_worker


def scan(sequences, pieces) -> tuple[str, bool]:
    scanner = StopScanner(sequences)
    out = "".join(scanner.push(p) for p in pieces)
    return out + scanner.flush(), scanner.stopped


def test_stop_spanning_pieces_is_never_sent():
    assert scan(["END"], ["abc E", "N", "D more"]) == ("abc ", True)
    assert scan(["END"], ["abc E", "N", "x"]) == ("abc ENx", False)
    assert scan(["ab", "xyz"], ["1x", "y", "z2"]) == ("1", True)


def test_held_back_text_is_released_as_soon_as_it_cannot_match():
    scanner = StopScanner(["STOP"])
    assert scanner.push("hello S") == "hello "
    assert scanner.push("x") == "Sx"


@given(
    text=st.text(alphabet="abcXY", max_size=40),
    stop=st.text(alphabet="abcXY", min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_scanner_equals_cutting_at_the_first_match(text, stop, cuts):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    out, stopped = scan([stop], pieces)
    index = text.find(stop)
    assert out == (text if index < 0 else text[:index])
    assert stopped == (index >= 0)


def test_sampling_round_trip_and_defaults():
    assert parse_sampling({}) == Sampling()
    assert Sampling().to_json() == {}
    body = {"temperature": 0, "top_p": 0.5, "seed": 7, "stop": "x", "presence_penalty": 1}
    sampling = parse_sampling(body)
    assert parse_sampling(sampling.to_json()) == sampling
    assert sampling.stop == ("x",)
    assert parse_sampling({"seed": -1}).seed == 2**32 - 2  # int64 folded into llama.cpp's range


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": 2**63}, "seed"),
        ({"stop": [1]}, "stop"),
        ({"stop": "a\x00"}, "stop"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ],
)
def test_bad_sampling_names_the_field(body, param):
    with pytest.raises(BadRequest) as err:
        parse_sampling(body)
    assert err.value.param == param


def test_messages_are_flattened_to_text():
    messages = parse_messages(
        [
            {"role": "developer", "content": "sys"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
        max_chars=100,
    )
    assert [(m.role, m.content) for m in messages] == [("system", "sys"), ("user", "ab")]
    with pytest.raises(BadRequest) as err:
        parse_messages([{"role": "user", "content": "x" * 11}], max_chars=10)
    assert err.value.param == "messages"


def test_only_underscored_marker_tokens_count_as_markup():
    from inference_worker.generation import _MARKUP

    assert _MARKUP.fullmatch("<start_of_image>")
    assert _MARKUP.fullmatch("<end_of_image>")
    for text in ("<table>", "</s>", "<td>", "<b>", "<h1>", "<a>", "<br/>"):
        assert not _MARKUP.fullmatch(text)


def test_gemma_format_puts_the_system_message_in_the_first_turn_whoever_speaks():
    rendered = _gemma(
        [
            {"role": "system", "content": "S"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "U"},
        ]
    )
    assert rendered.text.startswith("<start_of_turn>model\nS\n\nHi<end_of_turn>\n")


def test_fallback_chat_formats():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "V"},
    ]
    chatml = _chatml(messages)
    assert chatml.text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nV<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chatml.stop == ("<|im_end|>",)
    gemma = _gemma(messages)
    assert gemma.text == (
        "<start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"
        "<start_of_turn>user\nV<end_of_turn>\n<start_of_turn>model\n"
    )


def test_worker_events_stream(worker, models_dir):
    upload_to_worker(worker, models_dir, A)
    r = requests.post(
        f"{worker.url}/infer",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "stream_format": "events",
        },
        timeout=30,
    )
    assert r.headers["Content-Type"] == "application/x-ndjson"
    events = [json.loads(line) for line in r.text.splitlines()]
    assert all("text" in e for e in events[:-1])
    last = events[-1]
    assert last["finish_reason"] in ("stop", "length")
    assert last["usage"]["completion_tokens"] <= 5
    assert last["usage"]["prompt_tokens"] > 3


def test_worker_max_tokens_null_runs_to_the_context(start_worker, models_dir):
    worker = start_worker(n_ctx=64)
    upload_to_worker(worker, models_dir, A)
    r = requests.post(
        f"{worker.url}/infer",
        json={"prompt": "hi", "max_tokens": None, "stream_format": "events"},
        timeout=30,
    )
    last = json.loads(r.text.splitlines()[-1])
    usage = last["usage"]
    # Tiny models never end their turn, so the context is what stops them.
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 64
    assert last["finish_reason"] == "length"


def test_worker_refuses_prompt_and_messages_together(worker, models_dir):
    upload_to_worker(worker, models_dir, A)
    r = requests.post(
        f"{worker.url}/infer",
        json={"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
        timeout=30,
    )
    assert r.status_code == 400
